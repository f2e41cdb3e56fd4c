"""Something on screen soon after launch: the time from starting ``fanout ask`` on a terminal
(a pty) to its first frame (the live board entering the alternate screen, ``ESC[?1049h``),
against the time the same Python takes to start and exit (``python -c pass``). Median of N
paired runs against the loopback test server (answers held back, so the run is never over
before its first frame).

    python bench/first_paint.py [--runs 9] [--personas 4]
Goal: first frame <= 150 ms after launch, on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import ServerProcess, panel_file

ENTER = b"\x1b[?1049h"


def first_output(command: list[str], marker: bytes, rows: int = 40, columns: int = 120) -> float:
    """Seconds from starting ``command`` on a pty to ``marker`` in its output (then killed)."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env["TERM"] = "xterm-256color"
    started = time.perf_counter()
    proc = subprocess.Popen(
        command, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    seen = b""
    try:
        while marker not in seen:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                raise SystemExit(f"no {marker!r} within 30 s: {seen[-300:]!r}")
            try:
                seen += os.read(master, 65536)
            except OSError as exc:
                raise SystemExit(f"ended before {marker!r}: {seen[-300:]!r}") from exc
        return time.perf_counter() - started
    finally:
        proc.kill()
        proc.wait()
        os.close(master)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--personas", type=int, default=4)
    args = parser.parse_args()
    bare, paint = [], []
    with ServerProcess(30.0) as base_url:  # every answer 30 s away: the board stays up
        config = panel_file(base_url, args.personas)
        ask = [sys.executable, "-m", "fanout", "ask", "-c", str(config), "--no-log", "Why?"]
        first_output(ask, ENTER)  # warm the file cache
        for _ in range(args.runs):
            bare.append(first_output([sys.executable, "-c", "print('x')"], b"x"))
            paint.append(first_output(ask, ENTER))
    b, p = statistics.median(bare), statistics.median(paint)
    print(f"launch to first frame, {args.personas} personas, median of {args.runs} paired runs")
    print(f"  python -c pass     : {b * 1000:6.0f} ms")
    print(f"  fanout ask (board) : {p * 1000:6.0f} ms  ({(p - b) * 1000:+.0f} ms; goal <= 150 ms)")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
