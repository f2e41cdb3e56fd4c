"""Personas named on the command line, no agents file needed (issue 13): -p NAME=INSTRUCTIONS,
repeatable, alone or with -a; they take the panel's defaults or --model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SENTINEL_KEY, AgentsFile, Invoke, assert_usage_error
from tests.fakeserver import FakeOpenAI, Fault

PIRATE = "pirate=You answer like a pirate"


def system_of(server: FakeOpenAI, model: str, *, last: bool = False) -> str:
    requests = [r for r in server.requests if r.model == model]
    if not last:
        assert len(requests) == 1, requests
    return str(requests[-1].body["messages"][0]["content"])


def test_p_alone_asks_only_the_adhoc_persona_with_the_panel_defaults(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("a", "b", defaults={"model": "m-default", "temperature": 0.3})
    result = invoke("ask", "-c", config, "-p", PIRATE, "--json", "Why?")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["output"] == {"pirate": "m-default says: Why?"}
    assert [a["name"] for a in document["agents"]] == ["pirate"]
    assert system_of(server, "m-default") == "You answer like a pirate"
    assert server.requests[0].body["temperature"] == 0.3
    assert server.count() == 1


def test_p_repeats_and_mixes_with_a(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("a", "b", defaults={"model": "m-default"})
    result = invoke(
        "ask", "-c", config, "-a", "b", "--persona", PIRATE, "-p", "poet=You answer in verse",
        "--json", "Why?",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    names = [a["name"] for a in json.loads(result.stdout)["agents"]]
    assert names == ["b", "pirate", "poet"]
    assert server.count("m-a") == 0 and server.count("m-b") == 1


def test_p_takes_the_model_flag(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    result = invoke("ask", "-c", agents_file("a"), "-p", PIRATE, "-m", "m-given", "--json", "Q")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["output"] == {"pirate": "m-given says: Q"}


def test_p_without_any_agents_file_uses_the_builtin_defaults(
    server: FakeOpenAI, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No -c, no $FANOUT_CONFIG, no ./agents.yaml: the panel shipped with fanout.
    assert not Path("agents.yaml").exists()
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL_KEY)
    result = invoke("ask", "-p", PIRATE, "--json", "Why?")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["output"] == {"pirate": "gpt-4o-mini says: Why?"}
    assert system_of(server, "gpt-4o-mini") == "You answer like a pirate"
    assert SENTINEL_KEY not in result.stdout + result.stderr


def test_p_shows_in_a_dry_run(server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke) -> None:
    result = invoke("ask", "-c", agents_file("a"), "-p", PIRATE, "--dry-run", "--json", "Why?")
    assert result.exit_code == 0, result.output
    calls = json.loads(result.stdout)["calls"]
    assert [c["name"] for c in calls] == ["pirate"]
    assert calls[0]["base_url"] == server.base_url
    assert server.count() == 0


def test_p_in_a_batch(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    source = tmp_path / "q.txt"
    source.write_text("one\ntwo\n")
    config = agents_file("a", defaults={"model": "m-default"})
    result = invoke("batch", source, "-c", config, "-a", "a", "-p", PIRATE)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted((line["prompt"], line["name"]) for line in lines) == [
        ("one", "a"), ("one", "pirate"), ("two", "a"), ("two", "pirate"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        (["pirate"], "give NAME=INSTRUCTIONS"),
        (["=You answer like a pirate"], "the name before = is empty"),
        (["pirate="], "the instructions after = are empty"),
        (["pirate=   "], "the instructions after = are empty"),
        (["old salt=Arr"], "no spaces, commas"),
        ([PIRATE, "Pirate=Again"], "given twice"),
        (["a=You clash"], "already has a persona named 'a'"),
        (["A=You clash"], "already has a persona named 'a'"),
    ],
    ids=[
        "no-equals",
        "empty-name",
        "empty-text",
        "blank-text",
        "space",
        "twice",
        "clash",
        "clash-case",
    ],
)
@pytest.mark.parametrize("command", ["ask", "batch"])
def test_a_malformed_p_is_one_line_naming_p_and_the_value(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    tmp_path: Path,
    values: list[str],
    fragment: str,
    command: str,
) -> None:
    source = tmp_path / "q.txt"
    source.write_text("Why?\n")
    target = ["Why?"] if command == "ask" else [str(source)]
    flags = [part for value in values for part in ("-p", value)]
    result = invoke(command, "-c", agents_file("a", "b"), *flags, *target)
    assert_usage_error(result, "-p", repr(values[-1]), fragment)
    assert server.count() == 0


def test_a_p_persona_that_failed_is_asked_again_by_runs_retry(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("a", defaults={"model": "m-default"})
    server.script("m-default", Fault(400))
    first = invoke("ask", "-c", config, "-p", PIRATE, "--json", "Why?")
    document = json.loads(first.stdout)
    assert document["status"] == "failed", first.output
    again = invoke("runs", "retry", document["run_id"], "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["output"] == {"pirate": "m-default says: Why?"}
    assert system_of(server, "m-default", last=True) == "You answer like a pirate"
