"""Throughput: 2,000 requests at concurrency 200 against the loopback test server (zero
latency, in its own process), ``fanout batch`` against a bare ``AsyncOpenAI`` +
``asyncio.gather`` loop, in the same run. Goal: fanout >= 0.8 of the bare loop.

    python bench/throughput.py [--requests 2000] [--concurrency 200]

Both sides are timed in-process from the first request to the last answer (fanout through its
own batch API: engine, runner, limiter, retries, result lines), and fanout also as the real CLI
in a subprocess (start-up included).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai
from _common import ServerProcess, panel_file


async def bare_loop(base_url: str, requests: int, concurrency: int) -> float:
    client = openai.AsyncOpenAI(api_key="unused", base_url=base_url, max_retries=0)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await client.chat.completions.create(
                model="m-000", messages=[{"role": "user", "content": f"Q{i}"}]
            )

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed


def fanout_in_process(base_url: str, requests: int, concurrency: int) -> float:
    import anyio

    from fanout.batch import BatchPrompt, BatchTally, ResultWriter, run_batch
    from fanout.engine import Engine, RunSettings
    from fanout.event import Broadcast
    from fanout.models import Agent, Endpoint
    from fanout.provider import OpenAIProvider

    agent = Agent("p000", model="m-000", endpoint=Endpoint(base_url))
    settings = RunSettings(concurrency=concurrency, stream=False)
    sink = io.StringIO()

    async def main() -> float:
        provider = OpenAIProvider()
        provider.prepare([agent.endpoint])
        engine = Engine(provider, [agent], settings)
        prompts = (BatchPrompt(str(i), f"Q{i}") for i in range(requests))
        started = time.perf_counter()
        await run_batch(
            prompts,
            [agent],
            None,
            engine=engine,
            writer=ResultWriter(sink),
            tally=BatchTally(total=requests),
            answered={},
            shown=Broadcast(),
        )
        elapsed = time.perf_counter() - started
        await provider.aclose()
        return elapsed

    elapsed: float = anyio.run(main)
    assert sink.getvalue().count("\n") == requests
    return elapsed


def fanout_cli(base_url: str, requests: int, concurrency: int) -> float:
    folder = Path(tempfile.mkdtemp(prefix="fanout-bench-"))
    prompts = folder / "prompts.txt"
    prompts.write_text("".join(f"Q{i}\n" for i in range(requests)))
    config = panel_file(base_url, 1)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "fanout", "batch", str(prompts), "-c", str(config),
         "--concurrency", str(concurrency), "-o", str(folder / "out.jsonl")],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    n, c = args.requests, args.concurrency
    with ServerProcess() as base_url:
        asyncio.run(bare_loop(base_url, 200, c))  # warm the server's threads
        bare = asyncio.run(bare_loop(base_url, n, c))
        ours = fanout_in_process(base_url, n, c)
        bare_again = asyncio.run(bare_loop(base_url, n, c))
        cli = fanout_cli(base_url, n, c)
    best_bare = min(bare, bare_again)
    print(f"throughput: {n} requests at concurrency {c}, zero latency")
    print(f"  bare AsyncOpenAI + gather : {best_bare:6.2f} s  {n / best_bare:7.0f} req/s")
    print(f"  fanout batch (in process) : {ours:6.2f} s  {n / ours:7.0f} req/s"
          f"  = {best_bare / ours:.2f} of bare")  # fmt: skip
    print(f"  fanout batch (CLI, wall)  : {cli:6.2f} s  {n / cli:7.0f} req/s"
          f"  = {best_bare / cli:.2f} of bare")  # fmt: skip


if __name__ == "__main__":
    main()
