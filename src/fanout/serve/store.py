"""Where the server's runs are written: one history, written by one thread for every run, and
what several workers share.

``written`` is how a route waits, without holding the event loop, until what it queued is
committed: a ``202`` goes out only once its run is in the history, so a server killed right
after answering still knows every run it accepted. ``SharedState`` carries what one worker
asks of another.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from pathlib import Path

from fanout.errors import StorageError
from fanout.history import HistoryWriter


async def written(writer: HistoryWriter) -> None:
    """Return once every write queued on ``writer`` so far is done."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def resolve() -> None:
        if not done.done():
            done.set_result(None)

    def signal() -> None:  # in the writer's thread, once what was queued before is done
        loop.call_soon_threadsafe(resolve)

    writer.after(signal)
    await done


class SharedState:
    """What the workers of one server tell each other (``--workers``): a terminate or purge
    asked of one worker for a run another one is running. A small SQLite table beside the
    history (``serve.db``, WAL); every worker reads what is new a few times a second and acts
    on its own runs. Everything else a worker needs about another's runs is in the history."""

    KEEP_S = 300.0  # requests older than this are gone: their run has long acted on them

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY, "
                "run_id TEXT NOT NULL, action TEXT NOT NULL, at REAL NOT NULL)"
            )
            os.chmod(path, 0o600)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"{path}: cannot open the workers' shared state: {exc}") from exc

    def ask(self, run_id: str, action: str) -> None:
        """Ask whichever worker runs ``run_id`` to ``terminate`` it (or to ``forget`` it)."""
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO requests (run_id, action, at) VALUES (?, ?, ?)", (run_id, action, now)
            )
            self._db.execute("DELETE FROM requests WHERE at < ?", (now - self.KEEP_S,))

    def last(self) -> int:
        with self._lock:
            (top,) = self._db.execute("SELECT coalesce(max(id), 0) FROM requests").fetchone()
        return int(top)

    def since(self, last: int) -> list[tuple[int, str, str]]:
        """The requests made after ``last`` (an ``id``), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, run_id, action FROM requests WHERE id > ? ORDER BY id", (last,)
            ).fetchall()
        return [(int(i), str(r), str(a)) for i, r, a in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
