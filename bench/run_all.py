"""Every benchmark in one go, so one command reproduces every figure of docs/benchmarks.md.

    python bench/run_all.py [--quick]

--quick runs smaller sizes (a smoke test of the benchmarks themselves, not figures to quote).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FULL = [
    ["fanout_efficiency.py"],
    ["limiter_accuracy.py"],
    ["throughput.py"],
    ["startup.py"],
    ["memory.py"],
    ["engine_overhead.py"],
    ["live_view.py"],
    ["first_paint.py"],
    ["long_answer.py", "--sizes", "1,3"],
]
QUICK = [
    ["fanout_efficiency.py", "--sizes", "1,8", "--repeat", "1", "--latency", "0.2"],
    ["limiter_accuracy.py", "--requests", "30"],
    ["throughput.py", "--requests", "200", "--concurrency", "50"],
    ["startup.py", "--repeat", "1"],
    ["memory.py", "--sizes", "200"],
    ["engine_overhead.py", "--calls", "300", "--repeat", "1"],
    ["live_view.py", "--personas", "2", "--words", "200"],
    ["first_paint.py", "--runs", "1"],
    ["long_answer.py", "--sizes", "0.1"],
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    for command in QUICK if args.quick else FULL:
        print(f"$ python bench/{' '.join(command)}", flush=True)
        subprocess.run([sys.executable, str(HERE / command[0]), *command[1:]], check=True)
        print(flush=True)
    print(f"all benchmarks: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
