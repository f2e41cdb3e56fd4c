"""What an eval found, as one typed document: each case x persona cell (pass/fail, score,
every assertion's outcome), the scorecard per persona (pass rate with its 95 % Wilson
interval, mean rubric score, tokens, cost, p50/p95 latency, failures, the best per column,
who is within the noise of the best) and, with ``--pairwise``, the Bradley-Terry leaderboard.

The document is what ``--json`` prints and what ``fanout eval compare`` reads; the CSV and
the HTML report are written from it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import TypedDict

from fanout.assertions import Checked, check
from fanout.eval import (
    EvalPlan,
    EvalResults,
    grade_id,
    pair_id,
    pair_outcome,
    read_grade,
    same_answers,
)
from fanout.evalfile import Case
from fanout.models import CallResult
from fanout.stats import Comparison, mcnemar, percentile, rate, wilson

DOCUMENT_FORMAT = 1
NOISE = (
    "within the noise of the best: an exact McNemar test on the cases both answered (paired) "
    "finds no difference at the 95 % level (p >= 0.05)"
)
# A column of the scorecard, and whether more is better.
COLUMNS = {"pass_rate": True, "mean_score": True, "tokens": False, "cost_usd": False,
           "p50_s": False, "p95_s": False, "failures": False}  # fmt: skip


class AssertionOutcome(TypedDict):
    assertion: str
    passed: bool
    reason: str
    score: float | None


class Cell(TypedDict):
    persona: str
    model: str
    status: str
    passed: bool
    score: float | None
    answer: str | None
    error: str | None
    tokens: int
    cost_usd: float | None
    latency_s: float | None
    assertions: list[AssertionOutcome]


class CaseOutcome(TypedDict):
    id: str
    description: str | None
    prompt: str
    vars: dict[str, str]
    expected: str | None
    cells: list[Cell]


class ScoreRow(TypedDict):
    persona: str
    model: str
    passed: int
    total: int
    pass_rate: float
    ci_low: float
    ci_high: float
    mean_score: float | None
    tokens: int
    cost_usd: float | None
    p50_s: float | None
    p95_s: float | None
    failures: int
    best: list[str]
    within_noise: bool
    p_vs_best: float | None


class LeaderRow(TypedDict):
    persona: str
    rating: float
    ci_low: float
    ci_high: float
    wins: float
    games: int


class PairTally(TypedDict):
    compared: int
    ties: int
    unjudged: int
    judge_calls: int


class Totals(TypedDict):
    cost_usd: float | None
    answers_usd: float | None
    grading_usd: float | None
    judging_usd: float | None
    tokens: int


class EvalDocument(TypedDict, total=False):
    fanout_eval: int
    id: str
    file: str
    description: str | None
    started_at: str
    finished_at: str
    interrupted: bool
    personas: list[str]
    grader: str | None
    scorecard: list[ScoreRow]
    leaderboard: list[LeaderRow]
    pairs: PairTally
    noise: str
    totals: Totals
    cases: list[CaseOutcome]


def cell_of(case: Case, persona: str, model: str, results: EvalResults) -> Cell:
    """One persona on one case: every assertion checked (a rubric read from its grade)."""
    answer = results.get(case.id, f"panel/{persona}")
    if answer is None or answer.status != "ok":
        why = "not answered" if answer is None else _failure(answer)
        return _cell(persona, model, answer, False, None, [], why)
    outcomes: list[Checked] = []
    for index, assertion in enumerate(case.assertions):
        if assertion.graded:
            grade = read_grade(results.get(case.id, grade_id(persona, index)), assertion.threshold)
            outcomes.append(Checked(assertion.describe(), grade.passed, grade.reason, grade.score,
                                    grade.error))  # fmt: skip
        else:
            text = answer.answer or ""
            outcomes.append(
                check(assertion, text, cost_usd=answer.cost_usd, latency_s=answer.latency_s)
            )
    scores = [o.score for o in outcomes if o.score is not None]
    score = round(sum(scores) / len(scores), 4) if scores else None
    return _cell(persona, model, answer, all(o.passed for o in outcomes), score, outcomes, None)


def _cell(
    persona: str,
    model: str,
    result: CallResult | None,
    passed: bool,
    score: float | None,
    outcomes: Sequence[Checked],
    error: str | None,
) -> Cell:
    return {
        "persona": persona,
        "model": result.model if result is not None else model,
        "status": result.status if result is not None else "missing",
        "passed": passed,
        "score": score,
        "answer": result.answer if result is not None else None,
        "error": error,
        "tokens": result.usage.total_tokens if result is not None else 0,
        "cost_usd": result.cost_usd if result is not None else None,
        "latency_s": result.latency_s if result is not None else None,
        "assertions": [
            {"assertion": o.assertion, "passed": o.passed, "reason": o.reason, "score": o.score}
            for o in outcomes
        ],
    }


def _failure(result: CallResult) -> str:
    return result.error.message if result.error is not None else result.status


def case_outcomes(plan: EvalPlan, results: EvalResults) -> list[CaseOutcome]:
    """Every case with its cells, in the file's order."""
    return [
        {
            "id": case.id,
            "description": case.description,
            "prompt": case.prompt,
            "vars": dict(case.vars),
            "expected": case.expected,
            "cells": [cell_of(case, p.name, p.model, results) for p in plan.personas],
        }
        for case in plan.spec.cases
    ]


def scorecard(personas: Sequence[str], cases: Sequence[CaseOutcome]) -> list[ScoreRow]:
    """A row per persona, best first, the best of each column marked, and each said to be
    within the noise of the best or not."""
    rows = [_score_row(name, [c for case in cases for c in case["cells"] if c["persona"] == name])
            for name in personas]  # fmt: skip
    rows.sort(key=_rank)
    if rows:
        best = rows[0]["persona"]
        for row in rows:
            only_row, only_best = _discordant(cases, row["persona"], best)
            p = mcnemar(only_best, only_row)
            row["p_vs_best"] = None if row["persona"] == best else round(p, 4)
            row["within_noise"] = row["persona"] == best or p >= 0.05
    if len(rows) > 1:
        _mark_best(rows)
    return rows


def _mark_best(rows: Sequence[ScoreRow]) -> None:
    """Each column's best value marked on every row that has it (none if all are equal)."""
    for column, more in COLUMNS.items():
        values = [v for v in (_value(row, column) for row in rows) if v is not None]
        if not values or len(set(values)) == 1:
            continue
        top = max(values) if more else min(values)
        for row in rows:
            if _value(row, column) == top:
                row["best"].append(column)


def _value(row: ScoreRow, column: str) -> float | None:
    values: dict[str, float | None] = {
        "pass_rate": row["pass_rate"], "mean_score": row["mean_score"],
        "tokens": float(row["tokens"]), "cost_usd": row["cost_usd"], "p50_s": row["p50_s"],
        "p95_s": row["p95_s"], "failures": float(row["failures"]),
    }  # fmt: skip
    return values[column]


def _rank(row: ScoreRow) -> tuple[float, float, float, str]:
    return (-row["pass_rate"], -(row["mean_score"] or 0.0), row["cost_usd"] or 0.0, row["persona"])


def _score_row(name: str, cells: Sequence[Cell]) -> ScoreRow:
    total = len(cells)
    passed = sum(c["passed"] for c in cells)
    low, high = wilson(passed, total)
    scores = [c["score"] for c in cells if c["score"] is not None]
    latencies = [
        c["latency_s"] for c in cells if c["status"] == "ok" and c["latency_s"] is not None
    ]
    costs = [c["cost_usd"] for c in cells if c["status"] != "missing"]
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    return {
        "persona": name,
        "model": cells[0]["model"] if cells else "",
        "passed": passed,
        "total": total,
        "pass_rate": round(passed / total, 4) if total else 0.0,
        "ci_low": round(low, 4),
        "ci_high": round(high, 4),
        "mean_score": round(sum(scores) / len(scores), 4) if scores else None,
        "tokens": sum(c["tokens"] for c in cells),
        "cost_usd": None
        if any(c is None for c in costs)
        else round(sum(c or 0.0 for c in costs), 8),
        "p50_s": None if p50 is None else round(p50, 3),
        "p95_s": None if p95 is None else round(p95, 3),
        "failures": sum(c["status"] not in ("ok",) for c in cells),
        "best": [],
        "within_noise": True,
        "p_vs_best": None,
    }


def _discordant(cases: Sequence[CaseOutcome], a: str, b: str) -> tuple[int, int]:
    """(cases only ``a`` passed, cases only ``b`` passed), over the cases both answered."""
    only_a = only_b = 0
    for case in cases:
        cells = {c["persona"]: c for c in case["cells"]}
        x, y = cells.get(a), cells.get(b)
        if x is None or y is None or x["status"] != "ok" or y["status"] != "ok":
            continue
        only_a += x["passed"] and not y["passed"]
        only_b += y["passed"] and not x["passed"]
    return only_a, only_b


def comparisons(plan: EvalPlan, results: EvalResults) -> tuple[list[Comparison], PairTally]:
    """Every judged pair of every case as a comparison. An answer against none wins without
    a judge; a pair whose judge gave no usable pick in either order is left out."""
    tally: PairTally = {"compared": 0, "ties": 0, "unjudged": 0, "judge_calls": 0}
    found: list[Comparison] = []
    if plan.pairwise is None:
        return found, tally
    for case in plan.spec.cases:
        for first, second in plan.pairwise.pairs(case.id, plan.names):
            a, b = results.answered(case.id, first), results.answered(case.id, second)
            if a is None and b is None:
                continue
            if a is None or b is None:
                found.append(Comparison(case.id, first, second, 0.0 if a is None else 1.0))
                tally["compared"] += 1
                continue
            calls = [results.get(case.id, pair_id(first, second, order)) for order in (1, 2)]
            tally["judge_calls"] += sum(c is not None for c in calls)
            score = 0.5 if same_answers(a, b) else pair_outcome(calls, first, second)
            if score is None:
                tally["unjudged"] += 1
                continue
            tally["compared"] += 1
            tally["ties"] += score == 0.5
            found.append(Comparison(case.id, first, second, score))
    return found, tally


def leaderboard(plan: EvalPlan, results: EvalResults) -> tuple[list[LeaderRow], PairTally]:
    found, tally = comparisons(plan, results)
    rows: list[LeaderRow] = [
        {"persona": r.persona, "rating": r.rating, "ci_low": r.ci_low, "ci_high": r.ci_high,
         "wins": r.wins, "games": r.games}
        for r in rate(plan.names, found)
    ]  # fmt: skip
    return rows, tally


def totals(results: EvalResults) -> Totals:
    """What the eval cost, split by who was asked: the personas, the grader, the judge."""
    spent: dict[str, list[float | None]] = {"panel": [], "grade": [], "pair": []}
    tokens = 0
    for result in results.calls.values():
        spent.setdefault(result.stage, []).append(result.cost_usd)
        tokens += result.usage.total_tokens
    sums = {k: _total(v) for k, v in spent.items()}
    parts = [sums["panel"], sums["grade"], sums["pair"]]
    whole = None if any(p is None for p in parts) else round(sum(p or 0.0 for p in parts), 8)
    return {"cost_usd": whole, "answers_usd": sums["panel"], "grading_usd": sums["grade"],
            "judging_usd": sums["pair"], "tokens": tokens}  # fmt: skip


def _total(costs: Sequence[float | None]) -> float | None:
    if any(c is None for c in costs):
        return None
    return round(sum(c or 0.0 for c in costs), 8)


def build_document(
    plan: EvalPlan, results: EvalResults, *, eval_id: str, started_at: str, finished_at: str,
    interrupted: bool = False,
) -> EvalDocument:  # fmt: skip
    cases = case_outcomes(plan, results)
    document: EvalDocument = {
        "fanout_eval": DOCUMENT_FORMAT,
        "id": eval_id,
        "file": plan.spec.source,
        "description": plan.spec.description,
        "started_at": started_at,
        "finished_at": finished_at,
        "interrupted": interrupted,
        "personas": plan.names,
        "grader": plan.grader.name if plan.grader is not None else None,
        "scorecard": scorecard(plan.names, cases),
        "noise": NOISE,
        "totals": totals(results),
        "cases": cases,
    }
    if plan.pairwise is not None:
        document["leaderboard"], document["pairs"] = leaderboard(plan, results)
    return document


# -- CSV, and the regression check --------------------------------------------------------------

CSV_COLUMNS = ("case", "persona", "model", "status", "pass", "score", "latency_s", "tokens",
               "cost_usd", "failed", "answer", "error", "prompt")  # fmt: skip


def csv_text(document: EvalDocument) -> str:
    """One row per case x persona; ``failed`` lists the assertions that did not hold."""
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for case in document.get("cases", []):
        for cell in case["cells"]:
            failed = "; ".join(
                f"{a['assertion']}: {a['reason']}" if a["reason"] else a["assertion"]
                for a in cell["assertions"]
                if not a["passed"]
            )
            writer.writerow([
                case["id"], cell["persona"], cell["model"], cell["status"],
                "pass" if cell["passed"] else "fail", _blank(cell["score"]),
                _blank(cell["latency_s"]), cell["tokens"], _blank(cell["cost_usd"]), failed,
                cell["answer"] or "", cell["error"] or "", case["prompt"],
            ])  # fmt: skip
    return out.getvalue()


def _blank(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


class Change(TypedDict):
    case: str
    persona: str
    before: str
    after: str


def compare(before: EvalDocument, after: EvalDocument) -> tuple[list[Change], list[Change]]:
    """(cells that got worse, cells that got better) from ``before`` to ``after``, by case id
    and persona; a cell only one of them has is left out."""
    old = _cells(before)
    worse: list[Change] = []
    better: list[Change] = []
    for key, cell in _cells(after).items():
        was = old.get(key)
        if was is None or was["passed"] == cell["passed"]:
            continue
        change: Change = {"case": key[0], "persona": key[1], "before": _verdict(was),
                          "after": _verdict(cell)}  # fmt: skip
        (better if cell["passed"] else worse).append(change)
    return worse, better


def _cells(document: EvalDocument) -> dict[tuple[str, str], Cell]:
    return {(case["id"], cell["persona"]): cell for case in document.get("cases", [])
            for cell in case["cells"]}  # fmt: skip


def _verdict(cell: Cell) -> str:
    if cell["passed"]:
        return "pass"
    failed = [a["assertion"] for a in cell["assertions"] if not a["passed"]]
    if cell["status"] != "ok":
        return f"fail ({cell['status']})"
    return f"fail ({', '.join(failed)})" if failed else "fail"


def document_json(document: Mapping[str, object]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
