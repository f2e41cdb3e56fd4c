"""``fanout runs stats``: a leaderboard across the history. Every decision a run recorded
counts: a judge's pick, a vote's winning side, a council's top of the ranking. Per persona:
games (decisions it took part in), wins (a tie shared), its win rate with a 95 % Wilson
interval, what it cost in those runs, and the cost per win.

A verdict is read by its shape of data, not by the name of its shape: a judge's has the
candidates' ``labels`` and a ``winner``; a vote's has ``groups`` of voters; a council's has an
``aggregate`` ranking. (When verdicts become typed values, these readers are the one place to
change.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, TypedDict

from fanout.errors import FanoutError
from fanout.stats import wilson

if TYPE_CHECKING:
    from fanout.history import History


@dataclass
class Standing:
    """One persona's record across the runs read."""

    persona: str
    games: float = 0
    wins: float = 0
    by_kind: dict[str, list[float]] = field(default_factory=dict)  # kind: [wins, games]
    cost_usd: float = 0.0
    unpriced: bool = False
    runs: set[str] = field(default_factory=set)

    def add(self, kind: str, win: float) -> None:
        self.games += 1
        self.wins += win
        record = self.by_kind.setdefault(kind, [0.0, 0.0])
        record[0] += win
        record[1] += 1


class StatsRow(TypedDict):
    persona: str
    games: int
    wins: float
    win_rate: float
    ci_low: float
    ci_high: float
    judge: str
    vote: str
    council: str
    cost_usd: float | None
    cost_per_win: float | None


Outcome = tuple[str, str, float]  # (kind, persona, win: 1, 0 or a share of a tie)


def persona_of(name: object) -> str:
    """A call's persona: ``translator#2`` is a repeat of ``translator``."""
    return str(name).split("#", 1)[0]


def outcomes(verdict: Mapping[str, object]) -> list[Outcome]:
    """Who took part in one recorded decision and how each did; nothing for a verdict that
    decided nothing."""
    labels = verdict.get("labels")
    if isinstance(labels, dict) and "winner" in verdict:
        return _picked("judge", [persona_of(n) for n in labels.values()], verdict.get("winner"))
    groups = verdict.get("groups")
    if isinstance(groups, list):
        return _voted(groups, verdict.get("winner"))
    ranking = verdict.get("aggregate")
    if isinstance(ranking, list):
        return _ranked(ranking)
    return []


def _picked(kind: str, candidates: Sequence[str], winner: object) -> list[Outcome]:
    if len(candidates) < 2:
        return []
    if winner is None:  # a tie (or no decision): shared
        return [(kind, c, 1 / len(candidates)) for c in candidates]
    chosen = persona_of(winner)
    return [(kind, c, 1.0 if c == chosen else 0.0) for c in candidates]


def _voted(groups: Sequence[object], winner: object) -> list[Outcome]:
    """A voter wins when it was on the winning side; with no winner, nobody does."""
    found: list[Outcome] = []
    for group in groups:
        if not isinstance(group, dict):
            continue
        members = group.get("members")
        won = winner is not None and group.get("answer") == winner
        for member in members if isinstance(members, list) else []:
            found.append(("vote", persona_of(member), 1.0 if won else 0.0))
    return found if len(found) > 1 else []


def _ranked(rows: Sequence[object]) -> list[Outcome]:
    """The top of a council's ranking wins (shared if several share the top Borda score)."""
    ranked = [r for r in rows if isinstance(r, dict) and r.get("votes")]
    if len(ranked) < 2:
        return []
    scores = [r.get("borda") for r in ranked]
    top = max(s for s in scores if isinstance(s, int | float))
    leaders = sum(1 for s in scores if s == top)
    return [("council", persona_of(r.get("name")), (1 / leaders) if r.get("borda") == top else 0.0)
            for r in ranked]  # fmt: skip


def _verdicts(document: Mapping[str, object]) -> Iterator[Mapping[str, object]]:
    stages = document.get("stages")
    for stage in stages if isinstance(stages, list) else []:
        verdict = stage.get("verdict") if isinstance(stage, dict) else None
        if isinstance(verdict, dict):
            yield verdict


def _costs(document: Mapping[str, object]) -> Iterator[tuple[str, float | None]]:
    """What each persona's answers cost in a run (the v1 ``agents`` field: the answers)."""
    agents = document.get("agents")
    for name, entry in agents.items() if isinstance(agents, dict) else []:
        cost = entry.get("cost_usd") if isinstance(entry, dict) else None
        yield persona_of(name), float(cost) if isinstance(cost, int | float) else None


def standings(documents: Iterable[tuple[str, Mapping[str, object]]]) -> list[Standing]:
    """Every persona that took part in a decision, from ``(run id, document)`` pairs."""
    table: dict[str, Standing] = {}
    for run_id, document in documents:
        decided = False
        for verdict in _verdicts(document):
            for kind, persona, win in outcomes(verdict):
                standing = table.setdefault(persona, Standing(persona))
                standing.add(kind, win)
                standing.runs.add(run_id)
                decided = True
        if not decided:
            continue
        for persona, cost in _costs(document):
            found = table.get(persona)
            if found is None or run_id not in found.runs:
                continue
            if cost is None:
                found.unpriced = True
            else:
                found.cost_usd += cost
    return list(table.values())


def leaderboard(documents: Iterable[tuple[str, Mapping[str, object]]]) -> list[StatsRow]:
    """The rows of ``runs stats``, best win rate first."""
    rows: list[StatsRow] = []
    for s in standings(documents):
        low, high = wilson(round(s.wins), int(s.games))
        cost = None if s.unpriced else round(s.cost_usd, 8)
        rows.append({
            "persona": s.persona, "games": int(s.games), "wins": round(s.wins, 2),
            "win_rate": round(s.wins / s.games, 4) if s.games else 0.0,
            "ci_low": round(low, 4), "ci_high": round(high, 4),
            "judge": _record(s, "judge"), "vote": _record(s, "vote"),
            "council": _record(s, "council"), "cost_usd": cost,
            "cost_per_win": round(cost / s.wins, 8) if cost is not None and s.wins else None,
        })  # fmt: skip
    rows.sort(key=lambda r: (-r["win_rate"], -r["games"], r["persona"]))
    return rows


def _record(standing: Standing, kind: str) -> str:
    wins, games = standing.by_kind.get(kind, [0.0, 0.0])
    return f"{wins:g}/{games:g}" if games else "-"


def recorded_documents(
    history: History, since: datetime | None = None
) -> Iterator[tuple[str, Mapping[str, object]]]:
    """Every readable run of ``history`` (started since ``since``), newest first."""
    from fanout.history import RunFilter

    where = RunFilter(since=since) if since is not None else None
    for summary in history.list_runs(limit=2**62, where=where):
        try:
            yield summary.run_id, history.load(summary.run_id).document
        except FanoutError:
            continue  # damaged: list_runs has said so


def show_stats(json_output: bool, since: str | None) -> None:
    """``fanout runs stats``: the leaderboard on stdout (a table, or JSON)."""
    import json
    import os

    from fanout.history import History, history_path, parse_since
    from fanout.output import write_stdout
    from fanout.render import make_console, print_warning, stats_table

    start = parse_since(since) if since is not None else None
    with History(history_path(os.environ)) as history:
        rows = leaderboard(recorded_documents(history, start))
        warnings = list(history.warnings)
    err = make_console(stderr=True)
    for warning in warnings:
        print_warning(err, warning)
    if json_output:
        write_stdout(json.dumps(rows, indent=2) + "\n")
    elif not rows:
        write_stdout("no decisions recorded yet: runs with --judge, --vote or --council count\n")
    else:
        make_console().print(stats_table(rows))
