"""Conversations: each persona keeps a thread of its own across turns, read back from the
request bodies the loopback server received."""

from __future__ import annotations

from typing import Any

import pytest

import fanout
from fanout.conversation import Transcript, Turn
from tests.conftest import AgentsFile
from tests.fakeserver import FakeOpenAI, Fault, Reply

QUICK_FAIL = Fault(400, body={"error": {"message": "no such thing"}})


def bodies(server: FakeOpenAI, model: str) -> list[list[dict[str, Any]]]:
    """The messages of every request ``model`` was sent, in order."""
    return [r.body["messages"] for r in server.requests if r.model == model]


def test_after_two_turns_each_persona_hears_its_own_first_answer_and_not_the_others(
    server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    server.script("m-physicist", Reply(text="Mean kinetic energy."), Reply(text="Zero motion."))
    server.script("m-chemist", Reply(text="Reaction speed."), Reply(text="Nothing reacts."))
    panel = fanout.load_panel(agents_file("physicist", "chemist"))
    chat = fanout.Conversation(panel)
    first = chat.ask("What is temperature?")
    second = chat.ask("And at absolute zero?")

    assert bodies(server, "m-physicist")[1] == [
        {"role": "system", "content": "You are a physicist."},
        {"role": "user", "content": "What is temperature?"},
        {"role": "assistant", "content": "Mean kinetic energy."},
        {"role": "user", "content": "And at absolute zero?"},
    ]
    chemist = bodies(server, "m-chemist")[1]
    assert [m["content"] for m in chemist if m["role"] == "assistant"] == ["Reaction speed."]
    assert "Mean kinetic energy." not in str(chemist)
    # one conversation, two turns, in both documents
    assert first.to_dict()["conversation_id"] == second.to_dict()["conversation_id"] == chat.id
    assert chat.id == first.run_id
    assert (first.to_dict()["turn"], second.to_dict()["turn"]) == (1, 2)
    thread = second.to_dict()["agents"][0]["thread"]
    assert thread == {
        "earlier_turns": 1,
        "sent_turns": 1,
        "dropped_turns": 0,
        "context_tokens": None,
    }


def test_a_failed_earlier_answer_is_said_as_such_and_a_newcomer_hears_only_questions(
    server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    server.script("m-chemist", QUICK_FAIL)
    panel = fanout.load_panel(agents_file("physicist", "chemist", "biologist"))
    chat = fanout.Conversation(panel, agents=["physicist", "chemist"])
    chat.ask("What is temperature?")
    chat.agents = ["physicist", "chemist", "biologist"]
    chat.ask("And at absolute zero?")

    chemist = bodies(server, "m-chemist")[1]
    assert chemist[2]["role"] == "assistant"
    assert chemist[2]["content"].startswith("[no answer: ")
    biologist = bodies(server, "m-biologist")[0]
    assert [m["role"] for m in biologist] == ["system", "user"]
    assert "What is temperature?" in biologist[1]["content"]
    assert biologist[1]["content"].endswith("And at absolute zero?")


def test_a_thread_over_max_context_tokens_drops_its_oldest_turn_and_says_so(
    server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    long = "word " * 60  # 300 bytes: 100 tokens counted at 3 bytes a token
    server.script("m-physicist", Reply(text=long), Reply(text="short"), Reply(text="ok"))
    panel = fanout.load_panel(
        agents_file("physicist", extra={"physicist": {"max_context_tokens": 120}})
    )
    chat = fanout.Conversation(panel)
    chat.ask("First?")
    chat.ask("Second?")
    third = chat.ask("Third?")

    sent = bodies(server, "m-physicist")[2]
    assert [m["content"] for m in sent] == [
        "You are a physicist.",
        "Second?",
        "short",
        "Third?",
    ]
    thread = third.to_dict()["agents"][0]["thread"]
    assert thread["dropped_turns"] == 1 and thread["sent_turns"] == 1
    assert thread["context_tokens"] == 120


def test_the_synthesizer_sees_this_turns_answers_after_the_earlier_questions(
    server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    server.script("m-synth", Reply(text="Motion, in sum."), Reply(text="Stillness."))
    config = agents_file("physicist", "chemist", synthesizer={"model": "m-synth"})
    chat = fanout.Conversation(fanout.load_panel(config), options={"synthesize": True})
    chat.ask("What is temperature?")
    chat.ask("And at absolute zero?")

    text = str(bodies(server, "m-synth")[1])
    assert "What is temperature?" in text and "Motion, in sum." in text
    assert "m-physicist says: And at absolute zero?" in text
    # the earlier answers of each persona are theirs alone, not the synthesizer's
    assert "m-physicist says: What is temperature?" not in text


def test_a_client_history_gives_every_persona_the_panels_answer_and_the_system_message(
    server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    panel = fanout.load_panel(agents_file("physicist", "chemist"))
    transcript = Transcript(
        "client-7",
        (Turn("My name is Ada.", reply="Hello, Ada."),),
        system="Answer in one word.",
    )
    report = fanout.run(fanout.RunRequest("What is my name?", panel, conversation=transcript))
    for model in ("m-physicist", "m-chemist"):
        (sent,) = bodies(server, model)
        assert sent[0] == {
            "role": "system",
            "content": f"You are a {model[2:]}.\n\nAnswer in one word.",
        }
        assert sent[1:] == [
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello, Ada."},
            {"role": "user", "content": "What is my name?"},
        ]
    assert report.to_dict()["conversation_id"] == "client-7"
    assert report.to_dict()["turn"] == 2


def test_a_conversation_id_that_is_not_one_is_refused_before_any_call(
    server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    panel = fanout.load_panel(agents_file("physicist"))
    with pytest.raises(fanout.ConfigError, match="conversation_id"):
        fanout.run(fanout.RunRequest("Why?", panel, conversation=Transcript("has space")))
    assert server.requests == []
