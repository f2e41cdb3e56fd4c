"""Start-up: wall time of `fanout --help`, `fanout --version` and `fanout agents` (best of N;
the openai client and anything heavy load only when a command needs them), and launch to the
first request leaving against a bare AsyncOpenAI script (the loopback test server records
when each request arrives; interleaved pairs, medians).

    python bench/startup.py [--repeat 7] [--pairs 11]
Goals: `fanout --help` <= 0.25 s on this machine; `fanout ask --json` launch to first request
at most 150 ms more than the bare script.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from _common import FakeOpenAI, panel_file

COMMANDS = [["--version"], ["--help"], ["agents"], ["ask", "--help"]]

# What a user would write by hand: one client, one request.
BARE = """
import asyncio, sys
from openai import AsyncOpenAI

async def main():
    client = AsyncOpenAI(base_url=sys.argv[1], api_key="sk-bench", max_retries=0)
    reply = await client.chat.completions.create(
        model="m-000", messages=[{"role": "user", "content": "Bench?"}]
    )
    print(reply.choices[0].message.content)

asyncio.run(main())
"""


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


def best_of_python(repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        best = min(best, time.perf_counter() - started)
    return best


def first_request(server: FakeOpenAI, command: list[str], env: dict[str, str]) -> float:
    """Seconds from launching ``command`` to its first request arriving at ``server``."""
    server.reset()
    launched = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0 or not server.requests:
        raise SystemExit(f"{command[:4]} failed ({done.returncode}): {done.stderr.strip()}")
    return server.requests[0].started - launched


def launch_to_first_request(pairs: int) -> None:
    with FakeOpenAI() as server, tempfile.TemporaryDirectory() as home:
        config = panel_file(server.base_url, 1)
        env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "FANOUT_HOME": home}
        # As installed: pip compiles a package's bytecode; a tree with no __pycache__ would
        # compile fanout's modules from source at every launch.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        fanout = [sys.executable, "-m", "fanout", "ask", "-c", str(config), "--json", "Bench?"]
        bare = [sys.executable, "-c", BARE, server.base_url]
        first_request(server, fanout, env)  # warm the file cache and the history once
        first_request(server, bare, env)
        timings: list[tuple[float, float]] = []
        for _ in range(pairs):  # interleaved: a load change hits both sides alike
            timings.append((first_request(server, fanout, env), first_request(server, bare, env)))
    ours = statistics.median(t for t, _ in timings)
    theirs = statistics.median(b for _, b in timings)
    extra = statistics.median(t - b for t, b in timings)
    print(f"launch to first request, median of {pairs} interleaved pairs")
    print(f"  fanout ask --json     {ours * 1000:6.0f} ms")
    print(f"  bare AsyncOpenAI      {theirs * 1000:6.0f} ms")
    print(f"  fanout - bare, paired {extra * 1000:+6.0f} ms (goal: at most +150 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--pairs", type=int, default=11)
    parser.add_argument("--only-first-request", action="store_true")
    args = parser.parse_args()
    if not args.only_first_request:
        baseline = best_of_python(args.repeat)
        print(f"start-up, best of {args.repeat} (bare `python -c pass`: {baseline:.3f} s)")
        for command in COMMANDS:
            print(f"  fanout {' '.join(command):<12} {best_of(command, args.repeat):.3f} s")
    launch_to_first_request(args.pairs)


if __name__ == "__main__":
    main()
