"""The JSON result document and the JSONL event stream: versioned, stable, extended (never
broken) by later features.

Version 2 describes a run as ``stages: [{id, kind, calls: [...]}]``; version 1's ``agents``,
``output``, ``synthesis``, ``usage`` and ``cost_usd`` are still there, derived from the calls by
``derive_totals`` (the one place that does it, for fresh runs and stored ones alike), so
``jq '.output.physicist'`` keeps working. A stage's verdict appears under its ``key``
(``vote``, ``judge``...) at the top level too.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TextIO, TypeGuard

from fanout.event import (
    CallDelta,
    CallFallback,
    CallFinished,
    CallRetrying,
    CallStarted,
    Event,
    RunFinished,
    RunStarted,
    StageFinished,
    StageStarted,
)
from fanout.models import (
    Agent,
    AgentError,
    Attachment,
    AttemptTiming,
    Call,
    CallResult,
    CallStatus,
    CallTiming,
    RunReport,
    StageResult,
    Usage,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pydantic import JsonValue

    from fanout.config import Panel
    from fanout.cost import PlannedCall

SCHEMA_VERSION = 2
_CALL_KEYS = ("call_id", "stage", "role")


def report_document(report: RunReport) -> dict[str, object]:
    """The ``--json`` document of a run."""
    document: dict[str, object] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": report.run_id,
        "trace_id": report.trace_id,
        "span_id": report.span_id,
        "parent_span_id": report.parent_span_id,
        # Every run is a turn of a conversation: its first turn's run id, unless named.
        "conversation_id": report.conversation_id or report.run_id,
        "turn": report.turn,
        "shape": report.shape,
        "prompt": report.prompt,
        "status": report.status,
        "started_at": report.started_at,
        "finished_at": report.finished_at,
        "duration_s": report.duration_s,
        # The files sent with the question (-f), by hash: never their content.
        "attachments": [attachment_reference(a) for a in report.attachments],
        # False: a verdict reached no decision it exists for (no quorum, a tie...); null:
        # nothing in the run decides anything.
        "decided": report.decided,
        "stages": [stage_document(s) for s in report.stages],
    }
    return derive_totals(document)


def attachment_reference(attachment: Attachment) -> dict[str, JsonValue]:
    """An attachment as documents and the history list it (``attachments.reference``)."""
    return {
        "name": attachment.name,
        "kind": attachment.kind,
        "media_type": attachment.media_type,
        "bytes": attachment.size,
        "sha256": attachment.sha256,
    }


def stage_document(stage: StageResult) -> dict[str, object]:
    document: dict[str, object] = {
        "id": stage.id,
        "kind": stage.kind,
        "calls": [call_document(c) for c in stage.calls],
    }
    if stage.key is not None:
        document["key"] = stage.key
    if stage.holds_answers:
        document["answers"] = True
    if stage.verdict is not None:
        document["verdict"] = stage.verdict.to_dict()
    return document


def call_document(result: CallResult) -> dict[str, object]:
    """One call's entry: version 1's persona entry plus its identity and how it ended."""
    return {
        "name": result.name,
        "model": result.model,
        "status": result.status,
        "answer": result.answer,
        "error": asdict(result.error) if result.error else None,
        "attempts": result.attempts,
        "latency_s": result.latency_s,
        "ttft_s": result.ttft_s,
        "usage": asdict(result.usage),
        "usage_estimated": result.usage_estimated,
        "cost_usd": _usd(result.cost_usd),
        "call_id": result.call_id,
        "stage": result.stage,
        "role": result.role,
        "finish_reason": result.finish_reason,
        "truncated": result.truncated,
        "response_model": result.response_model,
        "params": result.params,
        "cached": result.cached,
        "timing": timing_document(result.timing) if result.timing is not None else None,
        **result.details,
    }


_ATTEMPT_KEYS = ("slot_s", "limiter_s", "sent_s", "first_token_s", "end_s")


def timing_document(timing: CallTiming) -> dict[str, object]:
    """A call's ``timing``: seconds from the run's start, queued, then each attempt's phases
    (``error`` and ``backoff_s`` only on an attempt that failed)."""
    attempts: list[dict[str, object]] = []
    for attempt in timing.attempts:
        entry: dict[str, object] = {
            "attempt": attempt.attempt,
            "span_id": attempt.span_id,
            "queued_s": attempt.queued_s,
            "slot_s": attempt.slot_s,
            "limiter_s": attempt.limiter_s,
            "sent_s": attempt.sent_s,
            "first_token_s": attempt.first_token_s,
            "end_s": attempt.end_s,
        }
        if attempt.error is not None:
            entry["error"] = attempt.error
        if attempt.backoff_s is not None:
            entry["backoff_s"] = attempt.backoff_s
        attempts.append(entry)
    return {
        "span_id": timing.span_id,
        "queued_s": timing.queued_s,
        "end_s": timing.end_s,
        "attempts": attempts,
    }


def timing_from_document(value: object) -> CallTiming | None:
    """A stored ``timing`` back as a ``CallTiming``; None for anything that is not one."""
    if not isinstance(value, dict) or not _is_number(value.get("queued_s")):
        return None
    attempts: list[AttemptTiming] = []
    for entry in value.get("attempts") or []:
        if not isinstance(entry, dict) or not _is_number(entry.get("queued_s")):
            continue
        times = {k: _seconds(entry.get(k)) for k in _ATTEMPT_KEYS}
        error, number = entry.get("error"), entry.get("attempt")
        attempts.append(
            AttemptTiming(
                number if isinstance(number, int) else len(attempts) + 1,
                str(entry.get("span_id") or ""),
                float(entry["queued_s"]),
                backoff_s=_seconds(entry.get("backoff_s")),
                error=str(error) if error is not None else None,
                **times,
            )
        )
    return CallTiming(
        str(value.get("span_id") or ""),
        float(value["queued_s"]),
        attempts,
        _seconds(value.get("end_s")),
    )


def _seconds(value: object) -> float | None:
    return float(value) if _is_number(value) else None


agent_document = call_document  # version 1's name


def derive_totals(document: dict[str, object]) -> dict[str, object]:
    """Version 1's fields (``agents``, ``output``, ``synthesis``, ``usage``, ``cost_usd``) and
    the verdicts' top-level keys, from ``stages`` as they stand (so a run killed half-way still
    shows what it has, consistently). Tolerates entries that are not what they should be."""
    stages = json_objects(document.get("stages"))
    calls = [c for s in stages for c in json_objects(s.get("calls"))]
    # The answers: the first stage that holds them (its shape marked it). As RunReport.answers.
    answers = next((s for s in stages if s.get("answers") is True), stages[0] if stages else None)
    first = json_objects(answers.get("calls")) if answers else []
    synthesis = next(
        (
            c
            for s in stages[1:]
            if s.get("kind") == "synthesis"
            for c in json_objects(s.get("calls"))
        ),
        None,
    )
    document["agents"] = first
    document["output"] = {
        str(c.get("name")): c["answer"]
        for c in first
        if c.get("status") == "ok" and isinstance(c.get("answer"), str)
    }
    document["synthesis"] = synthesis
    totals = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0, "reasoning_tokens": 0}
    for call in calls:
        usage = _usage_of(call)
        for key in totals:
            totals[key] += _count(usage.get(key))
    document["usage"] = totals
    costs = [c.get("cost_usd") for c in calls]
    unpriced = any(
        not _is_number(cost) and _count(_usage_of(c).get("total_tokens"))
        for cost, c in zip(costs, calls, strict=True)
    )
    known = sum(float(c) for c in costs if isinstance(c, int | float) and _is_number(c))
    document["cost_usd"] = None if unpriced else round(known, 8)
    for stage in stages:
        verdict_key = stage.get("key")
        if isinstance(verdict_key, str) and "verdict" in stage:
            document[verdict_key] = stage["verdict"]
    return document


def json_objects(value: object) -> list[dict[str, object]]:
    """The JSON objects in a stored list (anything else in it left out; none for a non-list)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def upgrade_document(document: dict[str, object]) -> dict[str, object]:
    """A stored document of version 1 as version 2: its personas become the ``panel`` stage,
    its synthesis the ``synthesis`` stage. A version 2 document written before stages were
    marked gets its answer stages marked, as its shape says which they are."""
    version = document.get("schema_version", 1)
    if _is_number(version) and version >= 2 and isinstance(document.get("stages"), list):
        return _mark_answers(document)
    calls = [_v1_call(e, "panel", "persona") for e in json_objects(document.get("agents"))]
    stages: list[dict[str, object]] = [
        {"id": "panel", "kind": "panel", "answers": True, "calls": calls}
    ]
    synthesis = document.get("synthesis")
    if isinstance(synthesis, dict):
        call = _v1_call(synthesis, "synthesis", "synthesizer")
        stages.append({"id": "synthesis", "kind": "synthesis", "calls": [call]})
    upgraded = derive_totals(
        {
            **document,
            "schema_version": SCHEMA_VERSION,
            "trace_id": document.get("trace_id"),
            "shape": document.get("shape", "panel"),
            "stages": stages,
        }
    )
    for key in ("usage", "cost_usd"):  # what version 1 recorded stands
        if key in document:
            upgraded[key] = document[key]
    return upgraded


def _mark_answers(document: dict[str, object]) -> dict[str, object]:
    """``answers: true`` on the stages that hold the run's answers, for a document written
    before stages carried it: those of the kinds its shape answers with (else, as version 2
    had it, the first panel, or the first stage without a verdict)."""
    stages = json_objects(document["stages"])
    if any(s.get("answers") is True for s in stages):
        return document
    from fanout.shapes import answer_kinds

    kinds = answer_kinds(str(document.get("shape") or "panel"))
    marked = [s for s in stages if s.get("kind") in kinds]
    if not marked:
        first = next((s for s in stages if not isinstance(s.get("key"), str)), None)
        marked = [first] if first is not None else []
    for stage in marked:
        stage["answers"] = True
    return derive_totals(document)


def _v1_call(entry: Mapping[str, object], stage: str, role: str) -> dict[str, object]:
    name = str(entry.get("name"))
    return {
        **entry,
        "call_id": entry.get("call_id") or f"{stage}/{name}",
        "stage": entry.get("stage") or stage,
        "role": entry.get("role") or role,
        "finish_reason": entry.get("finish_reason"),
        "truncated": entry.get("truncated", False),
    }


def _usage_of(call: Mapping[str, object]) -> dict[str, object]:
    usage = call.get("usage")
    return usage if isinstance(usage, dict) else {}


def _count(value: object) -> int:
    """A stored token count, or 0 for anything that is not a sane one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if not math.isfinite(value) or value < 0:
        return 0
    return int(value)


def _is_number(value: object) -> TypeGuard[float]:
    """A finite int or float (never a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def panel_document(panel: Panel) -> dict[str, object]:
    """``fanout agents --json``: where the panel came from and who is on it."""
    return {
        "source": panel.source,
        "agents": [_agent_entry(a) for a in panel.agents],
        "synthesizer": _agent_entry(panel.synthesizer),
    }


def _agent_entry(agent: Agent) -> dict[str, object]:
    return {
        "name": agent.name,
        "model": agent.model,
        "base_url": agent.endpoint.display_url,
        "host": agent.endpoint.host,
        "description": agent.description,
    }


class JsonlWriter:
    """``--jsonl``: one JSON object per line for every event, flushed as it happens.

    Every line has ``schema_version``, ``run_id``, ``trace_id``, ``ts`` and ``type``; call
    events add ``agent`` (the call's name), ``stage``, ``call_id`` and ``role``.
    ``agent_finished`` carries the call's entry of the result document and ``run_finished``
    the whole document, so a consumer can stop reading there. (The synthesizer's events keep
    version 1's names, ``synthesis_started`` and ``synthesis_finished``.)
    """

    wants_deltas = True  # time to first token, and the deltas themselves with --jsonl-deltas

    def __init__(self, out: TextIO, *, deltas: bool = False) -> None:
        self._out = out
        self._deltas = deltas
        self._run_id = ""
        self._trace_id = ""
        self._conversation_id = ""

    def handle(self, event: Event) -> None:
        line = self._line(event)
        if line is not None:
            self._out.write(json_line(line) + "\n")
            self._out.flush()

    def line(self, event: Event) -> dict[str, object] | None:
        """The object ``event`` is written as (None: not written): for other transports of the
        same stream (the server's Server-Sent Events)."""
        return self._line(event)

    def _line(self, event: Event) -> dict[str, object] | None:
        body: dict[str, object]
        if isinstance(event, RunStarted):
            self._run_id, self._trace_id = event.run_id, event.trace_id
            self._conversation_id = event.conversation_id or event.run_id
            body = {
                "type": "run_started",
                "turn": event.turn,
                "prompt": event.prompt,
                "agents": list(event.agents),
                "synthesizer": event.roles.get("synthesizer"),
                "shape": event.shape,
                "stages": [{"id": i, "kind": k} for i, k in event.stages],
                "roles": dict(event.roles),
            }
        elif isinstance(event, StageStarted):
            body = {
                "type": "stage_started",
                "stage": event.stage,
                "kind": event.kind,
                "calls": [
                    {"call_id": c.call_id, "agent": c.name, "role": c.role, "model": c.agent.model}
                    for c in event.calls
                ],
            }
        elif isinstance(event, StageFinished) and event.verdict is not None:
            body = {"type": "stage_finished", "stage": event.stage, "kind": event.kind}
            body["key"] = event.key
            body["verdict"] = event.verdict.to_dict()
            body["summary"] = event.verdict.summary().to_dict()
        elif isinstance(event, CallStarted):
            kind = "synthesis_started" if event.call.role == "synthesizer" else "agent_started"
            body = {"type": kind, **_call_fields(event.call), "model": event.call.agent.model}
        elif isinstance(event, CallRetrying):
            body = {
                "type": "retry",
                **_call_fields(event.call),
                "attempt": event.attempt + 1,
                "max_attempts": event.max_attempts,
                "wait_s": round(event.wait_s, 3),
                "reason": event.reason,
                "message": event.message,
            }
        elif isinstance(event, CallFallback):
            body = {
                "type": "fallback",
                **_call_fields(event.call),
                "from_model": event.from_model,
                "model": event.to_model,
                "reason": event.reason,
                "message": event.message,
            }
        elif isinstance(event, CallDelta) and self._deltas:
            body = {"type": "delta", **_call_fields(event.call), "text": event.text}
        elif isinstance(event, CallFinished):
            kind = "synthesis_finished" if event.call.role == "synthesizer" else "agent_finished"
            body = {"type": kind, **_call_fields(event.call)}
            body["result"] = call_document(event.result)
        elif isinstance(event, RunFinished):
            body = {"type": "run_finished", "document": report_document(event.report)}
        else:
            return None
        stamp = {
            "schema_version": SCHEMA_VERSION,
            "run_id": self._run_id,
            "trace_id": self._trace_id,
            "conversation_id": self._conversation_id,
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        return {**stamp, **body}


def _call_fields(call: Call) -> dict[str, object]:
    return {"agent": call.name, "stage": call.stage, "call_id": call.call_id, "role": call.role}


def plan_document(
    prompt: str, calls: Sequence[PlannedCall], max_cost: float | None
) -> dict[str, object]:
    """``--dry-run --json``: the calls a run would make; nothing was sent."""
    from fanout.cost import plan_fits  # only a dry run needs the budget's arithmetic

    costs = [c.worst_case_usd for c in calls]
    return {
        "schema_version": SCHEMA_VERSION,
        "dry_run": True,
        "prompt": prompt,
        "calls": [
            {
                "name": c.name or c.agent.name,
                "model": c.agent.model,
                "stage": c.stage,
                "role": c.role,
                "base_url": c.agent.endpoint.display_url,
                "rpm": c.agent.limits.rpm,
                "tpm": c.agent.limits.tpm,
                "concurrency": c.agent.limits.concurrency,
                "prompt_tokens_estimate": c.prompt_tokens,
                "max_tokens": c.max_tokens,
                "params": c.agent.request_params(),
                "fallbacks": [f.model for f in c.agent.fallbacks],
                "worst_case_usd": _usd(c.worst_case_usd),
            }
            for c in calls
        ],
        "worst_case_usd": None if None in costs else _usd(sum(c or 0.0 for c in costs)),
        "max_cost_usd": max_cost,
        # Whether even the worst case fits --max-cost (null without one).
        "fits": plan_fits(calls, max_cost),
    }


# -- back from JSON: the run history stores documents and settings --------------------------


def result_from_entry(entry: Mapping[str, object]) -> CallResult:
    """A call's entry of a result document, back as a ``CallResult``."""
    error = entry.get("error")
    known = {
        "name", "model", "status", "answer", "error", "attempts", "latency_s", "ttft_s", "usage",
        "usage_estimated", "cost_usd", "call_id", "stage", "role", "finish_reason", "truncated",
        "response_model", "timing", "params", "cached",
    }  # fmt: skip
    usage = _usage_of(entry)
    return CallResult(
        name=str(entry["name"]),
        model=str(entry.get("model", "")),
        status=_status(entry.get("status", "cancelled")),
        answer=_text_or_none(entry.get("answer")),
        error=AgentError(**error) if isinstance(error, dict) else None,
        attempts=_int_or_zero(entry.get("attempts")),
        latency_s=_float_or_none(entry.get("latency_s")),
        ttft_s=_float_or_none(entry.get("ttft_s")),
        usage=Usage(*(_count(usage.get(k)) for k in _USAGE_KEYS)),
        usage_estimated=bool(entry.get("usage_estimated", False)),
        cost_usd=_float_or_none(entry.get("cost_usd")),
        call_id=str(entry.get("call_id") or ""),
        stage=str(entry.get("stage") or "panel"),
        role=str(entry.get("role") or "persona"),
        finish_reason=_text_or_none(entry.get("finish_reason")),
        truncated=bool(entry.get("truncated", False)),
        details={k: v for k, v in entry.items() if k not in known},
        timing=timing_from_document(entry.get("timing")),
        response_model=_text_or_none(entry.get("response_model")),
        params=_mapping(entry.get("params")),
        cached=entry.get("cached") is True,
    )


def _headers(value: object) -> dict[str, str]:
    """Recorded ``extra_headers``: ``[[name, value], ...]`` (or a mapping, if written so)."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    pairs = value if isinstance(value, list) else []
    return {str(p[0]): str(p[1]) for p in pairs if isinstance(p, list) and len(p) == 2}


def _mapping(value: object) -> dict[str, JsonValue]:
    """A JSON object read back (from a document or the history), or nothing."""
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


_USAGE_KEYS = ("input_tokens", "output_tokens", "total_tokens", "reasoning_tokens")


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


_CALL_STATUSES: tuple[CallStatus, ...] = ("ok", "error", "cancelled", "skipped")


def _status(value: object) -> CallStatus:
    """A stored call status; one that is none of them reads as ``cancelled`` (the default)."""
    return next((s for s in _CALL_STATUSES if s == value), "cancelled")


def _int_or_zero(value: object) -> int:
    return value if isinstance(value, int) else 0


def _float_or_none(value: object) -> float | None:
    """A stored number (an int or a float, never a bool), or None."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


# What each field of a stored document must be, for a run to be read back from it: (the
# types it may have, whether it must be there). A number is an int or a float, never a bool.
_TEXT, _NUMBER, _NONE = (str,), (int, float), (type(None),)
_TRACE_ID = re.compile(r"(?!0{32})[0-9a-f]{32}")  # as a run carried on sends it again
_DOCUMENT_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "run_id": (_TEXT, True),
    "prompt": (_TEXT, True),
    "started_at": (_TEXT, True),
    "stages": ((list,), True),
    "status": (_TEXT + _NONE, False),
    "finished_at": (_TEXT + _NONE, False),
    "duration_s": (_NUMBER + _NONE, False),
    "shape": (_TEXT + _NONE, False),
    "trace_id": (_TEXT + _NONE, False),
    "span_id": (_TEXT + _NONE, False),
    "parent_span_id": (_TEXT + _NONE, False),
}
_STAGE_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "id": (_TEXT, True),
    "kind": (_TEXT, True),
    "calls": ((list,), True),
    "key": (_TEXT + _NONE, False),
    "verdict": ((dict, *_NONE), False),
}
_CALL_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": (_TEXT, True),
    "model": (_TEXT + _NONE, False),
    "status": (_TEXT, False),
    "answer": (_TEXT + _NONE, False),
    "error": ((dict, *_NONE), False),
    "attempts": ((int, *_NONE), False),
    "latency_s": (_NUMBER + _NONE, False),
    "ttft_s": (_NUMBER + _NONE, False),
    "usage": ((dict, *_NONE), False),
    "usage_estimated": ((bool, *_NONE), False),
    "cost_usd": (_NUMBER + _NONE, False),
    "call_id": (_TEXT + _NONE, False),
    "stage": (_TEXT + _NONE, False),
    "role": (_TEXT + _NONE, False),
    "finish_reason": (_TEXT + _NONE, False),
    "truncated": ((bool, *_NONE), False),
    "response_model": (_TEXT + _NONE, False),
    "params": ((dict, *_NONE), False),
    "timing": ((dict, *_NONE), False),
}
_ERROR_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "type": (_TEXT, True),
    "message": (_TEXT, True),
    "status_code": ((int, *_NONE), False),
    "retryable": ((bool,), False),
}


def check_document(document: Mapping[str, object]) -> None:
    """``ValueError`` naming the first field of a stored document (version 2) that is missing
    or of the wrong type (``stages[0].calls[1].answer is a list``): a run that cannot be read
    back as it was written is damaged, said once, not a traceback in whatever reads it."""
    _check_fields(document, _DOCUMENT_FIELDS, "the document")
    trace_id = document.get("trace_id")
    if isinstance(trace_id, str) and not _TRACE_ID.fullmatch(trace_id):  # else it is None
        raise ValueError("the document's trace_id is not a trace id")
    for i, given in enumerate(_list(document["stages"])):  # a list, as checked
        stage = _check_fields(given, _STAGE_FIELDS, f"stages[{i}]")
        for j, entry in enumerate(_list(stage["calls"])):
            where = f"stages[{i}].calls[{j}]"
            call = _check_fields(entry, _CALL_FIELDS, where)
            error = call.get("error")
            if isinstance(error, dict):
                _check_fields(error, _ERROR_FIELDS, f"{where}.error")
                if set(error) - set(_ERROR_FIELDS):
                    raise ValueError(f"{where}.error has fields an error has not")


def _check_fields(
    value: object, fields: Mapping[str, tuple[tuple[type, ...], bool]], where: str
) -> dict[str, object]:
    """``value`` as the object it is, once each of ``fields`` is there if required and of its
    types."""
    if not isinstance(value, dict):
        raise ValueError(f"{where} is not an object")
    for name, (kinds, required) in fields.items():
        if name not in value:
            if required:
                raise ValueError(f"{where}.{name} is missing")
            continue
        field = value[name]
        if not isinstance(field, kinds) or (isinstance(field, bool) and bool not in kinds):
            raise ValueError(f"{where}.{name} is {type(field).__name__}")
    return value


def report_from_document(document: dict[str, object]) -> RunReport:
    """A stored result document (either version), back as a ``RunReport``."""
    from fanout.shapes import verdict_from_dict

    document = upgrade_document(document)
    status = document.get("status")
    stages = [
        StageResult(
            str(s.get("id")),
            str(s.get("kind")),
            [result_from_entry(c) for c in json_objects(s.get("calls"))],
            verdict_from_dict(s.get("verdict"), _text_or_none(s.get("key")), str(s.get("kind"))),
            _text_or_none(s.get("key")),
            s.get("answers") is True,
        )
        for s in json_objects(document["stages"])
    ]
    return RunReport(
        run_id=str(document["run_id"]),
        prompt=str(document["prompt"]),
        started_at=str(document["started_at"]),
        finished_at=_text_or_none(document.get("finished_at")) or "",
        duration_s=_float_or_none(document.get("duration_s")) or 0.0,
        stages=stages,
        trace_id=_text_or_none(document.get("trace_id")),
        shape=str(document.get("shape") or "panel"),
        # How it ended when that is more than its calls say (a run stopped by hand).
        recorded_status=status if status in ("running", "interrupted", "cancelled") else None,
        span_id=_text_or_none(document.get("span_id")),
        parent_span_id=_text_or_none(document.get("parent_span_id")),
        attachments=tuple(_attachment_of(a) for a in _list(document.get("attachments"))),
        conversation_id=_text_or_none(document.get("conversation_id")),
        turn=_turn(document.get("turn")),
    )


def _attachment_of(given: object) -> Attachment:
    """A document's attachment entry back (its reference: the content is not in it)."""
    entry = given if isinstance(given, dict) else {}
    kind = entry.get("kind")
    size = entry.get("bytes")
    return Attachment(
        str(entry.get("name")),
        kind if kind in ("image", "pdf") else "text",
        str(entry.get("media_type") or ""),
        str(entry.get("sha256") or ""),
        size if isinstance(size, int) else 0,
    )


def _turn(value: object) -> int:
    """A stored turn number; 1 for a run recorded before conversations (or a bad value)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def _usd(amount: float | None) -> float | None:
    return None if amount is None else round(amount, 8)


def dumps(document: Mapping[str, object]) -> str:
    """Pretty, UTF-8-friendly, strict JSON text ending in a newline."""
    try:
        return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError:
        return json.dumps(_finite(document), indent=2, ensure_ascii=False) + "\n"


def json_line(value: Mapping[str, object]) -> str:
    """One strict JSON line (no NaN or Infinity, which jq and most parsers refuse)."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), ensure_ascii=False)


def _finite(value: object) -> object:
    """``value`` with every non-finite number replaced by null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
