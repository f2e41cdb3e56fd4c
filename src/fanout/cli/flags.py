"""Flags into what the command drivers take: run settings, the personas named (``-a``, ``-p``,
``name:N``), the shape and its options, the output, the prompt; each mistake one
``ConfigError`` naming the flag."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fanout.cli.options import (
    MAX_PROMPT_BYTES,
)
from fanout.errors import ConfigError

if TYPE_CHECKING:  # the heavy modules load only when a command needs them
    from fanout.engine import RunSettings
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


def shape_of(
    *,
    vote: bool,
    choices: str | None,
    quorum: float | None,
    judge: bool,
    council: bool,
    best_of: int | None,
    repeat: dict[str, int],
    agreement_map: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The shape the flags ask for and its options (``--choices``/``--quorum`` mean a vote)."""
    wanted = [
        flag
        for flag, on in (
            ("vote", vote or choices is not None or quorum is not None),
            ("judge", judge),
            ("council", council),
        )
        if on
    ]
    if len(wanted) > 1:
        raise ConfigError(f"--{wanted[0]} and --{wanted[1]}: choose one")
    options: dict[str, Any] = {}
    if choices is not None:
        options["choices"] = [c.strip() for c in choices.split(",") if c.strip()]
    if quorum is not None:
        options["quorum"] = quorum
    if best_of is not None:
        options["best_of"] = best_of
    if repeat:
        options["repeat"] = repeat
    if agreement_map:
        options["map"] = True
    return (wanted[0] if wanted else "panel"), options


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
        # Bounded: stdin can be /dev/zero, or a pipe that never ends.
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


def routed(
    shape: str,
    options: dict[str, Any],
    route: bool,
    route_max: int | None,
    orchestrate: bool,
    max_turns: int | None,
    synthesize: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The shape once ``--route``/``--orchestrate`` are taken into account (each is a shape of
    its own, so neither goes with a vote, a judge or a council)."""
    if route_max is not None and not route:
        raise ConfigError("--route-max goes with --route")
    if max_turns is not None and not orchestrate:
        raise ConfigError("--max-turns goes with --orchestrate")
    if route and orchestrate:
        raise ConfigError("--route and --orchestrate: choose one")
    wanted = "orchestrate" if orchestrate else "route" if route else None
    if wanted is None:
        return shape, options
    if shape != "panel":
        raise ConfigError(f"--{shape} and --{wanted}: choose one")
    if orchestrate and (synthesize or options.get("map")):
        flag = "--map" if options.get("map") else "--synthesize"
        raise ConfigError(
            f"{flag} does not go with --orchestrate: the orchestrator writes the answer"
        )
    if orchestrate:
        return "orchestrate", {**options, "max_turns": max_turns or 4}
    return "route", {**options, "route_max": route_max}
