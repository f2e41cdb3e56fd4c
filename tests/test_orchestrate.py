"""``fanout ask --orchestrate``: personas as tools, one turn's tool calls at once, the loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI, Fault, Reply


@pytest.fixture
def config(agents_file: AgentsFile) -> Path:
    path = agents_file("physicist", "chemist", "biologist")
    path.write_text(path.read_text() + "orchestrator:\n  model: m-orch\n", encoding="utf-8")
    return path


def ask(name: str, question: str, call_id: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"name": f"ask_{name}", "arguments": {"question": question}}
    if call_id:
        call["id"] = call_id
    return call


def orchestrated(invoke: Invoke, config: Path, *args: str, code: int = 0) -> dict[str, Any]:
    result = invoke("ask", "-c", config, "--orchestrate", "--json", *args, "Why is ice slippery?")
    assert result.exit_code == code, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
def test_tool_calls_of_one_turn_overlap_and_their_answers_go_back(
    stream: str, server: FakeOpenAI, config: Path, invoke: Invoke
) -> None:
    server.script(
        "m-orch",
        Reply(
            tool_calls=[ask("physicist", "pressure?", "c1"), ask("chemist", "water film?", "c2")]
        ),
        Reply(text="It is the water film."),
    )
    # gate=2: each persona's reply waits until both are in flight: a serial loop would fail.
    server.script("m-physicist", Reply(text="pressure melting is small", gate=2))
    server.script("m-chemist", Reply(text="a liquid-like layer", gate=2))
    document = orchestrated(invoke, config, stream, "--retries", "0")
    tools = [r for r in server.requests if r.model in ("m-physicist", "m-chemist")]
    assert len(tools) == 2
    assert max(r.started for r in tools) < min(r.finished or 0 for r in tools)
    turns = [r for r in server.requests if r.model == "m-orch"]
    assert [t["function"]["name"] for t in turns[0].body["tools"]] == [
        "ask_physicist", "ask_chemist", "ask_biologist",
    ]  # fmt: skip
    assert turns[0].body["tools"][1]["function"]["description"] == "the chemist"
    assert turns[1].started >= max(r.finished or 0 for r in tools)
    messages = turns[1].body["messages"]
    assert [m["role"] for m in messages[-3:]] == ["assistant", "tool", "tool"]
    assert [c["id"] for c in messages[-3]["tool_calls"]] == ["c1", "c2"]
    results = {m["tool_call_id"]: m["content"] for m in messages[-2:]}
    assert results == {"c1": "pressure melting is small", "c2": "a liquid-like layer"}
    assert tools[0].body["messages"][-1]["content"] in ("pressure?", "water film?")
    assert [s["id"] for s in document["stages"]] == ["turn1", "tools1", "turn2", "answer"]
    assert document["output"] == {"orchestrator": "It is the water film."}
    assert document["status"] == "completed"
    assert document["stages"][0]["calls"][0]["tool_calls"][0]["name"] == "ask_physicist"


def test_the_loop_ends_at_max_turns(server: FakeOpenAI, config: Path, invoke: Invoke) -> None:
    server.script(
        "m-orch",
        Reply(tool_calls=[ask("biologist", "cells?")]),
        Reply(tool_calls=[ask("biologist", "again?")]),
    )
    # Every call answered, but no final answer: the run did not do its job (it said completed).
    document = orchestrated(invoke, config, "--max-turns", "2", code=3)
    assert document["status"] == "partial"
    turns = [r for r in server.requests if r.model == "m-orch"]
    assert len(turns) == 2 and server.count("m-biologist") == 1  # turn 2's tools not run
    assert "last turn" in turns[1].body["messages"][-1]["content"]
    assert [s["id"] for s in document["stages"]] == ["turn1", "tools1", "turn2", "answer"]
    assert document["output"] == {}


def test_a_tool_that_does_not_exist_is_answered_with_an_error(
    server: FakeOpenAI, config: Path, invoke: Invoke
) -> None:
    server.script(
        "m-orch",
        Reply(tool_calls=[{"name": "ask_wizard", "arguments": {"question": "?"}, "id": "w"}]),
        Reply(text="done without it"),
    )
    # The orchestrator answered, one tool call did not: partial (it said failed, exit 1).
    document = orchestrated(invoke, config, code=3)
    assert document["status"] == "partial"
    tool = document["stages"][1]["calls"][0]
    assert tool["status"] == "skipped" and tool["error"]["type"] == "bad_tool_call"
    turn2 = [r for r in server.requests if r.model == "m-orch"][1]
    assert turn2.body["messages"][-1]["content"].startswith("[no answer: no tool 'ask_wizard'")
    assert document["output"] == {"orchestrator": "done without it"}


def test_an_orchestrator_that_answers_at_once_asks_nobody(
    server: FakeOpenAI, config: Path, invoke: Invoke
) -> None:
    server.script("m-orch", Reply(text="I know this one."))
    document = orchestrated(invoke, config)
    assert server.count() == 1
    assert document["output"] == {"orchestrator": "I know this one."}


def test_max_turns_goes_with_orchestrate(config: Path, invoke: Invoke) -> None:
    result = invoke("ask", "-c", config, "--max-turns", "2", "Why?")
    assert result.exit_code == 2 and "--max-turns goes with --orchestrate" in result.stderr


def test_retry_carries_on_from_a_failed_later_turn_keeping_the_tools_answers(
    server: FakeOpenAI, config: Path, invoke: Invoke
) -> None:
    # The plan starts with turn 1 only; a failed turn 2 got "every persona already answered".
    server.script("m-orch", Reply(tool_calls=[ask("physicist", "q?", "c1")]), Fault(500))
    server.script("m-physicist", Reply(text="pressure"))
    first = orchestrated(invoke, config, "--retries", "0", code=3)
    assert [s["id"] for s in first["stages"]] == ["turn1", "tools1", "turn2", "answer"]
    server.script("m-orch", Reply(text="it is pressure"))
    result = invoke("runs", "retry", first["run_id"], "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["output"] == {"orchestrator": "it is pressure"}
    assert server.count("m-physicist") == 1 and server.count("m-orch") == 3
    resent = [r for r in server.requests if r.model == "m-orch"][-1]
    assert resent.body["messages"][-1] == {
        "role": "tool", "tool_call_id": "c1", "content": "pressure",
    }  # fmt: skip


def test_dry_run_lists_every_turn_with_every_persona_asked(
    server: FakeOpenAI, config: Path, invoke: Invoke
) -> None:
    # It listed the first turn only: the worst case left out every persona and later turn.
    result = invoke(
        "ask", "-c", config, "--orchestrate", "--max-turns", "2", "--dry-run", "--json", "Why?"
    )
    assert result.exit_code == 0, result.output
    calls = json.loads(result.stdout)["calls"]
    assert [c["name"] for c in calls] == [
        "turn1/orchestrator", "tools1/physicist", "tools1/chemist", "tools1/biologist",
        "turn2/orchestrator",
    ]  # fmt: skip
    # the last turn reads every answer: its prompt bounds them all
    tokens = [c["prompt_tokens_estimate"] for c in calls]
    assert tokens[-1] > tokens[0] + 3 * 1024
    assert server.count() == 0


def test_synthesize_does_not_go_with_orchestrate(
    server: FakeOpenAI, config: Path, invoke: Invoke
) -> None:
    result = invoke("ask", "-c", config, "--orchestrate", "-s", "Why?")
    assert result.exit_code == 2 and result.stdout == ""
    assert "--synthesize does not go with --orchestrate" in result.stderr
    assert server.count() == 0


def test_retry_of_an_orchestration_with_nothing_failed_says_why_and_asks_nobody(
    server: FakeOpenAI, config: Path, invoke: Invoke
) -> None:
    # Out of turns: partial, but the retry said "every persona already answered". A made-up
    # tool: the retry asked the orchestrator again, paying to change nothing.
    server.script(
        "m-orch",
        Reply(tool_calls=[ask("biologist", "cells?")]),
        Reply(tool_calls=[ask("biologist", "again?")]),
    )
    out_of_turns = orchestrated(invoke, config, "--max-turns", "2", code=3)
    server.script(
        "m-orch",
        Reply(tool_calls=[{"name": "ask_wizard", "arguments": {"question": "?"}, "id": "w"}]),
        Reply(text="done without it"),
    )
    made_up = orchestrated(invoke, config, code=3)
    before = server.count()
    for document in (out_of_turns, made_up):
        result = invoke("runs", "retry", document["run_id"])
        assert result.exit_code == 2, result.output
        assert "no call failed, so nothing to retry" in result.stderr
    assert server.count() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--route", "--route-max", "1001"], "--route-max"),
        (["--orchestrate", "--max-turns", "51"], "--max-turns"),
        (["--orchestrate", "--map"], "--map does not go with --orchestrate"),
    ],
)
def test_shape_flags_are_bounded_where_they_are_typed(
    args: list[str], message: str, config: Path, invoke: Invoke
) -> None:
    # --route-max 1001 passed the flag and failed the shape's check with a message about
    # "options: route_max", a name nobody typed.
    result = invoke("ask", "-c", config, *args, "--dry-run", "Why?")
    assert result.exit_code == 2 and result.stdout == ""
    assert message in result.stderr and "options:" not in result.stderr, result.stderr


def test_the_final_view_leads_with_the_orchestrators_answer_and_its_turns(
    server: FakeOpenAI, config: Path, invoke: Invoke
) -> None:
    # It showed each turn as a box of "turn: 1 / answered: False", an empty panel for the
    # turn that called tools, the answer twice, and "0/0 answered" when nobody was asked.
    for _ in range(2):
        server.script(
            "m-orch",
            Reply(tool_calls=[ask("physicist", "pressure?"), ask("chemist", "film?")]),
            Reply(text="It is the **water film**."),
        )
    md = invoke("ask", "-c", config, "--orchestrate", "--format", "md", "Why?")
    assert md.exit_code == 0, md.output
    assert "turn1: asked physicist, chemist" in md.stdout
    assert "## Answer · orchestrator\n\nIt is the **water film**." in md.stdout
    assert md.stdout.count("water film") == 1
    assert "## physicist\n_asked (turn 1) pressure?_" in md.stdout
    assert "answered: False" not in md.stdout
    columns = invoke("ask", "-c", config, "--orchestrate", "--format", "columns", "Why?")
    text = columns.stdout
    assert text.index("Answer · orchestrator") < text.index("physicist · m-physicist")
    assert "asked (turn 1) film?" in text and text.count("water film") == 1
    server.script("m-orch", Reply(text="I know this one."))
    alone = invoke("ask", "-c", config, "--orchestrate", "--format", "columns", "Why?")
    assert "answered without asking a persona" in alone.stdout
    assert "0/0" not in alone.stdout and "no answers" not in alone.stdout


@pytest.mark.parametrize("view", ["md", "text", "columns", "table"])
def test_every_turns_answers_are_shown_in_order_under_their_questions(
    server: FakeOpenAI, config: Path, invoke: Invoke, view: str
) -> None:
    # Only turn 1's answers were the answers: turn 2's showed above them as "Tools: ...",
    # without their question, and the summary counted 2 where 4 personas answered.
    server.script(
        "m-orch",
        Reply(tool_calls=[ask("physicist", "Q-phys?"), ask("chemist", "Q-chem?")]),
        Reply(tool_calls=[ask("biologist", "Q-bio?"), ask("physicist", "Q-phys2?")]),
        Reply(text="FINAL ANSWER"),
    )
    result = invoke("ask", "-c", config, "--orchestrate", "--format", view, "Why?")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())  # the table wraps its cells
    order = ["(turn 1) Q-phys?", "(turn 1) Q-chem?", "(turn 2) Q-bio?", "(turn 2) Q-phys2?"]
    places = [text.index(q) for q in order]
    assert places == sorted(places), text
    assert "tools1 2/2 · turn2 1/1 · tools2 2/2" in text and "Tools:" not in text
    assert text.index("FINAL ANSWER") < places[0]
