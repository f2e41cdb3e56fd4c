"""The run history: every ``fanout ask`` recorded in a SQLite database, to list, show and retry.

The database is ``$FANOUT_HOME/history.db``, else ``history.db`` in the user data dir. It stores
plain JSON-able dicts and knows nothing about the engine. Schema (``PRAGMA user_version`` = 3)::

    runs(run_id      TEXT PRIMARY KEY,
         started_at  TEXT NOT NULL,   -- ISO-8601, orders the listing
         writer      TEXT,            -- JSON identity of the process running it; NULL once over
         agents      TEXT NOT NULL,   -- JSON: persona settings as recorded, panel order
         synthesizer TEXT,            -- JSON or NULL
         settings    TEXT NOT NULL,   -- JSON: run settings, shape, options, other roles
         document    TEXT NOT NULL,   -- JSON: the result document (as started, then final)
         conversation_id TEXT)        -- the conversation the run is a turn of (indexed)
    calls(run_id TEXT, call_id TEXT, entry TEXT,   -- a call's entry, committed as it ends,
          PRIMARY KEY (run_id, call_id))           -- folded into the document when read

Documents of schema version 1 (written by older fanouts) are upgraded as they are read, so old
runs show, retry and re-synthesize like new ones.

Migrations are the steps of ``_MIGRATIONS``, applied in order in one transaction; a database
from a newer fanout is refused, never guessed at.

Durability and concurrency: the database is in WAL mode with ``synchronous=NORMAL``, and each
``start_run``, ``save_call`` and ``finish_run`` is its own committed transaction, so killing
the process (even with SIGKILL) loses only the write in flight; a power cut may lose the last
few commits but never corrupts the file. Writes take the write lock up front (``BEGIN
IMMEDIATE``) and every connection waits up to 10 s for it, so several fanout processes can
write at once without "database is locked" errors or lost updates. ``HistoryRecorder`` makes
those writes from a thread of its own, so a lock held elsewhere never stalls a run.

A row that cannot be read (a damaged page, a document that is not JSON) is skipped by
``list_runs`` with a warning in ``warnings``, never taking the rest of the history with it.

A run still marked ``running`` whose writer process is gone (same host and boot, pid dead, a
zombie, or reused by another process) reads as ``interrupted``. The directory is created 0700
and the database files are kept 0600. Nothing that looks like a secret (a key named like
``api_key`` or ``authorization``, at any depth) is ever stored: ``api_key_env`` names only.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import re
import socket
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, cast

import platformdirs

from fanout.errors import ConfigError, FanoutError, StorageError
from fanout.event import CallFinished, Event, RunFinished, RunStarted, StageStarted
from fanout.export import (
    call_document,
    check_document,
    derive_totals,
    json_objects,
    report_document,
    report_from_document,
    upgrade_document,
)
from fanout.models import CallResult, RunReport
from fanout.untrusted import MAX_STORED_DEPTH, load_json

if TYPE_CHECKING:
    from fanout.api import Plan
    from fanout.models import Agent
    from fanout.record import AgentRecord, SettingsRecord

HISTORY_ENV = "FANOUT_HOME"
SCHEMA_VERSION = 3
BUSY_TIMEOUT_S = 10.0

# Step i brings the database from version i to i + 1.
_MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY, started_at TEXT NOT NULL, writer TEXT,
            agents TEXT NOT NULL, synthesizer TEXT, settings TEXT NOT NULL,
            document TEXT NOT NULL)""",
        "CREATE INDEX runs_started_at ON runs (started_at)",
    ),
    (
        """CREATE TABLE calls (
            run_id TEXT NOT NULL, call_id TEXT NOT NULL, entry TEXT NOT NULL,
            PRIMARY KEY (run_id, call_id))""",
    ),
    (  # every run is a turn of a conversation; those recorded before are one turn each
        "ALTER TABLE runs ADD COLUMN conversation_id TEXT",
        "UPDATE runs SET conversation_id = run_id",
        "CREATE INDEX runs_conversation ON runs (conversation_id, started_at)",
    ),
]
assert len(_MIGRATIONS) == SCHEMA_VERSION

# "api_key", "OPENAI_API_KEY", "apiKey", "x-api-key", "Authorization"; not "api_key_env".
_SECRET_KEY = re.compile(r"(?:^|_)(?:api_?key|authorization)$")


def history_path(environ: Mapping[str, str]) -> Path:
    """FANOUT_HOME/history.db, else platformdirs.user_data_path("fanout")/history.db."""
    home = environ.get(HISTORY_ENV)
    base = Path(home).expanduser() if home else platformdirs.user_data_path("fanout")
    return base / "history.db"


@dataclass(frozen=True)
class RunSummary:
    """One line of ``list_runs``."""

    run_id: str
    prompt: str
    status: str
    started_at: str
    finished_at: str | None
    agents: int
    answered: int
    cost_usd: float | None
    conversation_id: str = ""
    turn: int = 1


_SPANS = {"m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: an age (``30m``, ``2h``, ``3d``, ``1w``) or an ISO date or time (local
    unless it names its zone), as an aware datetime."""
    now = now or datetime.now().astimezone()
    match = re.fullmatch(r"\s*(\d{1,6})\s*([mhdw])\s*", text.lower())
    if match:
        return now - timedelta(seconds=int(match[1]) * _SPANS[match[2]])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"--since: {text!r} is neither an age (30m, 2h, 3d, 1w) nor an ISO date (2026-01-31)"
        ) from None
    return when if when.tzinfo is not None else when.astimezone()


@dataclass(frozen=True)
class RunFilter:
    """What ``runs list`` keeps: each criterion given must hold (``text`` in the prompt or an
    answer, case-insensitive; a persona of that name; that status; started at ``since`` or
    later)."""

    text: str | None = None
    agent: str | None = None
    status: str | None = None
    since: datetime | None = None
    conversation: str | None = None  # a conversation id, in full (``History.conversation_of``)

    def keeps(self, document: dict[str, object]) -> bool:
        calls = [
            c for s in json_objects(document.get("stages")) for c in json_objects(s.get("calls"))
        ]
        if self.status is not None and document.get("status") != self.status:
            return False
        if self.conversation is not None and _conversation(document) != self.conversation:
            return False
        if self.agent is not None:
            wanted = self.agent.casefold()
            if not any(str(c.get("name", "")).casefold() == wanted for c in calls):
                return False
        if self.since is not None:
            started = datetime.fromisoformat(str(document.get("started_at")))
            if started < self.since:
                return False
        if self.text is not None:
            needle = self.text.casefold()
            texts = [str(document.get("prompt", "")), *(str(c.get("answer") or "") for c in calls)]
            return any(needle in t.casefold() for t in texts)
        return True


@dataclass(frozen=True)
class StoredRun:
    """Everything recorded about a run: enough to show it, retry it or synthesize it again."""

    run_id: str
    prompt: str
    agents: list[AgentRecord]
    synthesizer: AgentRecord | None
    settings: SettingsRecord
    document: dict[str, object]


class History:
    """The history database, open for reading and writing; use it as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # threads share the connection: one statement/transaction
        self._batching: int | None = None  # the thread inside batch(), if any
        self._unfinished: set[str] = set()
        self.warnings: list[str] = []  # for the command to show: skipped rows, loose modes
        try:
            _create_private(path, self.warnings)
            self._db = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"{path}: cannot open the history database: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
            for suffix in ("", "-wal", "-shm"):  # SQLite made -wal/-shm like the db; make sure
                with suppress(FileNotFoundError):
                    os.chmod(path.with_name(path.name + suffix), 0o600)
        except (OSError, sqlite3.OperationalError) as exc:  # locked, unreadable...
            self._db.close()
            raise StorageError(f"{path}: cannot open the history database: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StorageError(f"{path}: not a fanout history database ({exc})") from exc
        except StorageError:
            self._db.close()
            raise

    def close(self) -> None:
        """Close the database; runs started here and never finished are marked interrupted."""
        try:
            for run_id in self._unfinished:
                with self._transaction():
                    document = self._document(run_id)
                    if document.get("status") == "running":
                        document["status"] = "interrupted"
                    self._store_final(run_id, document)
        finally:
            self._unfinished.clear()
            self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start_run(
        self,
        document: dict[str, object],
        *,
        agents: list[AgentRecord],
        synthesizer: AgentRecord | None,
        settings: SettingsRecord,
    ) -> None:
        """Record a run as it starts. `document` is the initial result document (status
        "running", every agent entry present with status "cancelled"/pending)."""
        for value in (document, agents, synthesizer, settings):
            _refuse_secrets(value)
        run_id = str(document["run_id"])
        with self._transaction():
            try:
                self._db.execute(
                    "INSERT INTO runs (run_id, started_at, writer, agents, synthesizer, "
                    "settings, document, conversation_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        str(document["started_at"]),
                        _dumps(_identity(os.getpid())),
                        _dumps(agents),
                        None if synthesizer is None else _dumps(synthesizer),
                        _dumps(settings),
                        _dumps(document),
                        _conversation(document),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"run {run_id} is already in the history") from exc
        self._unfinished.add(run_id)

    def save_call(self, run_id: str, entry: dict[str, object]) -> None:
        """Commit one call's finished entry at once (keyed by its ``call_id``): one small
        write, however many calls the run has."""
        _refuse_secrets(entry)
        call_id = str(entry.get("call_id") or f"{entry.get('stage', 'panel')}/{entry.get('name')}")
        text = _dumps({**entry, "call_id": call_id})
        with self._transaction():
            # An update keeps the row (and so the call's place among its stage's calls).
            self._db.execute(
                "INSERT INTO calls VALUES (?, ?, ?) "
                "ON CONFLICT (run_id, call_id) DO UPDATE SET entry = excluded.entry",
                (run_id, call_id, text),
            )

    def save_calls(self, run_id: str, entries: list[dict[str, object]]) -> None:
        """``save_call`` for several entries in one transaction (a stage's pending calls)."""
        for entry in entries:
            _refuse_secrets(entry)
        with self._transaction():
            self._db.executemany(
                "INSERT INTO calls VALUES (?, ?, ?) "
                "ON CONFLICT (run_id, call_id) DO UPDATE SET entry = excluded.entry",
                [(run_id, str(e["call_id"]), _dumps(e)) for e in entries],
            )

    def save_result(
        self, run_id: str, entry: dict[str, object], *, synthesis: bool = False
    ) -> None:
        """``save_call`` for a version 1 entry (a persona's, or the synthesis')."""
        if "call_id" not in entry:
            stage = "synthesis" if synthesis else "panel"
            role = "synthesizer" if synthesis else "persona"
            entry = {**entry, "call_id": f"{stage}/{entry.get('name')}", "stage": stage}
            entry.setdefault("role", role)
        self.save_call(run_id, entry)

    def finish_run(self, document: dict[str, object]) -> None:
        """Store the final document (its status, finished_at, every call...)."""
        _refuse_secrets(document)
        run_id = str(document["run_id"])
        with self._transaction():
            self._document(run_id)  # the run must exist
            self._store_final(run_id, document)
        self._unfinished.discard(run_id)

    def purge(self, run_id: str) -> bool:
        """Delete a run and its calls from the history; whether it was there."""
        with self._transaction():
            deleted = self._db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,)).rowcount
            self._db.execute("DELETE FROM calls WHERE run_id = ?", (run_id,))
        self._unfinished.discard(run_id)
        return bool(deleted)

    def _store_final(self, run_id: str, document: dict[str, object]) -> None:
        self._db.execute(
            "UPDATE runs SET document = ?, writer = NULL WHERE run_id = ?",
            (_dumps(document), run_id),
        )
        self._db.execute("DELETE FROM calls WHERE run_id = ?", (run_id,))

    def list_runs(self, limit: int = 20, where: RunFilter | None = None) -> list[RunSummary]:
        """The latest `limit` runs (of those ``where`` keeps), newest first. A row that cannot
        be read is skipped, with a warning naming it in ``warnings``."""
        # A filter reads every document (answers are inside them), so it needs every row.
        fetch = min(limit, 2**62) if where is None else 2**62
        try:
            with self._lock:
                if where is not None and where.conversation is not None:
                    rows = self._db.execute(  # the index finds its turns
                        "SELECT run_id, writer, document FROM runs WHERE conversation_id = ? "
                        "ORDER BY started_at DESC, rowid DESC LIMIT ?",
                        (where.conversation, fetch),
                    ).fetchall()
                else:
                    rows = self._db.execute(
                        "SELECT run_id, writer, document FROM runs "
                        "ORDER BY started_at DESC, rowid DESC LIMIT ?",
                        (fetch,),
                    ).fetchall()
        except sqlite3.DatabaseError:
            rows = self._rows_one_by_one(fetch)
        summaries = []
        for run_id, writer, document in rows:
            try:
                folded = self._folded(run_id, writer, document)
                if where is None or where.keeps(folded):
                    summaries.append(_summary(folded))
            except (ValueError, TypeError, AttributeError, KeyError, sqlite3.DatabaseError):
                self.warnings.append(f"run {run_id} is damaged in the history and was skipped")
            if len(summaries) >= limit:
                break
        return summaries

    def _rows_one_by_one(self, limit: int) -> list[tuple[str, str | None, str]]:
        """What can still be read of a damaged table, row by row, newest first."""
        try:
            with self._lock:
                (top,) = self._db.execute("SELECT max(rowid) FROM runs").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StorageError(
                f"{self.path}: the history database is damaged ({exc}); move it aside to start "
                "a new one"
            ) from None
        rows: list[tuple[str, str | None, str]] = []
        for rowid in range(int(top or 0), 0, -1):
            try:
                with self._lock:
                    row = self._db.execute(
                        "SELECT run_id, writer, document FROM runs WHERE rowid = ?", (rowid,)
                    ).fetchone()
            except sqlite3.DatabaseError:
                self.warnings.append(f"row {rowid} is damaged in the history and was skipped")
                continue
            if row is not None:
                rows.append(row)
        rows.sort(key=lambda r: _started(r[2]), reverse=True)
        return rows[:limit]

    def resolve(self, prefix: str) -> str:
        """The full run id for a unique prefix; ConfigError if none or ambiguous (message names
        the prefix and, when ambiguous, a few candidates)."""
        try:
            with self._lock:
                rows = self._db.execute(
                    "SELECT run_id FROM runs WHERE substr(run_id, 1, ?) = ? "
                    "ORDER BY run_id LIMIT 6",
                    (len(prefix), prefix),
                ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StorageError(
                f"{self.path}: the history database is damaged ({exc}); move it aside to start "
                "a new one"
            ) from None
        ids = [run_id for (run_id,) in rows]
        if prefix in ids:
            return prefix
        if not prefix or not ids:
            raise ConfigError(f"no run matches {prefix!r} in the history")
        if len(ids) > 1:
            shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            raise ConfigError(f"run id {prefix!r} is ambiguous: {shown}")
        return str(ids[0])

    def latest(self) -> str | None:
        """The id of the run started last, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT run_id FROM runs ORDER BY started_at DESC, rowid DESC LIMIT 1"
            ).fetchone()
        return None if row is None else str(row[0])

    def conversation_of(self, reference: str) -> str:
        """The conversation ``reference`` names: a conversation id, or a run id of one of its
        turns (either a unique prefix); ConfigError if none or ambiguous."""
        with self._lock:
            exact = self._db.execute(
                "SELECT conversation_id FROM runs WHERE conversation_id = ? OR run_id = ? "
                "ORDER BY conversation_id = ? DESC LIMIT 1",
                (reference, reference, reference),
            ).fetchone()
            found = (
                []
                if exact
                else self._db.execute(
                    "SELECT DISTINCT conversation_id FROM runs "
                    "WHERE substr(conversation_id, 1, ?) = ? OR substr(run_id, 1, ?) = ? LIMIT 6",
                    (len(reference), reference, len(reference), reference),
                ).fetchall()
            )
        if exact:
            return str(exact[0])
        ids = sorted(str(c) for (c,) in found if c)
        if not reference or not ids:
            raise ConfigError(f"no conversation or run matches {reference!r} in the history")
        if len(ids) > 1:
            shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            raise ConfigError(f"conversation {reference!r} is ambiguous: {shown}")
        return ids[0]

    def conversation(self, conversation_id: str) -> list[dict[str, object]]:
        """The documents of a conversation's runs, in the order they started."""
        with self._lock:
            rows = self._db.execute(
                "SELECT run_id, writer, document FROM runs WHERE conversation_id = ? "
                "ORDER BY started_at, rowid",
                (conversation_id,),
            ).fetchall()
        documents = []
        for run_id, writer, document in rows:
            try:
                documents.append(self._folded(run_id, writer, document))
            except (ValueError, TypeError, AttributeError, KeyError, sqlite3.DatabaseError):
                self.warnings.append(f"run {run_id} is damaged in the history and was skipped")
        return documents

    def load(self, run_id: str) -> StoredRun:
        """Everything recorded about one run (a full id: see `resolve`)."""
        try:
            with self._lock:
                row = self._db.execute(
                    "SELECT writer, agents, synthesizer, settings, document FROM runs "
                    "WHERE run_id = ?",
                    (run_id,),
                ).fetchone()
            if row is None:
                raise ConfigError(f"no run {run_id!r} in the history")
            writer, agents, synthesizer, settings, document = row
            current = self._folded(run_id, writer, document)
            listed = _stored(agents)
            if not isinstance(listed, list):
                raise ValueError("agents is not a list")
            return StoredRun(
                run_id=run_id,
                prompt=str(current.get("prompt", "")),
                agents=cast("list[AgentRecord]", listed),
                synthesizer=None
                if synthesizer is None
                else cast("AgentRecord", _loads(synthesizer)),
                settings=cast("SettingsRecord", _loads(settings)),
                document=current,
            )
        except (ValueError, TypeError, AttributeError, KeyError, sqlite3.DatabaseError) as exc:
            raise StorageError(
                f"run {run_id} is damaged in the history and cannot be read ({exc})"
            ) from None

    def _folded(self, run_id: str, writer: str | None, document: str) -> dict[str, object]:
        """The stored document, upgraded to the current version, with the calls committed
        since it was written folded in, its totals derived and its liveness checked."""
        current = upgrade_document(_loads(document))
        with self._lock:
            entries = self._db.execute(
                "SELECT entry FROM calls WHERE run_id = ? ORDER BY rowid", (run_id,)
            ).fetchall()
        if entries:
            _fold(current, [_loads(e) for (e,) in entries])
            derive_totals(current)
        return _readable(_current(writer, current))

    @contextmanager
    def batch(self) -> Iterator[None]:
        """The writes made inside (by this thread) in one transaction, one commit: each a
        savepoint of its own, so one that fails leaves the others in. For a writer with many
        small writes queued (a server's): commits, not writes, are what cost."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._batching = threading.get_ident()
            committed = False
            try:
                yield
                self._db.execute("COMMIT")
                committed = True
            finally:
                self._batching = None
                if not committed and self._db.in_transaction:
                    self._db.execute("ROLLBACK")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """A write transaction holding the database's write lock from its first statement."""
        if self._batching == threading.get_ident():
            self._db.execute("SAVEPOINT write")
            done = False
            try:
                yield
                done = True
            finally:  # whatever stopped it, cancellation included, is undone
                if not done:
                    self._db.execute("ROLLBACK TO write")
                self._db.execute("RELEASE write")
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            committed = False
            try:
                yield
                self._db.execute("COMMIT")
                committed = True
            finally:  # whatever stopped it, cancellation included, leaves nothing half-done
                if not committed and self._db.in_transaction:
                    self._db.execute("ROLLBACK")

    def _document(self, run_id: str) -> dict[str, object]:
        """The run's document with its committed calls folded in (inside a transaction)."""
        row = self._db.execute("SELECT document FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise ValueError(f"run {run_id} is not in the history")
        document = upgrade_document(_loads(row[0]))
        entries = self._db.execute(
            "SELECT entry FROM calls WHERE run_id = ? ORDER BY rowid", (run_id,)
        ).fetchall()
        if entries:
            _fold(document, [_loads(e) for (e,) in entries])
            derive_totals(document)
        return document

    def _migrate(self) -> None:
        with self._transaction():
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"{self.path}: written by a newer fanout (history schema {version}, this "
                    f"one reads up to {SCHEMA_VERSION}); upgrade fanout"
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[step]:
                    self._db.execute(statement)
            if version < SCHEMA_VERSION:
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _create_private(path: Path, warnings: list[str]) -> None:
    """Create the directory (0700) and an empty database file (0600) whatever the umask.

    An existing file must be empty or start like a SQLite database: SQLite itself would take a
    short non-empty file for an empty database and overwrite it. An existing directory that
    others may write to is used, with a warning (it is the user's to change).
    """
    if path.is_file() and path.stat().st_size:
        with path.open("rb") as file:
            if file.read(16) != b"SQLite format 3\x00":
                raise StorageError(f"{path}: not a fanout history database (not SQLite)")
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
    elif path.parent.stat().st_mode & 0o022:
        warnings.append(
            f"{path.parent} can be written by other users; prompts and answers are kept "
            f"there (chmod 700 {path.parent})"
        )
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.fchmod(fd, 0o600)
    os.close(fd)


def _fold(document: dict[str, object], entries: list[dict[str, object]]) -> None:
    """Put each call entry in its stage of ``document``: replacing the entry with the same
    ``call_id``, else added at the end of its stage (a stage not in the document is added)."""
    listed = document.setdefault("stages", [])
    if not isinstance(listed, list):  # upgrade_document made it one
        raise TypeError("the document's stages are not a list")
    stages = json_objects(listed)
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        stage_id = str(entry.get("stage") or "panel")
        stage = next((s for s in stages if s.get("id") == stage_id), None)
        if stage is None:
            stage = {"id": stage_id, "kind": stage_id, "calls": []}
            stages.append(stage)
            listed.append(stage)
        calls = stage.setdefault("calls", [])
        if not isinstance(calls, list):
            raise TypeError(f"the calls of stage {stage_id} are not a list")
        ids = [c.get("call_id") if isinstance(c, dict) else None for c in calls]
        if entry.get("call_id") in ids:
            calls[ids.index(entry.get("call_id"))] = entry
        else:
            calls.append(entry)


def _readable(document: dict[str, object]) -> dict[str, object]:
    """``document``, if a run can be read back from it: what every reader of a stored run
    (show, export, retry, the server) builds first. ``ValueError`` (the run is damaged) for
    one that is partial or has a field of the wrong type."""
    check_document(document)
    try:
        report_from_document(document)
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None
    return document


def _started(document: str) -> str:
    try:
        return str(_loads(document).get("started_at", ""))
    except (ValueError, AttributeError):
        return ""


def _refuse_secrets(value: object, where: str = "") -> None:
    """ValueError if a mapping, at any depth, has a key named like an API key or a header."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if _secret_like(str(key)):
                raise ValueError(f"refusing to store a secret-like key {where}{key!r} in history")
            if isinstance(item, Mapping | list | tuple):
                _refuse_secrets(item, f"{where}{key}.")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if isinstance(item, Mapping | list | tuple):
                _refuse_secrets(item, f"{where}{index}.")


@functools.lru_cache(maxsize=4096)
def _secret_like(key: str) -> bool:
    # Cached: the same few dozen keys come in every document a server stores.
    name = re.sub(r"([a-z])([A-Z])", r"\1_\2", key).lower()
    return _SECRET_KEY.search(re.sub(r"[^a-z0-9]+", "_", name)) is not None


def _current(writer: str | None, document: dict[str, object]) -> dict[str, object]:
    """The document, with "running" turned into "interrupted" when its writer is gone."""
    if document.get("status") == "running" and writer and not _alive(_loads(writer)):
        document["status"] = "interrupted"
    return document


def _conversation(document: Mapping[str, object]) -> str:
    """The conversation a run's document belongs to (a run recorded before conversations: its
    own)."""
    return str(document.get("conversation_id") or document.get("run_id"))


def _summary(document: dict[str, object]) -> RunSummary:
    entries = json_objects(document.get("agents"))
    cost = document.get("cost_usd")
    if not isinstance(cost, int | float):
        synthesis = document.get("synthesis")
        costs = [e.get("cost_usd") for e in [*entries, *json_objects([synthesis])]]
        known = [c for c in costs if isinstance(c, int | float)]
        cost = sum(known) if known else None
    return RunSummary(
        run_id=str(document.get("run_id")),
        prompt=str(document.get("prompt", "")),
        status=str(document.get("status")),
        started_at=str(document.get("started_at")),
        finished_at=_text_or_none(document.get("finished_at")),
        agents=len(entries),
        answered=sum(1 for e in entries if e.get("status") == "ok"),
        cost_usd=None if cost is None else float(cost),
        conversation_id=_conversation(document),
        turn=_turn(document.get("turn")),
    )


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _turn(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def _identity(pid: int) -> dict[str, object]:
    """Who writes a run: host, boot and the process start time tell a reused pid apart."""
    return dict(_identity_of(pid))


@functools.lru_cache(maxsize=4)
def _identity_of(pid: int) -> tuple[tuple[str, object], ...]:
    # Asked for every run a server starts: the answer cannot change for a given live pid.
    identity = {"host": socket.gethostname(), "boot": _boot_id(), "pid": pid, "start": _start(pid)}
    return tuple(identity.items())


def _alive(writer: dict[str, object]) -> bool:
    """Whether the process that wrote a run may still be running it."""
    if sys.platform == "win32" or writer.get("host") != socket.gethostname():
        return True  # no way to tell from here: trust the record
    boot = _boot_id()
    if boot and writer.get("boot") not in (None, boot):
        return False  # the machine rebooted since
    recorded = writer["pid"]
    if not isinstance(recorded, int | float | str):
        raise TypeError(f"a writer's pid is {type(recorded).__name__}")
    pid = int(recorded)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, but someone else's
    start = _start(pid)
    return start != "zombie" and (writer.get("start") is None or start in (None, writer["start"]))


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start(pid: int) -> str | None:
    """The process's start time in ticks since boot (Linux), "zombie", or None if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    if len(fields) < 20:
        return None
    return "zombie" if fields[0] in ("Z", "X") else fields[19]


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _stored(text: str) -> object:
    """A stored JSON column; ``ValueError`` for one that is damaged (cut, or nested beyond
    what fanout writes)."""
    return load_json(text, max_chars=None, max_depth=MAX_STORED_DEPTH)


def _loads(text: str) -> dict[str, object]:
    value = _stored(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


class HistoryWriter:
    """One thread making history writes in the order they were queued, for every recorder
    that shares it (a server's runs share one; a recorder on its own makes its own).
    ``submit`` only queues; a write that fails is handed to its ``failed`` callback; ``after``
    queues a callback for once everything queued before it is committed. Given the
    ``history``, the writes waiting in the queue are committed together (``History.batch``)."""

    BATCH = 64  # writes in one commit, at most (readers wait for the lock meanwhile)

    def __init__(self, history: History | None = None) -> None:
        self._history = history
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(
        self, write: Callable[[], None], failed: Callable[[str], None] | None = None
    ) -> None:
        self._put(_Job(write, failed, after=False))

    def after(self, callback: Callable[[], None]) -> None:
        self._put(_Job(callback, None, after=True))

    def drain(self) -> None:
        """Wait until every write queued so far is done."""
        if self._thread is not None:
            done = threading.Event()
            self.after(done.set)
            done.wait()

    def close(self) -> None:
        """Drain the queue and end the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _put(self, job: _Job) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._work, name="fanout-history", daemon=True
                    )
                    self._thread.start()
        self._queue.put(job)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            jobs = [job]
            ending = False
            while self._history is not None and len(jobs) < self.BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    ending = True
                    break
                jobs.append(more)
            self._run(jobs)
            if ending:
                break

    def _run(self, jobs: list[_Job]) -> None:
        writes = [j for j in jobs if not j.after]
        if self._history is None or len(writes) < 2:
            for job in jobs:
                job.run()
            return
        try:
            with self._history.batch():
                for job in writes:
                    job.run()
        except (sqlite3.Error, OSError) as exc:  # the commit itself: none of them is in
            for job in writes:
                if job.failed is not None:
                    job.failed(str(exc))
        for job in jobs:
            if job.after:
                job.run()


@dataclass(frozen=True)
class _Job:
    write: Callable[[], None]
    failed: Callable[[str], None] | None
    after: bool

    def run(self) -> None:
        try:
            self.write()
        except (sqlite3.Error, OSError, ValueError, FanoutError) as exc:
            if self.failed is not None:
                self.failed(str(exc))


class HistoryRecorder:
    """Writes a run into the history as it goes (an observer): each answer is committed the
    moment it arrives, so a crash loses only the calls in flight.

    The writes happen in one thread, in order (its own, or a ``HistoryWriter`` it shares with
    other recorders: a server's runs share one): ``handle`` only queues them, so a database
    locked by another process never freezes the live view or adds to a call's latency.
    ``close`` waits for the queue to drain. A failure to record never stops the run;
    the first one is kept in ``error`` for the command to report."""

    def __init__(
        self,
        history: History,
        *,
        agents: list[AgentRecord] | None = None,
        synthesizer: AgentRecord | None = None,
        settings: SettingsRecord | None = None,
        resume: bool = False,
        writer: HistoryWriter | None = None,
    ) -> None:
        self._history = history
        self._agents = agents or []
        self._synthesizer = synthesizer
        self._settings: SettingsRecord = settings or {}
        self._resume = resume  # a stored run carried on: the command records its end
        self._run_id = ""
        self.error: str | None = None
        self._shared = writer is not None  # another's writer: close only waits for it
        self._writer = writer or HistoryWriter()

    def start(self, report: RunReport) -> None:
        self._run_id = report.run_id
        document = {**report_document(report), "status": "running"}
        agents, synthesizer, settings = self._agents, self._synthesizer, self._settings
        self._submit(
            lambda: self._history.start_run(
                document, agents=agents, synthesizer=synthesizer, settings=settings
            )
        )

    def handle(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._run_id = event.run_id
        elif isinstance(event, StageStarted) and not self._resume and event.calls:
            # Every call of the stage is in the history as pending from now: a crash shows
            # which ones never answered.
            pending = [call_document(CallResult.of(c)) for c in event.calls]
            run_id = self._run_id
            self._submit(lambda: self._history.save_calls(run_id, pending))
        elif isinstance(event, CallFinished):
            result = event.result
            if self._resume and result.status != "ok":
                return  # carrying a stored run on: only a success replaces what it had
            entry, run_id = call_document(result), self._run_id
            self._submit(lambda: self._history.save_call(run_id, entry))
        elif isinstance(event, RunFinished) and not self._resume:
            self.finish(event.report)

    def finish(self, report: RunReport) -> None:
        document = report_document(report)
        self._submit(lambda: self._history.finish_run(document))

    def close(self) -> None:
        """Wait until every queued write is done."""
        if self._shared:
            self._writer.drain()
        else:
            self._writer.close()

    def _submit(self, write: Callable[[], None]) -> None:
        self._writer.submit(write, self._failed)

    def _failed(self, message: str) -> None:
        self.error = self.error or message


def recorder_for(
    history: History,
    plan: Plan,
    *,
    written: Callable[[Agent], Agent] | None = None,
    resume: bool = False,
    writer: HistoryWriter | None = None,
) -> HistoryRecorder:
    """The one way a run gets its recorder, whoever starts it (``ask``, ``flow run``, the
    server; ``runs retry``/``runs synth`` with ``resume``: the run is recorded already, only
    its new answers are written). ``written``: how each persona and role was written, when
    this run asked some elsewhere (on this run's local server); ``writer``: a writer thread
    shared by many runs (the server's), else one of the recorder's own."""
    if resume:
        return HistoryRecorder(history, resume=True, writer=writer)
    from fanout.record import run_record

    record = run_record(plan, written)
    return HistoryRecorder(
        history,
        agents=record.agents,
        synthesizer=record.synthesizer,
        settings=record.settings,
        writer=writer,
    )
