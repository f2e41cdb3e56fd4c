"""The JSON result document: versioned, stable, extended (never broken) by later features."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from fanout.models import Agent, AgentResult, RunReport, SynthesisResult

if TYPE_CHECKING:
    from fanout.config import Panel

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
        "usage": asdict(result.usage),
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
        "base_url": agent.endpoint.base_url,
        "host": agent.endpoint.host,
        "description": agent.description,
    }


def dumps(document: dict[str, Any]) -> str:
    """Pretty, UTF-8-friendly JSON text ending in a newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
