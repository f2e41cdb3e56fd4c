"""The JSON result document and the JSONL event stream: versioned, stable, extended (never
broken) by later features."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from fanout.events import (
    AgentDelta,
    AgentFinished,
    AgentRetrying,
    AgentStarted,
    Event,
    RunFinished,
    RunStarted,
)
from fanout.models import (
    Agent,
    AgentError,
    AgentResult,
    Endpoint,
    Limits,
    RunReport,
    SynthesisResult,
    Usage,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from fanout.config import Panel
    from fanout.cost import PlannedCall

SCHEMA_VERSION = 1


def report_document(report: RunReport) -> dict[str, Any]:
    """The ``--json`` document of a run."""
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": report.run_id,
        "prompt": report.prompt,
        "status": report.status,
        "started_at": report.started_at,
        "finished_at": report.finished_at,
        "duration_s": report.duration_s,
        "agents": [agent_document(r) for r in report.agents],
        "output": report.output,
        "synthesis": synthesis_document(report.synthesis) if report.synthesis else None,
        "usage": asdict(report.usage),
        "cost_usd": _usd(report.cost_usd),
    }


def agent_document(result: AgentResult) -> dict[str, Any]:
    """One persona's entry in ``agents``."""
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
    }


def synthesis_document(result: SynthesisResult) -> dict[str, Any]:
    """The ``synthesis`` entry: a persona entry plus what it was built from."""
    return {
        **agent_document(result),
        "partial": result.partial,
        "sources": result.sources,
        "missing": result.missing,
    }


def panel_document(panel: Panel) -> dict[str, Any]:
    """``fanout agents --json``: where the panel came from and who is on it."""
    return {
        "source": panel.source,
        "agents": [_agent_entry(a) for a in panel.agents],
        "synthesizer": _agent_entry(panel.synthesizer),
    }


def _agent_entry(agent: Agent) -> dict[str, Any]:
    return {
        "name": agent.name,
        "model": agent.model,
        "base_url": agent.endpoint.display_url,
        "host": agent.endpoint.host,
        "description": agent.description,
    }


class JsonlWriter:
    """``--jsonl``: one JSON object per line for every event, flushed as it happens.

    Every line has ``schema_version``, ``run_id``, ``ts`` and ``type``; per-persona events add
    ``agent``. ``agent_finished`` carries the persona's entry of the result document and
    ``run_finished`` the whole document, so a consumer can stop reading there.
    """

    wants_deltas = True  # time to first token, and the deltas themselves with --jsonl-deltas

    def __init__(self, out: TextIO, *, deltas: bool = False) -> None:
        self._out = out
        self._deltas = deltas
        self._run_id = ""

    def handle(self, event: Event) -> None:
        line = self._line(event)
        if line is not None:
            self._out.write(json.dumps(line, ensure_ascii=False) + "\n")
            self._out.flush()

    def _line(self, event: Event) -> dict[str, Any] | None:
        if isinstance(event, RunStarted):
            self._run_id = event.run_id
            body: dict[str, Any] = {
                "type": "run_started",
                "prompt": event.prompt,
                "agents": [a.name for a in event.agents],
                "synthesizer": event.synthesizer.name if event.synthesizer else None,
            }
        elif isinstance(event, AgentStarted):
            kind = "synthesis_started" if event.synthesis else "agent_started"
            body = {"type": kind, "agent": event.agent.name, "model": event.agent.model}
        elif isinstance(event, AgentRetrying):
            body = {
                "type": "retry",
                "agent": event.agent.name,
                "attempt": event.attempt + 1,
                "max_attempts": event.max_attempts,
                "wait_s": round(event.wait_s, 3),
                "reason": event.reason,
                "message": event.message,
            }
        elif isinstance(event, AgentDelta) and self._deltas:
            body = {"type": "delta", "agent": event.agent.name, "text": event.text}
        elif isinstance(event, AgentFinished):
            if event.synthesis and isinstance(event.result, SynthesisResult):
                body = {"type": "synthesis_finished", "agent": event.result.name}
                body["result"] = synthesis_document(event.result)
            else:
                body = {"type": "agent_finished", "agent": event.result.name}
                body["result"] = agent_document(event.result)
        elif isinstance(event, RunFinished):
            body = {"type": "run_finished", "document": report_document(event.report)}
        else:
            return None
        stamp = {
            "schema_version": SCHEMA_VERSION,
            "run_id": self._run_id,
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        return {**stamp, **body}


def plan_document(
    prompt: str, calls: Sequence[PlannedCall], max_cost: float | None
) -> dict[str, Any]:
    """``--dry-run --json``: the calls a run would make; nothing was sent."""
    costs = [c.worst_case_usd for c in calls]
    return {
        "schema_version": SCHEMA_VERSION,
        "dry_run": True,
        "prompt": prompt,
        "calls": [
            {
                "name": c.agent.name,
                "model": c.agent.model,
                "base_url": c.agent.endpoint.display_url,
                "rpm": c.agent.limits.rpm,
                "tpm": c.agent.limits.tpm,
                "concurrency": c.agent.limits.concurrency,
                "prompt_tokens_estimate": c.prompt_tokens,
                "max_tokens": c.max_tokens,
                "worst_case_usd": _usd(c.worst_case_usd),
            }
            for c in calls
        ],
        "worst_case_usd": None if None in costs else _usd(sum(c or 0.0 for c in costs)),
        "max_cost_usd": max_cost,
    }


# -- back from JSON: the run history stores documents and settings --------------------------


def agent_settings(agent: Agent) -> dict[str, Any]:
    """A persona as recorded in the history: everything needed to ask it again, no secret."""
    return {
        "name": agent.name,
        "description": agent.description,
        "instructions": agent.instructions,
        "model": agent.model,
        "temperature": agent.temperature,
        "top_p": agent.top_p,
        "max_tokens": agent.max_tokens,
        "stop": list(agent.stop) if agent.stop else None,
        "timeout": agent.timeout,
        "base_url": agent.endpoint.base_url,
        "api_key_env": agent.endpoint.api_key_env,
        "rpm": agent.limits.rpm,
        "tpm": agent.limits.tpm,
        "concurrency": agent.limits.concurrency,
    }


def agent_from_settings(data: dict[str, Any]) -> Agent:
    """A persona as the history recorded it, ready to be asked again."""
    return Agent(
        name=data["name"],
        instructions=data.get("instructions") or "",
        description=data.get("description") or "",
        model=data["model"],
        temperature=data.get("temperature"),
        top_p=data.get("top_p"),
        max_tokens=data.get("max_tokens"),
        stop=tuple(data["stop"]) if data.get("stop") else None,
        timeout=data.get("timeout"),
        endpoint=Endpoint(data["base_url"], data["api_key_env"]),
        limits=Limits(data.get("rpm"), data.get("tpm"), data.get("concurrency")),
    )


def result_from_entry(entry: dict[str, Any]) -> AgentResult:
    """An ``agents`` entry of a result document, back as an ``AgentResult``."""
    return AgentResult(**_result_fields(entry))


def synthesis_from_entry(entry: dict[str, Any]) -> SynthesisResult:
    return SynthesisResult(
        **_result_fields(entry),
        partial=entry.get("partial", False),
        sources=list(entry.get("sources", [])),
        missing=list(entry.get("missing", [])),
    )


def report_from_document(document: dict[str, Any]) -> RunReport:
    """A stored result document, back as a ``RunReport`` (to render or to carry on)."""
    synthesis = document.get("synthesis")
    status = document.get("status")
    return RunReport(
        run_id=document["run_id"],
        prompt=document["prompt"],
        started_at=document["started_at"],
        finished_at=document.get("finished_at") or "",
        duration_s=document.get("duration_s") or 0.0,
        agents=[result_from_entry(e) for e in document["agents"]],
        synthesis=synthesis_from_entry(synthesis) if synthesis else None,
        recorded_status=status if status in ("running", "interrupted") else None,
    )


def _result_fields(entry: dict[str, Any]) -> dict[str, Any]:
    error = entry.get("error")
    return {
        "name": entry["name"],
        "model": entry["model"],
        "status": entry["status"],
        "answer": entry.get("answer"),
        "error": AgentError(**error) if error else None,
        "attempts": entry.get("attempts", 0),
        "latency_s": entry.get("latency_s"),
        "ttft_s": entry.get("ttft_s"),
        "usage": Usage(**entry.get("usage", {})),
        "usage_estimated": entry.get("usage_estimated", False),
        "cost_usd": entry.get("cost_usd"),
    }


def _usd(amount: float | None) -> float | None:
    return None if amount is None else round(amount, 8)


def dumps(document: dict[str, Any]) -> str:
    """Pretty, UTF-8-friendly JSON text ending in a newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
