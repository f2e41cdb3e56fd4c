"""Throughput of `fanout batch` and `fanout eval` against a bare `AsyncOpenAI` +
`asyncio.gather` loop, each a process of its own (start-up included, as a user runs them),
against the loopback test server (zero latency, in its own process). Rounds are interleaved
(bare, batch, eval, bare...) so the machine's drift hits every side alike; the ratio is
bare time / fanout time (above 1: fanout is faster).

    python bench/throughput.py [--shapes 100x20,2000x1] [--concurrency 200] [--rounds 3]

Goal (issue 26): at 100 prompts x 20 personas, concurrency 200, both fanout commands at least
the bare loop's throughput (ratio >= 1.0).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ServerProcess, panel_file

HERE = Path(__file__).resolve().parent


CPU: dict[str, list[float]] = {}  # CPU seconds (user + system) of each side's processes


def timed(command: list[str], env: dict[str, str] | None = None, side: str = "") -> float:
    """Wall seconds of ``command``; its CPU seconds are kept in ``CPU[side]``: on a shared
    machine the wall time moves with the load, the CPU a job costs much less."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed ({status})")
    CPU.setdefault(side, []).append(usage.ru_utime + usage.ru_stime)
    return took


def bare(base_url: str, prompts: int, personas: int, concurrency: int) -> float:
    script = str(HERE / "_bare.py")
    command = [sys.executable, script, base_url, str(prompts), str(personas), str(concurrency)]
    return timed(command, side="bare")


def batch(base_url: str, prompts: int, personas: int, concurrency: int) -> float:
    folder = Path(tempfile.mkdtemp(prefix="fanout-bench-"))
    source = folder / "prompts.txt"
    source.write_text("".join(f"Q{i}\n" for i in range(prompts)))
    config = panel_file(base_url, personas)
    out = folder / "out.jsonl"
    took = timed([sys.executable, "-m", "fanout", "batch", str(source), "-c", str(config),
                  "--concurrency", str(concurrency), "-o", str(out)], side="batch")  # fmt: skip
    lines = sum(1 for _ in out.open())
    assert lines == prompts * personas, (lines, prompts * personas)
    return took


def evaluate(base_url: str, prompts: int, personas: int, concurrency: int) -> float:
    folder = Path(tempfile.mkdtemp(prefix="fanout-bench-"))
    cases = folder / "cases.csv"
    cases.write_text("prompt,expected\n" + "".join(f"Q{i},ok\n" for i in range(prompts)))
    config = panel_file(base_url, personas)
    home = folder / "home"
    command = [sys.executable, "-m", "fanout", "eval", str(cases), "-c", str(config),
               "--concurrency", str(concurrency), "-o", str(folder / "cells.csv")]  # fmt: skip
    took = timed(command, env=_env(home), side="eval")
    rows = sum(1 for _ in (folder / "cells.csv").open()) - 1
    assert rows == prompts * personas, (rows, prompts * personas)
    return took


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "FANOUT_HOME": str(home)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="100x20,2000x1")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    c = args.concurrency
    print(f"throughput: concurrency {c}, zero latency, each side a process (start-up included)")
    with ServerProcess() as base_url:
        bare(base_url, 10, 20, c)  # warm the server's threads
        for shape in args.shapes.split(","):
            prompts, personas = (int(x) for x in shape.split("x"))
            times: dict[str, list[float]] = {"bare": [], "batch": [], "eval": []}
            CPU.clear()
            for _ in range(args.rounds):
                for name, run in (("bare", bare), ("batch", batch), ("eval", evaluate)):
                    times[name].append(run(base_url, prompts, personas, c))
            report(prompts, personas, args.rounds, times)


def report(prompts: int, personas: int, rounds: int, times: dict[str, list[float]]) -> None:
    jobs = prompts * personas
    wall, cpu = statistics.median(times["bare"]), statistics.median(CPU["bare"])
    print(f"  {prompts} prompts x {personas} personas ({jobs:,} jobs), medians of {rounds}:")
    for name in ("bare", "batch", "eval"):
        took, spent = statistics.median(times[name]), statistics.median(CPU[name])
        each = " ".join(f"{t:.2f}" for t in times[name])
        ratios = (
            ""
            if name == "bare"
            else f"  = {wall / took:.2f} of bare (wall), {cpu / spent:.2f} (CPU)"
        )
        print(f"    {name:5}: {took:6.2f} s wall ({each}), {spent:6.2f} s CPU, "
              f"{jobs / spent:6.0f} jobs per CPU second{ratios}")  # fmt: skip


if __name__ == "__main__":
    main()
