"""Engine overhead: CPU per call of fanout's own code, with an instant provider (no HTTP, no
server), through the batch path (engine, retries, limiter, events, one result line per answer).
What the throughput benchmark measures minus the openai client and the server, so a change to
the engine shows up here even on a busy machine, where wall-clock throughput is noise.

    python bench/engine_overhead.py [--calls 5000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any


class InstantProvider:
    """Answers at once, as a zero-latency server would, without any HTTP."""

    async def complete(
        self,
        agent: Any,
        messages: Sequence[Mapping[str, str]],
        *,
        timeout_s: float,
        on_delta: Callable[[str], None] | None = None,
        on_sent: Callable[[], None] | None = None,
        response_format: Mapping[str, Any] | None = None,
    ) -> Any:
        from fanout.models import Completion, Usage

        if on_sent is not None:
            on_sent()
        return Completion("an answer", Usage(10, 3, 13), finish_reason="stop")

    async def aclose(self) -> None:
        pass


def cpu_per_call(calls: int) -> float:
    import anyio

    from fanout.batch import BatchPrompt, BatchTally, ResultWriter, run_batch
    from fanout.engine import Engine, RunSettings
    from fanout.event import Broadcast
    from fanout.models import Agent, Endpoint

    agent = Agent("p000", model="m-000", endpoint=Endpoint("http://127.0.0.1:9/v1"))
    settings = RunSettings(concurrency=200, stream=False)
    sink = io.StringIO()

    async def main() -> float:
        engine = Engine(InstantProvider(), [agent], settings)
        prompts = (BatchPrompt(str(i), f"Q{i}") for i in range(calls))
        started = time.process_time()
        await run_batch(
            prompts,
            [agent],
            None,
            engine=engine,
            writer=ResultWriter(sink),
            tally=BatchTally(total=calls),
            answered={},
            shown=Broadcast(),
        )
        return time.process_time() - started

    spent: float = anyio.run(main)
    assert sink.getvalue().count("\n") == calls
    return spent / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    best = min(cpu_per_call(args.calls) for _ in range(args.repeat))
    print(f"engine overhead: {best * 1e6:.0f} µs CPU per call (best of {args.repeat}, "
          f"{args.calls} calls, instant provider)")  # fmt: skip


if __name__ == "__main__":
    main()
