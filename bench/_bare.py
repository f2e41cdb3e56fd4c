"""The bare loop the batch benchmarks compare against, as a process of its own (what a user
would write instead of fanout): an ``AsyncOpenAI(max_retries=0)`` and ``asyncio.gather`` over
every prompt x persona behind a semaphore. Prints its in-loop seconds.

    python bench/_bare.py BASE_URL PROMPTS PERSONAS CONCURRENCY
"""

from __future__ import annotations

import asyncio
import sys
import time

import openai


async def main(base_url: str, prompts: int, personas: int, concurrency: int) -> float:
    # The same per-request timeout fanout uses by default (openai's own is 600 s, with 5 s to
    # connect, which a loaded loopback server can miss).
    client = openai.AsyncOpenAI(api_key="unused", base_url=base_url, max_retries=0, timeout=120.0)
    gate = asyncio.Semaphore(concurrency)

    async def one(prompt: int, persona: int) -> str:
        async with gate:
            reply = await client.chat.completions.create(
                model=f"m-{persona:03d}", messages=[{"role": "user", "content": f"Q{prompt}"}]
            )
            return reply.choices[0].message.content or ""

    started = time.perf_counter()
    answers = await asyncio.gather(*(one(i, p) for i in range(prompts) for p in range(personas)))
    elapsed = time.perf_counter() - started
    assert len(answers) == prompts * personas
    await client.close()
    return elapsed


if __name__ == "__main__":
    url, n, p, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(f"{asyncio.run(main(url, n, p, c)):.3f}")
