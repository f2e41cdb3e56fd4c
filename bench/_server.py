"""The loopback test server in a process of its own, so that it does not share the GIL with
the client being measured. Prints its base URL, then serves until stdin closes."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakeserver import FakeOpenAI, Reply


def main() -> None:
    latency = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
    with FakeOpenAI() as server:
        server.default = Reply(text="ok", latency=latency)
        print(server.base_url, flush=True)
        sys.stdin.read()  # until the benchmark closes our stdin


if __name__ == "__main__":
    main()
