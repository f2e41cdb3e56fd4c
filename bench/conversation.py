"""What carrying a conversation on costs before the first request: reading its turns from the
history (``load_transcript``) and building every persona's thread (``persona_thread``), for
conversations of growing length.

    python bench/conversation.py [--turns 10,100,500] [--personas 6] [--repeat 5]

Each turn has every persona answer 1,500 characters (a long answer), so a 500-turn thread is
far past any window: the figures include fitting it to gpt-4o's 128k tokens.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fanout.conversation import load_transcript, persona_thread
from fanout.engine import RunContext
from fanout.export import report_document
from fanout.history import History
from fanout.models import Agent, CallResult, RunReport, StageResult, chat_messages

ANSWER = "word " * 300  # 1,500 characters


def record(history: History, conversation: str, turns: int, personas: list[Agent]) -> None:
    for number in range(1, turns + 1):
        calls = [
            CallResult(a.name, a.model, "ok", ANSWER, call_id=f"panel/{a.name}") for a in personas
        ]
        report = RunReport(
            run_id=f"{conversation}-{number:04d}",
            prompt=f"Question {number}?",
            started_at=f"2026-01-01T00:{number // 60:02d}:{number % 60:02d}.000+00:00",
            finished_at="2026-01-01T01:00:00.000+00:00",
            duration_s=1.0,
            stages=[StageResult("panel", "panel", calls)],
            conversation_id=conversation,
            turn=number,
        )
        document = report_document(report)
        history.start_run(document, agents=[], synthesizer=None, settings={})
        history.finish_run(document)


def measure(turns: int, personas: int, repeat: int) -> tuple[float, float]:
    agents = [Agent(f"p{i}", f"You are persona {i}.", model="gpt-4o") for i in range(personas)]
    with tempfile.TemporaryDirectory() as folder, History(Path(folder) / "h.db") as history:
        record(history, "c", turns, agents)
        loads, threads = [], []
        for _ in range(repeat):
            started = time.perf_counter()
            transcript = load_transcript(history, "c")
            loads.append(time.perf_counter() - started)
            context = RunContext("Now?", agents, {}, {}, conversation=transcript)
            started = time.perf_counter()
            for agent in agents:
                persona_thread(agent, agent.name, context, chat_messages(agent, "Now?"))
            threads.append(time.perf_counter() - started)
    return statistics.median(loads), statistics.median(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", default="10,100,500")
    parser.add_argument("--personas", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"| turns | read from the history | {args.personas} threads built and fitted |")
    print("|---|---|---|")
    for turns in (int(t) for t in args.turns.split(",")):
        load, thread = measure(turns, args.personas, args.repeat)
        print(f"| {turns} | {load * 1000:.1f} ms | {thread * 1000:.1f} ms |")


if __name__ == "__main__":
    main()
