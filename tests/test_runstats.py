"""``fanout runs stats``: every judge, vote and council decision in the history, per persona."""

from __future__ import annotations

import json
import re
from typing import Any

from fanout.runstats import outcomes
from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI, Reply


def judge_prefers_the_physicist(body: dict[str, Any]) -> str:
    asked = body["messages"][-1]["content"]
    if body["model"] != "gpt-4o-mini":
        return f"{body['model']} says yes"
    found = dict(re.findall(r"Candidate (\w+):\n```\n(.*?)\n```", asked, re.DOTALL))
    pick = next(label for label, text in found.items() if "physicist" in text)
    return json.dumps({"reasoning": "clearer", "winner": pick})


def test_runs_stats_counts_every_recorded_decision(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file()
    server.default = Reply(respond=judge_prefers_the_physicist)
    judged = invoke("ask", "-c", config, "-a", "physicist,chemist", "--judge", "--json", "Why?")
    assert judged.exit_code == 0, judged.stderr
    server.script("m-physicist", Reply(text="yes"))
    server.script("m-chemist", Reply(text="yes"))
    server.script("m-biologist", Reply(text="no"))
    voted = invoke("ask", "-c", config, "--vote", "--choices", "yes,no", "--json", "Is it?")
    assert voted.exit_code == 0, voted.stderr
    plain = invoke("ask", "-c", config, "--json", "No decision here")
    assert plain.exit_code == 0
    result = invoke("runs", "stats", "--json")
    assert result.exit_code == 0, result.stderr
    rows = {r["persona"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"physicist", "chemist", "biologist"}
    assert (rows["physicist"]["wins"], rows["physicist"]["games"]) == (2, 2)
    assert (rows["chemist"]["wins"], rows["chemist"]["games"]) == (1, 2)
    assert (rows["biologist"]["wins"], rows["biologist"]["games"]) == (0, 1)
    assert rows["physicist"]["judge"] == "1/1" and rows["chemist"]["judge"] == "0/1"
    assert rows["biologist"]["vote"] == "0/1" and rows["biologist"]["judge"] == "-"
    assert [r["persona"] for r in json.loads(result.stdout)] == ["physicist", "chemist",
                                                                  "biologist"]  # fmt: skip
    assert rows["physicist"]["ci_low"] < 1.0 == rows["physicist"]["ci_high"]
    table = invoke("runs", "stats")
    assert table.exit_code == 0 and "physicist" in table.stdout and "100% of 2" in table.stdout


def test_runs_stats_with_nothing_decided(invoke: Invoke) -> None:
    result = invoke("runs", "stats")
    assert result.exit_code == 0 and "no decisions recorded yet" in result.stdout


def test_a_council_ranking_and_ties() -> None:
    council = {"aggregate": [
        {"name": "a", "borda": 3, "votes": 2}, {"name": "b#2", "borda": 3, "votes": 2},
        {"name": "c", "borda": 0, "votes": 2}, {"name": "d", "borda": 0, "votes": 0},
    ]}  # fmt: skip
    assert outcomes(council) == [("council", "a", 0.5), ("council", "b", 0.5),
                                 ("council", "c", 0.0)]  # fmt: skip
    tie = {"winner": None, "labels": {"A": "x", "B": "y"}}
    assert outcomes(tie) == [("judge", "x", 0.5), ("judge", "y", 0.5)]
    assert outcomes({"winner": None, "groups": [{"answer": "p", "members": ["x", "y"]}]}) == [
        ("vote", "x", 0.0), ("vote", "y", 0.0),
    ]  # fmt: skip
    assert outcomes({"output": "text"}) == []
