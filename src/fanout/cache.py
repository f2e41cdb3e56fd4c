"""The response cache: an identical request answered from a local store instead of the network.

A request is identical when its endpoint, model, messages, request fields (``extra_body``
included), tools, structured-output format, ``extra_headers`` and *repeat index* are (the index
is the ``#N`` of ``translator#2``: a persona asked three times still gets three answers). The
key is a SHA-256 of all that; a key or header value never appears in it, or anywhere in the
store, in the clear (header values go in as their own hashes, API keys not at all).

Only complete answers are stored: a call that answered (not failed, not cut short) and ended on
its own (not at ``max_tokens``, not by a content filter). Reads are primary-key lookups; writes
go through a thread of the cache's own, never the event loop, and are flushed when the process
ends (or on ``flush()``). The store is ``cache.db`` beside the history (``$FANOUT_HOME``, else
the user data dir), 0600.

The API, for any front end (ask, batch, flows, eval)::

    from fanout.cache import ResponseCache, cache_path, request_key

    cache = ResponseCache.shared(cache_path(os.environ))  # one per file in a process
    key = request_key(agent, messages, repeat=2)
    answer = cache.get(key)           # a CachedAnswer, or None
    cache.put(key, answer, model)     # queued; written by the cache's thread
    cache.flush()                     # wait until what was put is written
    cache.stats(); cache.clear()

A run turns it on with ``RunSettings(cache=True)`` (``--cache``): the engine then looks every
call up first, and a hit is a call with ``cached: True``, no usage and a cost of $0.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import queue
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from fanout.errors import StorageError
from fanout.models import Agent, Completion, Message, Usage
from fanout.params import request_fields, resolved_headers

if TYPE_CHECKING:
    from pydantic import JsonValue

CACHE_ENV = "FANOUT_CACHE"  # "1": --cache unless --no-cache
HOME_ENV = "FANOUT_HOME"  # where the history and the cache live
CACHE_NAME = "cache.db"
_KEY_VERSION = 1  # part of every key: a change in what a key covers starts afresh
_BUSY_TIMEOUT_S = 10.0
_IDLE_S = 2.0  # the writer thread ends after this long with nothing to write
_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key        TEXT PRIMARY KEY,  -- request_key(): a SHA-256, nothing in the clear
    model      TEXT NOT NULL,     -- the model asked, to show what the cache holds
    created_at TEXT NOT NULL,     -- ISO-8601
    answer     TEXT NOT NULL      -- JSON: CachedAnswer
)
"""


def cache_path(environ: Mapping[str, str]) -> Path:
    """``$FANOUT_HOME/cache.db``, else ``cache.db`` in the user data dir (beside the history)."""
    home = environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser() / CACHE_NAME
    import platformdirs

    return platformdirs.user_data_path("fanout") / CACHE_NAME


def cache_default(environ: Mapping[str, str]) -> bool:
    """Whether runs use the cache when neither ``--cache`` nor ``--no-cache`` is given: off,
    unless ``FANOUT_CACHE=1`` (a fresh answer is what a question usually wants)."""
    return environ.get(CACHE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class CachedAnswer:
    """A complete answer as the server gave it (before any shape read it)."""

    text: str
    finish_reason: str | None = None
    response_model: str | None = None
    tool_calls: tuple[Mapping[str, str], ...] = ()
    usage: Usage | None = None  # what it cost when it was asked, for the record

    @classmethod
    def of(cls, completion: Completion) -> CachedAnswer:
        return cls(
            completion.text,
            completion.finish_reason,
            completion.model,
            tuple(dict(t) for t in completion.tool_calls),
            completion.usage,
        )

    def completion(self) -> Completion:
        return Completion(
            self.text,
            None,
            finish_reason=self.finish_reason,
            tool_calls=self.tool_calls,
            model=self.response_model,
        )

    def to_json(self) -> str:
        data = asdict(self)
        data["tool_calls"] = [dict(t) for t in self.tool_calls]
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> CachedAnswer | None:
        """The stored answer, or None for a row that is not one (then it is a miss)."""
        try:
            data = json.loads(text)
            usage = data.get("usage")
            return cls(
                str(data["text"]),
                _text(data.get("finish_reason")),
                _text(data.get("response_model")),
                tuple({str(k): str(v) for k, v in t.items()} for t in data.get("tool_calls") or []),
                Usage(**usage) if isinstance(usage, dict) else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return None


def complete(completion: Completion) -> bool:
    """Whether an answer may be stored: it ended on its own (not cut at ``max_tokens``, not
    stopped by a content filter)."""
    return completion.finish_reason not in ("length", "content_filter")


def request_key(
    agent: Agent,
    messages: Sequence[Message],
    *,
    response_format: Mapping[str, object] | None = None,
    tools: Sequence[Mapping[str, object]] | None = None,
    repeat: int = 0,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The cache key of one request (see the module docstring): a SHA-256, hex."""
    headers = resolved_headers(agent.extra_headers, os.environ if environ is None else environ)
    material = {
        "v": _KEY_VERSION,
        "base_url": agent.endpoint.base_url,
        "model": agent.model,
        "messages": list(messages),
        # The bound under one name: how it is spelled on the wire does not change the answer.
        "fields": request_fields(agent, response_format, "max_tokens"),
        "tools": list(tools) if tools else None,
        "headers": {name.lower(): _digest(value) for name, value in sorted(headers.items())},
        "repeat": repeat,
    }
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def repeat_index(name: str) -> int:
    """The ``N`` of a call named ``translator#N`` (0 for a persona asked once)."""
    _, hash_sign, number = name.rpartition("#")
    return int(number) if hash_sign and number.isdigit() else 0


@dataclass(frozen=True)
class CacheStats:
    path: str
    answers: int
    bytes: int  # the database file and its journal, on disk
    models: dict[str, int]  # answers per model asked


class ResponseCache:
    """One cache database: reads on the caller's thread, writes on the cache's own."""

    def __init__(self, path: Path, *, idle_s: float = _IDLE_S) -> None:
        self.path = path
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[str, str]] = {}  # put, not yet written: (model, json)
        self._queue: queue.Queue[tuple[str, str, str] | None] = queue.Queue()
        self._reader = self._connect()
        self._writer: threading.Thread | None = None
        self.error: str | None = None  # the first write that failed, if one did

    @classmethod
    def shared(cls, path: Path) -> ResponseCache:
        """The process's cache on ``path`` (opened once; flushed when the process ends)."""
        with _SHARED_LOCK:
            cache = _SHARED.get(path)
            if cache is None:
                cache = _SHARED[path] = cls(path)
                atexit.register(cache.close)
            return cache

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            os.chmod(self.path, 0o600)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"{self.path}: cannot open the response cache: {exc}") from None
        return db

    def get(self, key: str) -> CachedAnswer | None:
        """The answer stored under ``key``, or None. A cache that cannot be read is a miss."""
        with self._lock:
            pending = self._pending.get(key)
            if pending is not None:
                return CachedAnswer.from_json(pending[1])
            try:
                row = self._reader.execute(
                    "SELECT answer FROM answers WHERE key = ?", (key,)
                ).fetchone()
            except sqlite3.Error:
                return None
        return CachedAnswer.from_json(row[0]) if row else None

    def put(self, key: str, answer: CachedAnswer, model: str) -> None:
        """Store ``answer`` under ``key``: queued for the cache's thread (never blocks)."""
        text = answer.to_json()
        with self._lock:
            self._pending[key] = (model, text)
            # Queued under the lock: the writer decides it may stop under it too.
            self._queue.put((key, model, text))
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_all, name="fanout-cache", daemon=True
                )
                self._writer.start()

    def _write_all(self) -> None:
        """Write what is put, until the queue has been empty a while (then the thread ends,
        and the next ``put`` starts another): no idle thread is left behind."""
        db: sqlite3.Connection | None = None
        while True:
            try:
                item = self._queue.get(timeout=self._idle_s)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._writer = None
                        if db is not None:
                            db.close()
                        return
                continue
            try:
                if item is None:
                    return
                db = db or self._connect()
                key, model, text = item
                db.execute(
                    "INSERT OR REPLACE INTO answers (key, model, created_at, answer) "
                    "VALUES (?, ?, ?, ?)",
                    (key, model, datetime.now(UTC).isoformat(timespec="seconds"), text),
                )
            except (sqlite3.Error, StorageError) as exc:
                self.error = self.error or str(exc)
            finally:
                if item is not None:
                    with self._lock:
                        self._pending.pop(item[0], None)
                self._queue.task_done()
                if item is None and db is not None:
                    db.close()

    def flush(self) -> None:
        """Wait until every answer put so far is written."""
        self._queue.join()

    def close(self) -> None:
        """Write what is queued, then stop the thread and close the database."""
        with self._lock:  # the writer decides to stop under the lock: one or the other
            writer = self._writer
            if writer is not None:
                self._queue.put(None)
        if writer is not None:
            writer.join(timeout=30)
        with self._lock:
            self._writer = None
            self._reader.close()
        with _SHARED_LOCK:
            if _SHARED.get(self.path) is self:
                del _SHARED[self.path]

    def stats(self) -> CacheStats:
        """How many answers the cache holds, per model, and its size on disk."""
        self.flush()
        with self._lock:
            try:
                rows = self._reader.execute(
                    "SELECT model, COUNT(*) FROM answers GROUP BY model ORDER BY 2 DESC, 1"
                ).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: cannot read the response cache: {exc}") from None
        size = sum(
            p.stat().st_size
            for p in (self.path, self.path.with_name(self.path.name + "-wal"))
            if p.exists()
        )
        models = {str(model): int(count) for model, count in rows}
        return CacheStats(str(self.path), sum(models.values()), size, models)

    def clear(self) -> int:
        """Remove every answer; how many there were. The file shrinks to nothing."""
        self.flush()
        with self._lock:
            try:
                (count,) = self._reader.execute("SELECT COUNT(*) FROM answers").fetchone()
                self._reader.execute("DELETE FROM answers")
                self._reader.execute("VACUUM")
                self._reader.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: cannot clear the response cache: {exc}") from None
        return int(count)


_SHARED: dict[Path, ResponseCache] = {}  # one per database file in a process
_SHARED_LOCK = threading.Lock()


def _digest(value: str) -> str:
    return hashlib.sha256(b"fanout-header:" + value.encode("utf-8", "surrogatepass")).hexdigest()


def _text(value: JsonValue) -> str | None:
    return value if isinstance(value, str) else None
