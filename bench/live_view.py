"""The live view's cost: CPU time (user + sys of the fanout process) and bytes written to the
terminal for one run shown live on a pty (160x45), against the same run piped (``--stream``,
so that both read the same streams; and piped as by default, without streaming, for scale).
8 personas each stream about 1,600 words of Markdown from the loopback test server.

    python bench/live_view.py [--personas 8] [--words 1600] [--chunk-delay 0.004] [--size 160x45]
Goal: live <= 1.3 x piped CPU.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import ServerProcess, panel_file


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def on_pty(command: list[str], rows: int, columns: int) -> tuple[float, float, int, int]:
    """Run ``command`` with a ``rows`` x ``columns`` pty as its terminal; CPU s, wall s, the
    bytes it wrote and how many of them the board wrote (up to leaving the alternate screen;
    0 if it never used one)."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env["TERM"] = "xterm-256color"
    before, started = children_cpu(), time.perf_counter()
    proc = subprocess.Popen(
        command, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    output = bytearray()
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        output += data
    code = proc.wait()
    os.close(master)
    if code != 0:
        raise SystemExit(f"fanout on a pty failed ({code})")
    leave = output.rfind(b"\x1b[?1049l")
    board = leave + len(b"\x1b[?1049l") if leave >= 0 else 0
    return children_cpu() - before, time.perf_counter() - started, len(output), board


def piped(command: list[str]) -> tuple[float, float, int]:
    before, started = children_cpu(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"fanout piped failed ({done.returncode}): {done.stderr[-500:]!r}")
    return children_cpu() - before, time.perf_counter() - started, len(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--personas", type=int, default=8)
    parser.add_argument("--words", type=int, default=1600)
    parser.add_argument("--chunk-delay", type=float, default=0.004)
    parser.add_argument("--size", default="160x45")
    args = parser.parse_args()
    columns, rows = (int(n) for n in args.size.split("x"))
    with ServerProcess(0.0, args.words, args.chunk_delay) as base_url:
        config = panel_file(base_url, args.personas)
        ask = [sys.executable, "-m", "fanout", "ask", "-c", str(config), "--no-log"]
        ask += ["--format", "columns", "Explain heat."]
        piped([*ask, "--stream"])  # warm the server and the file cache
        live = on_pty(ask, rows, columns)
        streamed = piped([*ask, "--stream"])
        plain = piped(ask)
    print(
        f"live view: {args.personas} personas x ~{args.words} words streamed, "
        f"{columns}x{rows} pty vs piped"
    )
    for label, (cpu, wall, written) in (
        ("live on a pty    ", live[:3]),
        ("piped, --stream  ", streamed),
        ("piped (default)  ", plain),
    ):
        print(f"  {label}: CPU {cpu:6.2f} s  wall {wall:6.2f} s  written {written / 1024:8.1f} KB")
    if live[3]:
        print(
            f"  of which the board: {live[3] / 1024:.1f} KB, the final view "
            f"{(live[2] - live[3]) / 1024:.1f} KB"
        )
    print(f"  live / piped --stream CPU: {live[0] / streamed[0]:.2f} x  (goal <= 1.3)")
    print(f"  live / piped (default) CPU: {live[0] / plain[0]:.2f} x")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
