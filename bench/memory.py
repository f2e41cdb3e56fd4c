"""Memory: peak RSS of `fanout batch` as the job grows, against the bare `AsyncOpenAI` +
`asyncio.gather` loop (bench/_bare.py) on the same jobs, each read from the kernel's
accounting of that process (`wait4`), `--concurrency 200`, zero latency. fanout's output is
checked complete (one line per job).

    python bench/memory.py [--shapes 1000x1,10000x1,100000x1,1000x100]

Goals: 10,000 jobs at <= 200 MB and flat (10x the jobs, about the same memory); 100,000 jobs
in both shapes (100,000 prompts x 1 persona, 1,000 x 100) flat and complete (issue 26).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ServerProcess, panel_file

HERE = Path(__file__).resolve().parent


def peak(command: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, CPU seconds) of ``command`` run to its end: CPU, not wall time, since
    a shared machine's load moves the wall time far more."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{command[2:4]} failed with status {status}")
    return usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime  # KiB on Linux


def fanout_batch(base_url: str, prompts: int, personas: int) -> tuple[float, float]:
    folder = Path(tempfile.mkdtemp(prefix="fanout-bench-"))
    source = folder / "prompts.txt"
    with source.open("w") as out:
        for i in range(prompts):
            out.write(f"Question number {i}?\n")
    config = panel_file(base_url, personas)
    result = peak([sys.executable, "-m", "fanout", "batch", str(source), "-c", str(config),
                   "--concurrency", "200", "-o", str(folder / "out.jsonl")])  # fmt: skip
    lines = sum(1 for _ in (folder / "out.jsonl").open())
    assert lines == prompts * personas, (lines, prompts * personas)
    return result


def bare(base_url: str, prompts: int, personas: int) -> tuple[float, float]:
    script = str(HERE / "_bare.py")
    return peak([sys.executable, script, base_url, str(prompts), str(personas), "200"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1000x1,10000x1")
    args = parser.parse_args()
    print("memory: peak RSS, --concurrency 200, zero latency")
    with ServerProcess() as base_url:
        for shape in args.shapes.split(","):
            prompts, personas = (int(x) for x in shape.split("x"))
            ours, ours_s = fanout_batch(base_url, prompts, personas)
            theirs, theirs_s = bare(base_url, prompts, personas)
            jobs = prompts * personas
            shown = f"{prompts:>7,} x {personas:<3} ({jobs:>7,} jobs)"
            print(f"  {shown}: fanout batch {ours:6.1f} MiB, {ours_s:.1f} CPU s · bare "
                  f"{theirs:6.1f} MiB, {theirs_s:.1f} CPU s · fanout = {theirs_s / ours_s:.2f} "
                  "of bare (CPU)")  # fmt: skip


if __name__ == "__main__":
    main()
