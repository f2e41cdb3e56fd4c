"""Flags into what the command drivers take: run settings, the personas named (``-a``, ``-p``,
``name:N``), the shape and its options, the output, the prompt; each mistake one
``ConfigError`` naming the flag."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from fanout.cli.options import (
    MAX_PROMPT_BYTES,
)
from fanout.errors import ConfigError

if TYPE_CHECKING:  # the heavy modules load only when a command needs them
    from fanout.conversation import Transcript
    from fanout.engine import RunSettings
    from fanout.models import Attachment
    from fanout.output import Output


def run_settings(
    concurrency: int,
    timeout: float,
    retries: int,
    max_retry_after: float,
    rpm: float | None,
    tpm: float | None,
    max_cost: float | None,
) -> RunSettings:
    """The run flags that ``ask`` and ``batch`` share."""
    from fanout.engine import RunSettings
    from fanout.retry import RetryPolicy

    return RunSettings(
        concurrency=concurrency,
        timeout=timeout,
        retry=RetryPolicy(retries=retries, max_retry_after=max_retry_after),
        rpm=rpm,
        tpm=tpm,
        max_cost=max_cost,
    )


def with_request_flags(
    settings: RunSettings,
    *,
    params: list[str] | None,
    cache: bool | None,
    files: list[Path] | None,
    stream: bool | None,
) -> RunSettings:
    """``--param``, ``--cache``/``--no-cache``, ``-f`` and ``--stream`` on the run settings."""
    from dataclasses import replace

    from fanout.params import params_of_flags

    return replace(
        settings,
        stream=stream,
        params=params_of_flags(params),
        cache=cache_of(cache),
        attachments=attachments_of(files),
    )


def attachments_of(paths: list[Path] | None) -> tuple[Attachment, ...]:
    """``-f``: the files read and checked (one line for the first that cannot be sent)."""
    if not paths:
        return ()
    for path in paths:
        check_utf8(str(path), "--file")
    from fanout.attachments import load_attachments

    return load_attachments(paths)


def cache_of(given: bool | None) -> bool:
    """``--cache``/``--no-cache``, else the default (``FANOUT_CACHE``)."""
    if given is not None:
        return given
    from fanout.cache import cache_default

    return cache_default(os.environ)


def agent_names(agents: list[str] | None, model: str | None) -> list[str] | None:
    """Every ``-a``, each split at its commas, merged in order."""
    for given in agents or []:
        check_utf8(given, "--agents")
    check_utf8(model, "--model")
    names = [name for given in agents or [] for name in _names_in(given)]
    if agents and not names:
        raise ConfigError("--agents: give at least one persona name")
    if model is not None and not model.strip():
        raise ConfigError("--model: give a model name")
    return names or None


def _names_in(given: str) -> list[str]:
    """One ``-a`` argument's names: split at its commas, except that a variant
    (``analyst@reasoning_effort=low,high``) takes the rest as its values."""
    names: list[str] = []
    pieces = given.split(",")
    for index, piece in enumerate(pieces):
        if "@" in piece and "=" in piece.partition("@")[2]:
            from fanout.params import variant_names

            return names + variant_names(",".join(pieces[index:]).strip())
        if piece.strip():
            names.append(piece.strip())
    return names


def adhoc_personas(given: list[str] | None) -> list[tuple[str, str]]:
    """Every ``-p NAME=INSTRUCTIONS``, as (name, instructions): a malformed one is an error
    naming ``-p`` and the value (a clash with the panel's personas is found when it loads)."""
    from fanout.config import is_persona_name

    personas: list[tuple[str, str]] = []
    seen: set[str] = set()
    for value in given or []:
        check_utf8(value, "-p/--persona")
        name, equals, instructions = value.partition("=")
        name, instructions = name.strip(), instructions.strip()
        problem = (
            "give NAME=INSTRUCTIONS, e.g. -p 'pirate=You answer like a pirate'"
            if not equals
            else "the name before = is empty"
            if not name
            else "a name has no spaces, commas or control characters"
            if not is_persona_name(name)
            else "the instructions after = are empty"
            if not instructions
            else f"{name!r} is given twice"
            if name.casefold() in seen
            else None
        )
        if problem:
            raise ConfigError(f"-p/--persona {value!r}: {problem}")
        seen.add(name.casefold())
        personas.append((name, instructions))
    return personas


def panel_names(names: list[str] | None, personas: list[tuple[str, str]]) -> list[str] | None:
    """Who is asked: the ``-a`` personas and the ``-p`` ones; ``-p`` alone, only those."""
    if not personas:
        return names
    return [*(names or []), *(name for name, _ in personas)]


def repeats(names: list[str] | None) -> tuple[list[str] | None, dict[str, int]]:
    """``translator:3`` in ``--agents``: ask that persona three times."""
    if names is None:
        return None, {}
    plain: list[str] = []
    repeat: dict[str, int] = {}
    for name in names:
        base, colon, times = name.rpartition(":")
        if colon and base and times.isdigit():
            if not 1 <= int(times) <= 50:
                raise ConfigError(f"--agents: {name!r}: ask a persona 1 to 50 times")
            repeat[base] = int(times)
            name = base
        plain.append(name)
    return plain, repeat


def output_of(
    json_output: bool, jsonl: bool, deltas: bool, file: Path | None, view: str | None = None
) -> Output:
    from fanout.output import Output

    if json_output and jsonl:
        raise ConfigError("--json and --jsonl: choose one")
    if deltas and not jsonl:
        raise ConfigError("--jsonl-deltas goes with --jsonl")
    if file is not None:
        check_output(file)
    mode: Literal["table", "json", "jsonl"] = (
        "json" if json_output else "jsonl" if jsonl else "table"
    )
    return Output(mode=mode, deltas=deltas, file=file, view=view)


def check_output(file: Path) -> None:
    """``-o``: a regular file, or a new one in a directory that exists. Writing to a pipe or a
    device would block (a FIFO nobody reads), never end, or read back what it wrote
    (``/dev/stdout``, when a batch resumes from its output)."""
    from fanout.config import file_kind

    try:
        mode = os.stat(file).st_mode
    except FileNotFoundError:
        if not file.parent.is_dir():
            raise ConfigError(f"--output: directory {str(file.parent)!r} does not exist") from None
        return
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a usable file name"
        raise ConfigError(f"--output: {str(file)!r}: {reason}") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"--output: {str(file)!r} is a directory; name a file")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"--output: {str(file)!r} {file_kind(mode)}; name a regular file")


def check_utf8(value: str | None, what: str) -> None:
    """Refuse an argument that is not UTF-8: Python hands it over with surrogates, which no
    request, file or database can carry (every persona would fail on it, one by one)."""
    if value is not None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"{what} is not UTF-8 text") from None


def read_prompt(prompt: str | None) -> str:
    check_utf8(prompt, "the prompt")
    if prompt is None or prompt == "-":
        if prompt is None and sys.stdin.isatty():
            raise ConfigError('no prompt: give one as an argument, e.g. fanout ask "Why?"')
        from fanout.interrupt import raising

        # Bounded: stdin can be /dev/zero, or a pipe that never ends; a signal ends the wait.
        with raising():
            raw = sys.stdin.buffer.read(MAX_PROMPT_BYTES + 1)
        if len(raw) > MAX_PROMPT_BYTES:
            raise ConfigError(f"the prompt on stdin is over {MAX_PROMPT_BYTES // 2**20} MB")
        try:
            prompt = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ConfigError("the prompt on stdin is not UTF-8 text") from None
    if not prompt.strip():
        raise ConfigError("the prompt is empty")
    return prompt.strip()


def continued(
    wanted: bool,
    reference: str | None,
    names: list[str] | None,
    personas: list[tuple[str, str]],
    config: Path | None,
) -> tuple[Transcript | None, list[str] | None, list[tuple[str, str]]]:
    """``--continue``/``--conversation``: the conversation, who is asked (the personas of its
    last turn, then those named now) and the ``-p`` personas; not wanted, the flags as given."""
    if not wanted and reference is None:
        return None, names, personas
    from fanout.chat import continued as carried_on

    carried = carried_on(reference, names, personas, config)
    return carried.conversation, carried.names, carried.personas
