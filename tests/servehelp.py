"""Real uvicorn servers for the serve tests: in a thread of this process, or as a ``fanout
serve`` process of its own (to kill it), both on 127.0.0.1 port 0."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette

from fanout.api import load_panel
from fanout.serve.app import create_app
from fanout.serve.server import bind, url_of, uvicorn_config

SRC = str(Path(__file__).resolve().parents[1] / "src")


def until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it is truthy (and return it); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@dataclass
class Served:
    url: str
    server: uvicorn.Server
    thread: threading.Thread
    app: Starlette

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def serve_in_thread(config: Path, **options: Any) -> Served:
    sock = bind("127.0.0.1", 0)
    app = create_app(load_panel(config), **options)
    server = uvicorn.Server(uvicorn_config(app))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    until(lambda: server.started or not thread.is_alive(), what="the server to start")
    assert server.started, "the server did not start"
    return Served(url_of(sock).rstrip("/"), server, thread, app)


def serve_process(
    *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """``fanout serve --port 0 ARGS`` in a process of its own; returns it and its URL."""
    environ = {**os.environ, "PYTHONPATH": SRC, **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fanout", "serve", "--port", "0", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "fanout serve: http://127.0.0.1:PORT/ (Ctrl-C to stop)"
    if not line.startswith("fanout serve: "):
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"no URL from fanout serve: {line!r} {err}")
    return proc, line.split()[2].rstrip("/")


Serve = Callable[..., Served]  # the ``serve`` fixture (conftest.py): start a server, stopped after
