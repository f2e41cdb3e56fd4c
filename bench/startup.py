"""Start-up: wall time of `fanout --help`, `fanout --version` and `fanout agents` (best of N;
the openai client and anything heavy load only when a command needs them).

    python bench/startup.py [--repeat 7]
Goal: `fanout --help` <= 0.25 s on this machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

COMMANDS = [["--version"], ["--help"], ["agents"], ["ask", "--help"]]


def best_of(args: list[str], repeat: int) -> float:
    best = float("inf")
    env = {**os.environ, "FANOUT_CONFIG": ""}
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "fanout", *args],
            check=True,
            capture_output=True,
            cwd=tempfile.gettempdir(),
            env=env,
        )
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    baseline = best_of_python(args.repeat)
    print(f"start-up, best of {args.repeat} (bare `python -c pass`: {baseline:.3f} s)")
    for command in COMMANDS:
        print(f"  fanout {' '.join(command):<12} {best_of(command, args.repeat):.3f} s")


def best_of_python(repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        best = min(best, time.perf_counter() - started)
    return best


if __name__ == "__main__":
    main()
