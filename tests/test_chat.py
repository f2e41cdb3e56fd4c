"""Conversations from the command line: ``ask --continue``/``--conversation``, ``fanout chat``
(piped and on a pty), ``runs list --conversation``, ``runs show`` of a turn, ``runs retry`` and
``runs delete`` of a turn with later ones; the request bodies are read back from the loopback
server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import fanout
from tests.conftest import AgentsFile, Invoke, assert_usage_error
from tests.fakeserver import FakeOpenAI, Fault, Reply
from tests.terminal import Terminal
from tests.test_conversation import bodies

QUICK_FAIL = Fault(400, body={"error": {"message": "no such thing"}})


def asked(invoke: Invoke, *args: str | Path) -> dict[str, Any]:
    result = invoke("ask", "--json", *args)
    assert result.exit_code in (0, 3), result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_ask_continue_sends_each_persona_its_own_thread(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-physicist", Reply(text="Mean kinetic energy."))
    server.script("m-chemist", Reply(text="Reaction speed."))
    config = agents_file("physicist", "chemist", "biologist")
    first = asked(invoke, "-c", config, "-a", "physicist,chemist", "What is temperature?")
    second = asked(invoke, "-c", config, "--continue", "And at absolute zero?")

    physicist = bodies(server, "m-physicist")[1]
    assert [m["content"] for m in physicist[1:]] == [
        "What is temperature?",
        "Mean kinetic energy.",
        "And at absolute zero?",
    ]
    assert "Mean kinetic energy." not in str(bodies(server, "m-chemist")[1])
    # the personas of the last turn, not the whole panel
    assert [a["name"] for a in second["agents"]] == ["physicist", "chemist"]
    assert second["conversation_id"] == first["conversation_id"] == first["run_id"]
    assert second["turn"] == 2


def test_a_persona_added_on_a_later_turn_joins_with_the_questions_only(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("physicist", "chemist")
    first = asked(invoke, "-c", config, "-a", "physicist", "What is temperature?")
    asked(invoke, "-c", config, "--conversation", first["run_id"][:6], "-a", "chemist", "Why?")
    (chemist,) = bodies(server, "m-chemist")
    assert [m["role"] for m in chemist] == ["system", "user"]
    assert "What is temperature?" in chemist[1]["content"]
    assert "m-physicist says" not in chemist[1]["content"]


def test_continue_with_no_history_or_an_unknown_conversation_is_a_usage_error(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("physicist")
    assert_usage_error(invoke("ask", "-c", config, "--continue", "Why?"), "--continue", "no run")
    asked(invoke, "-c", config, "Why?")
    assert_usage_error(
        invoke("ask", "-c", config, "--conversation", "zzz", "Why?"), "'zzz'", "conversation"
    )
    assert len(server.requests) == 1


def test_every_jsonl_line_of_a_continued_run_carries_the_conversation_id(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("physicist", "chemist")
    first = asked(invoke, "-c", config, "What is temperature?")
    result = invoke("ask", "-c", config, "--continue", "--jsonl", "And at absolute zero?")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) > 4
    assert {line["conversation_id"] for line in lines} == {first["conversation_id"]}
    assert lines[0]["turn"] == 2


def test_dry_run_of_a_continued_turn_counts_the_whole_thread(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-physicist", Reply(text="x" * 4000))
    config = agents_file("physicist")
    asked(invoke, "-c", config, "What is temperature?")
    fresh = json.loads(invoke("ask", "-c", config, "--dry-run", "--json", "Why?").stdout)
    carried = json.loads(
        invoke("ask", "-c", config, "--continue", "--dry-run", "--json", "Why?").stdout
    )
    more = (
        carried["calls"][0]["prompt_tokens_estimate"] - fresh["calls"][0]["prompt_tokens_estimate"]
    )
    assert more >= 4000  # the earlier question and the whole earlier answer, in the worst case
    assert len(server.requests) == 1


def test_chat_piped_takes_one_turn_per_line(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-physicist", Reply(text="Mean kinetic energy."), Reply(text="None left."))
    config = agents_file("physicist")
    result = invoke("chat", "-c", config, input="What is temperature?\n\nAnd at absolute zero?\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("# What is temperature?") == 1
    assert result.stdout.index("Mean kinetic energy.") < result.stdout.index("None left.")
    second = bodies(server, "m-physicist")[1]
    assert [m["content"] for m in second[1:]] == [
        "What is temperature?",
        "Mean kinetic energy.",
        "And at absolute zero?",
    ]
    listed = json.loads(invoke("runs", "list", "--json").stdout)["runs"]
    assert len(listed) == 2 and len({r["conversation_id"] for r in listed}) == 1


@pytest.mark.parametrize(
    ("flags", "said"),
    [(["--debate"], "debate"), (["--shape", "flow"], "flow"), (["-a", "nobody"], "nobody")],
)
def test_chat_refuses_what_no_turn_could_run_before_reading_a_question(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, flags: list[str], said: str
) -> None:
    # `printf 'q1\n' | fanout chat --debate -a alpha` printed "# q1" before its error.
    result = invoke("chat", "-c", agents_file("physicist"), *flags, input="Why?\n")
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and server.count() == 0
    assert said in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_chat_commands_change_the_next_turn_and_mistakes_do_not_end_it(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    config = agents_file("physicist", "chemist")
    saved = tmp_path / "talk.json"
    script = "\n".join(
        [
            "/agents physicist",
            "What is temperature?",
            "/agents nobody",
            "/shape nonsense",
            "/agents physicist,chemist",
            "And at absolute zero?",
            f"/save {saved}",
            "/quit",
            "Never asked",
        ]
    )
    result = invoke("chat", "-c", config, input=script + "\n")
    assert result.exit_code == 2, result.output  # the mistakes are remembered
    assert "unknown agent 'nobody'" in result.stderr and "nonsense" in result.stderr
    assert len(bodies(server, "m-physicist")) == 2 and len(bodies(server, "m-chemist")) == 1
    document = json.loads(saved.read_text())
    assert [t["prompt"] for t in document["turns"]] == [
        "What is temperature?",
        "And at absolute zero?",
    ]
    assert document["turns"][1]["conversation_id"] == document["conversation_id"]
    assert "Never asked" not in str(server.requests)


def test_chat_on_a_terminal_takes_one_turn_per_line_with_an_editable_prompt(
    server: FakeOpenAI, agents_file: AgentsFile, isolated_env: Path
) -> None:
    server.script("m-physicist", Reply(text="Mean kinetic energy."), Reply(text="None left."))
    config = agents_file("physicist")
    term = Terminal(["chat", "-c", config], 30, 100)
    try:
        term.expect("1> ")
        term.send("What is temperature?\r")
        term.expect("Mean kinetic energy.")
        term.expect("2> ")
        term.send("And at absolute zero?\r")
        term.expect("None left.")
        term.expect("3> ")
        term.send("\x1b[A")  # the line before comes back, to edit
        term.expect("And at absolute zero\\?")
        term.send("\x15/quit\r")  # Ctrl-U clears it
        code = term.finish()
    finally:
        term.close()
    assert code == 0, term.output
    second = bodies(server, "m-physicist")[1]
    assert [m["content"] for m in second[1:]] == [
        "What is temperature?",
        "Mean kinetic energy.",
        "And at absolute zero?",
    ]
    assert not term.screen.on_alt and term.echo_after  # the terminal is given back
    assert "None left." in term.main_text()  # the comparison stays after the board
    kept = isolated_env.parent / "xdg-data" / "fanout" / "chat_history"
    assert "What is temperature?" in kept.read_text()
    assert kept.stat().st_mode & 0o777 == 0o600


def three_turns(invoke: Invoke, config: Path) -> list[dict[str, Any]]:
    first = asked(invoke, "-c", config, "What is temperature?")
    second = asked(invoke, "-c", config, "--continue", "And at absolute zero?")
    third = asked(invoke, "-c", config, "--continue", "And in space?")
    return [first, second, third]


def test_runs_list_and_show_know_the_turns_of_a_conversation(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("physicist")
    turns = three_turns(invoke, config)
    asked(invoke, "-c", config, "Another topic")
    conversation = turns[0]["conversation_id"]
    listed = json.loads(
        invoke("runs", "list", "--json", "--conversation", conversation[:5]).stdout
    )["runs"]
    assert [r["run_id"] for r in listed] == [t["run_id"] for t in reversed(turns)]
    assert [r["turn"] for r in listed] == [3, 2, 1]
    shown = invoke("runs", "show", turns[1]["run_id"])
    assert f"Turn 2 of 3 of conversation {conversation}" in shown.stdout
    every = invoke("runs", "show", turns[2]["run_id"], "--turns")
    assert every.exit_code == 0, every.output
    assert every.stdout.index("# Turn 1: What is temperature?") < every.stdout.index(
        "# Turn 3: And in space?"
    )
    document = json.loads(invoke("runs", "show", turns[0]["run_id"], "--turns", "--json").stdout)
    assert [t["turn"] for t in document["turns"]] == [1, 2, 3]


def test_retry_of_a_later_turn_redoes_only_its_failures_in_their_threads(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-physicist", Reply(text="Motion."), Reply(text="Stillness."))
    server.script("m-chemist", Reply(text="Speed."), QUICK_FAIL)
    config = agents_file("physicist", "chemist")
    asked(invoke, "-c", config, "What is temperature?")
    second = asked(invoke, "-c", config, "--continue", "And at absolute zero?")
    before = len(server.requests)
    result = invoke("runs", "retry", second["run_id"], "--json")
    assert result.exit_code == 0, result.output
    (redone,) = server.requests[before:]
    assert redone.model == "m-chemist"
    assert [m["content"] for m in redone.body["messages"][1:]] == [
        "What is temperature?",
        "Speed.",
        "And at absolute zero?",
    ]
    document = json.loads(result.stdout)
    assert (document["conversation_id"], document["turn"]) == (second["conversation_id"], 2)


def test_deleting_a_turn_with_later_turns_is_refused_unless_forced(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("physicist")
    _, second, third = three_turns(invoke, config)
    refused = assert_usage_error(invoke("runs", "delete", second["run_id"]), "--force")
    assert "turn 2 of conversation" in refused and third["run_id"] in refused
    forced = invoke("runs", "delete", second["run_id"], "--force")
    assert forced.exit_code == 0 and "turns 3" in forced.stderr
    assert invoke("runs", "delete", third["run_id"]).exit_code == 0  # the last turn: no fuss
    fourth = asked(invoke, "-c", config, "--continue", "And now?")
    assert fourth["turn"] == 2  # after turn 1, the one left
    sent = bodies(server, "m-physicist")[-1]
    assert [m["content"] for m in sent[1::2]] == ["What is temperature?", "And now?"]


def test_the_python_api_takes_up_a_conversation_the_cli_recorded(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-chemist", Reply(text="Reaction speed."))
    config = agents_file("physicist", "chemist")
    first = asked(invoke, "-c", config, "-a", "chemist", "What is temperature?")
    chat = fanout.Conversation.from_history(first["run_id"][:4], fanout.load_panel(config))
    report = chat.ask("And at absolute zero?")
    assert [r.name for r in report.agents] == ["chemist"]  # the last turn's personas
    assert (report.conversation_id, report.turn) == (first["conversation_id"], 2)
    sent = bodies(server, "m-chemist")[1]
    assert [m["content"] for m in sent[1:]] == [
        "What is temperature?",
        "Reaction speed.",
        "And at absolute zero?",
    ]


def test_max_cost_bounds_the_whole_thread(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-physicist", Reply(text="x" * 20_000))
    config = agents_file("physicist", defaults={"max_tokens": 10})
    text = config.read_text() + "pricing:\n  m-physicist: {input: 1.0, output: 1.0}\n"
    config.write_text(text)
    asked(invoke, "-c", config, "What is temperature?")
    budget = "0.01"  # a dollar a million tokens: room for 10,000, not for the 20,000-byte thread
    alone = json.loads(
        invoke("ask", "-c", config, "--dry-run", "--json", "--max-cost", budget, "Why?").stdout
    )
    carried = invoke("ask", "-c", config, "--continue", "--json", "--max-cost", budget, "Why?")
    assert alone["fits"] is True
    document = json.loads(carried.stdout)
    assert document["agents"][0]["status"] == "skipped"
    assert document["agents"][0]["error"]["type"] == "budget"
    assert len(server.requests) == 1
