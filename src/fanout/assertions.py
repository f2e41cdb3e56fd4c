"""The deterministic assertions of an eval, checked against one answer: text, JSON, length,
cost and latency. (A rubric is graded by a persona: ``eval.read_grade``.)"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from fanout.evalfile import Assertion


@dataclass(frozen=True)
class Checked:
    """One assertion's outcome for one answer."""

    assertion: str  # as written: ``icontains 'paris'``
    passed: bool
    reason: str = ""
    score: float | None = None  # a rubric's
    error: bool = False  # the grader could not say


def check(
    assertion: Assertion, answer: str, *, cost_usd: float | None, latency_s: float | None
) -> Checked:
    """Whether ``answer`` meets ``assertion`` (``not-`` inverts it), and why not."""
    held, reason = _holds(assertion, answer, cost_usd, latency_s)
    if assertion.negate:
        held, reason = not held, ("" if not held else f"it should not: {reason or 'it does'}")
    return Checked(assertion.describe(), held, "" if held else reason)


def _holds(
    assertion: Assertion, answer: str, cost_usd: float | None, latency_s: float | None
) -> tuple[bool, str]:
    kind, text, texts = assertion.kind, assertion.text or "", assertion.texts
    stripped = answer.strip()
    if kind == "equals":
        return stripped == text.strip(), f"the answer is not {text!r}"
    if kind in ("contains", "icontains"):
        fold = kind == "icontains"
        return _has(answer, text, fold), f"no {text!r} in the answer"
    if kind == "starts-with":
        return stripped.startswith(text), f"the answer does not start with {text!r}"
    if kind == "regex":
        return re.search(text, answer) is not None, f"nothing matches /{text}/"
    if kind in ("contains-any", "icontains-any"):
        fold = kind.startswith("i")
        return any(_has(answer, t, fold) for t in texts), f"none of {list(texts)!r}"
    if kind in ("contains-all", "icontains-all"):
        fold = kind.startswith("i")
        missing = [t for t in texts if not _has(answer, t, fold)]
        return not missing, f"missing {missing!r}"
    if kind in ("is-json", "json-schema"):
        return _json(assertion, stripped)
    if kind == "max-length":
        limit = int(assertion.number or 0)
        return len(answer) <= limit, f"{len(answer)} characters, more than {limit}"
    if kind == "cost":
        return _ceiling(cost_usd, assertion.number, "cost", "$", "unknown (no price)")
    if kind == "latency":
        return _ceiling(latency_s, assertion.number, "latency", "", "unknown", unit=" s")
    return False, f"{kind} is not checked here"


def _has(answer: str, text: str, fold: bool) -> bool:
    return text.casefold() in answer.casefold() if fold else text in answer


def _json(assertion: Assertion, text: str) -> tuple[bool, str]:
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL | re.IGNORECASE)
    try:
        value = json.loads(fenced.group(1) if fenced else text)
    except (ValueError, RecursionError):
        return False, "the answer is not JSON"
    if assertion.schema is None:
        return True, ""
    from jsonschema import validators

    validator = validators.validator_for(assertion.schema)(assertion.schema)
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
    if not errors:
        return True, ""
    where = "/".join(str(p) for p in errors[0].path) or "the top"
    return False, f"at {where}: {errors[0].message[:200]}"


def _ceiling(
    value: float | None, limit: float | None, what: str, prefix: str, unknown: str,
    unit: str = "",
) -> tuple[bool, str]:  # fmt: skip
    if value is None:
        return False, f"{what} {unknown}"
    bound = limit or 0.0
    return value <= bound, f"{what} {prefix}{value:g}{unit}, over {prefix}{bound:g}{unit}"
