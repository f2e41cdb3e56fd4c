"""Scripted personas for the eval tests: one always right, one always wrong, one right half
the time, and a grader/judge that reads what it is shown (all on the loopback server)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from tests.fakeserver import FakeOpenAI, Reply

CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid",
    "Peru": "Lima", "Egypt": "Cairo", "Kenya": "Nairobi", "Chile": "Santiago",
}  # fmt: skip
HALF_KNOWS = {"France", "Italy", "Peru", "Kenya"}
GRADER_MODEL = "m-grader"
PERSONAS = ("right", "wrong", "half")


def _last_user(body: dict[str, Any]) -> str:
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    return str(users[-1]["content"]) if users else ""


def _fenced(text: str, title: str) -> str:
    found = re.search(title + r":\n(`{3,})\n(.*?)\n\1", text, re.DOTALL)
    return found.group(2) if found else ""


def persona_answer(model: str, question: str) -> str:
    found = re.search(r"capital of (\w+)", question)
    country = found.group(1) if found else ""
    right = CAPITALS.get(country, "?")
    if model == "m-right":
        return right
    if model == "m-half":
        return right if country in HALF_KNOWS else "Probably Atlantis."
    return "I am not sure."


def grader_answer(question: str) -> str:
    correct = set(CAPITALS.values())
    if "Rubric:" in question:
        answer = _fenced(question, "Answer").strip()
        good = answer in correct
        return json.dumps({"reason": "checked", "pass": good, "score": 1.0 if good else 0.2})
    a, b = _fenced(question, "Candidate A").strip(), _fenced(question, "Candidate B").strip()
    if (a in correct) == (b in correct):
        return json.dumps({"reasoning": "same", "winner": "tie"})
    return json.dumps({"reasoning": "one is right", "winner": "A" if a in correct else "B"})


def respond(body: dict[str, Any]) -> str:
    model, question = body["model"], _last_user(body)
    if model == GRADER_MODEL:
        return grader_answer(question)
    return persona_answer(model, question)


def script_personas(server: FakeOpenAI) -> None:
    server.default = Reply(respond=respond)


def write_agents(folder: Path, server: FakeOpenAI, **extra: Any) -> Path:
    document: dict[str, Any] = {
        "defaults": {"base_url": server.base_url},
        "agents": [{"name": n, "model": f"m-{n}"} for n in PERSONAS],
        "judge": {"model": GRADER_MODEL},
        "pricing": {
            m: {"input": 1.0, "output": 2.0} for m in (*(f"m-{n}" for n in PERSONAS), GRADER_MODEL)
        },
        **extra,
    }
    path = folder / "agents.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def write_eval(folder: Path, *, rubric: bool = False, name: str = "capitals.yaml") -> Path:
    tests = []
    for country, capital in CAPITALS.items():
        checks: list[dict[str, Any]] = [{"type": "icontains"}]
        if rubric:
            checks.append({"type": "rubric", "value": "Names the capital and nothing else"})
        tests.append({"vars": {"country": country}, "expected": capital, "assert": checks})
    document = {"prompt": "What is the capital of {{country}}? Answer in one word.", "tests": tests}
    path = folder / name
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path
