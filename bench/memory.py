"""Memory: peak RSS of `fanout batch` as the job grows (1,000 and 10,000 prompt x persona
jobs, --concurrency 200, zero latency), read from the kernel's accounting of that process.

    python bench/memory.py [--sizes 1000,10000]
Goal: 10,000 jobs at <= 200 MB peak RSS, and flat: 10x the jobs, about the same memory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ServerProcess, panel_file


def peak_rss_mb(base_url: str, jobs: int) -> tuple[float, float]:
    folder = Path(tempfile.mkdtemp(prefix="fanout-bench-"))
    prompts = folder / "prompts.txt"
    with prompts.open("w") as out:
        for i in range(jobs):
            out.write(f"Question number {i}?\n")
    config = panel_file(base_url, 1)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fanout", "batch", str(prompts), "-c", str(config),
         "--concurrency", "200", "-o", str(folder / "out.jsonl")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"fanout batch failed with status {status}")
    lines = sum(1 for _ in (folder / "out.jsonl").open())
    assert lines == jobs, (lines, jobs)
    return usage.ru_maxrss / 1024, elapsed  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    args = parser.parse_args()
    print("memory: peak RSS of fanout batch (1 persona, --concurrency 200, zero latency)")
    with ServerProcess() as base_url:
        for jobs in (int(s) for s in args.sizes.split(",")):
            peak, elapsed = peak_rss_mb(base_url, jobs)
            print(f"  {jobs:>6} jobs: {peak:6.1f} MB peak RSS  ({elapsed:.1f} s)")


if __name__ == "__main__":
    main()
