"""Shared by the benchmarks: the loopback test server and a throwaway agents file."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakeserver import FakeOpenAI, Reply  # noqa: E402

__all__ = ["FakeOpenAI", "Reply", "ServerProcess", "panel_file", "run_fanout"]


class ServerProcess:
    """The test server in its own process (``with ServerProcess(latency) as base_url``);
    ``words``: a streamed Markdown answer of about that many words (see ``_server.py``)."""

    def __init__(self, latency: float = 0.0, words: int = 0, chunk_delay: float = 0.0) -> None:
        self._args = [str(latency), str(words), str(chunk_delay)]
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> str:
        script = Path(__file__).with_name("_server.py")
        self._proc = subprocess.Popen(
            [sys.executable, str(script), *self._args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        return self._proc.stdout.readline().strip()

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            self._proc.wait(timeout=30)


def panel_file(base_url: str, n: int, **defaults: Any) -> Path:
    """An agents file with ``n`` personas on the test server."""
    document = {
        "defaults": {"base_url": base_url, **defaults},
        "agents": [{"name": f"p{i:03d}", "model": f"m-{i:03d}"} for i in range(n)],
    }
    path = Path(tempfile.mkdtemp(prefix="fanout-bench-")) / "agents.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def run_fanout(*args: str) -> dict[str, Any]:
    """Run the real CLI as a user would and return its JSON document."""
    done = subprocess.run(
        [sys.executable, "-m", "fanout", "ask", "--json", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode not in (0, 3):
        raise SystemExit(f"fanout failed ({done.returncode}): {done.stderr.strip()}")
    document: dict[str, Any] = json.loads(done.stdout)
    return document
