"""The loopback test server in a process of its own, so that it does not share the GIL with
the client being measured. Prints its base URL, then serves until stdin closes.

    python bench/_server.py [latency_s] [words] [chunk_delay_s]

``words``: answer with about that many words of Markdown (streamed a word a piece, one piece
every ``chunk_delay_s``) instead of ``ok``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakeserver import FakeOpenAI, Reply


def markdown_answer(words: int) -> str:
    """About ``words`` words of Markdown: headings, bold, lists and paragraphs."""
    out: list[str] = []
    count = 0
    section = 0
    while count < words:
        section += 1
        out.append(f"## Part {section}\n")
        out.append(
            "Heat moves **from the hotter body to the colder one** until both reach the same "
            "temperature; entropy grows while it happens, and work can be drawn from the "
            "difference as long as it lasts.\n"
        )
        out.append("- a first point\n- a second, *longer* point that wraps in a pane\n")
        count += 40
    return "\n".join(out)


def main() -> None:
    latency = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
    words = int(sys.argv[2]) if len(sys.argv) > 2 else 0  # a streamed Markdown answer
    chunk_delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    with FakeOpenAI() as server:
        text = markdown_answer(words) if words else "ok"
        server.default = Reply(text=text, latency=latency, chunk_delay=chunk_delay)
        print(server.base_url, flush=True)
        sys.stdin.read()  # until the benchmark closes our stdin


if __name__ == "__main__":
    main()
