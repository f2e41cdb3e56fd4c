"""Conversations over HTTP: ``/v1`` honours a client's message history, ``/api/runs`` takes
a ``conversation_id`` and carries it on from the history."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.conftest import AgentsFile
from tests.fakeserver import FakeOpenAI, Reply
from tests.test_conversation import bodies

pytest.importorskip("starlette")
from tests.servehelp import Served, serve_in_thread


@pytest.fixture
def served(agents_file: AgentsFile) -> Iterator[Served]:
    running = serve_in_thread(agents_file("physicist", "chemist"))
    yield running
    running.stop()


def test_v1_passes_the_earlier_user_message_and_the_system_message_to_every_persona(
    server: FakeOpenAI, served: Served
) -> None:
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    completion = client.chat.completions.create(
        model="fanout",
        messages=[
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello, Ada."},
            {"role": "user", "content": "What is my name?"},
        ],
    )
    for persona in ("physicist", "chemist"):
        (sent,) = bodies(server, f"m-{persona}")
        assert sent == [
            {"role": "system", "content": f"You are a {persona}.\n\nAnswer in one word."},
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello, Ada."},
            {"role": "user", "content": "What is my name?"},
        ]
    document = (completion.model_extra or {})["fanout"]
    assert document["prompt"] == "What is my name?" and document["turn"] == 2


def test_api_runs_with_a_conversation_id_continue_it_from_the_history(
    server: FakeOpenAI, served: Served
) -> None:
    server.script("m-physicist", Reply(text="Motion."), Reply(text="Stillness."))
    with served.client() as client:
        first = client.post("/api/runs?wait=30", json={"prompt": "Heat?", "conversation_id": "c-1"})
        assert first.status_code == 200, first.text
        assert first.json()["customStatus"]["conversation_id"] == "c-1"
        second = client.post(
            "/api/runs?wait=30", json={"prompt": "Cold?", "conversation_id": "c-1"}
        )
        status = second.json()
        assert status["input"]["conversation_id"] == "c-1"
        assert status["customStatus"]["turn"] == 2
        bad = client.post("/api/runs", json={"prompt": "Why?", "conversation_id": "a b"})
        assert bad.status_code == 400 and "conversation_id" in bad.json()["error"]
    sent = bodies(server, "m-physicist")[1]
    assert [m["content"] for m in sent[1:]] == ["Heat?", "Motion.", "Cold?"]
    assert "m-chemist says: Heat?" in str(bodies(server, "m-chemist")[1])


def test_v1_naming_a_conversation_with_the_last_question_alone_continues_it_from_the_history(
    server: FakeOpenAI, served: Served
) -> None:
    server.script("m-physicist", Reply(text="Motion."))
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    first = client.chat.completions.create(
        model="fanout", messages=[{"role": "user", "content": "Heat?"}]
    )
    conversation = (first.model_extra or {})["fanout"]["conversation_id"]
    second = client.chat.completions.create(
        model="fanout",
        messages=[{"role": "user", "content": "Cold?"}],
        extra_body={"fanout": {"conversation_id": conversation}},
    )
    document = (second.model_extra or {})["fanout"]
    assert (document["conversation_id"], document["turn"]) == (conversation, 2)
    sent = bodies(server, "m-physicist")[1]
    assert [m["content"] for m in sent[1:]] == ["Heat?", "Motion.", "Cold?"]


def test_a_turn_over_http_asks_the_personas_of_the_conversation_s_last_turn(
    server: FakeOpenAI, served: Served
) -> None:
    with served.client() as client:
        first = client.post(
            "/api/runs?wait=30",
            json={"prompt": "Heat?", "agents": ["physicist"], "conversation_id": "c-2",
                  "personas": {"pirate": "You answer like a pirate."}},
        )  # fmt: skip
        assert first.status_code == 200, first.text
        server.reset()
        second = client.post(
            "/api/runs?wait=30", json={"prompt": "Cold?", "conversation_id": "c-2"}
        )
        assert second.status_code == 200, second.text
        assert second.json()["customStatus"]["turn"] == 2
        # the physicist and the pirate of the first turn, not the whole panel
        assert sorted(r.model for r in server.requests) == ["gpt-4o-mini", "m-physicist"]
        server.reset()
        third = client.post(
            "/api/runs?wait=30",
            json={"prompt": "Why?", "agents": ["chemist"], "conversation_id": "c-2"},
        )
        assert third.status_code == 200, third.text
        assert sorted(r.model for r in server.requests) == [
            "gpt-4o-mini",
            "m-chemist",
            "m-physicist",
        ]
    pirate = next(r.body for r in server.requests if r.model == "gpt-4o-mini")
    assert pirate["messages"][0]["content"].startswith("You answer like a pirate.")
    assert [m["content"] for m in pirate["messages"][1:3]] == ["Heat?", "gpt-4o-mini says: Heat?"]


def test_v1_with_its_own_history_in_a_stored_conversation_takes_the_next_turn_number(
    server: FakeOpenAI, served: Served
) -> None:
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    named = {"fanout": {"conversation_id": "c-9"}}
    for question in ("q1?", "q2?"):
        client.chat.completions.create(
            model="fanout", messages=[{"role": "user", "content": question}], extra_body=named
        )
    third = client.chat.completions.create(
        model="fanout",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "a?"},
            {"role": "assistant", "content": "A!"},
            {"role": "user", "content": "b?"},
        ],
        extra_body=named,
    )
    document = (third.model_extra or {})["fanout"]
    assert (document["conversation_id"], document["turn"]) == ("c-9", 3)  # not a second 2
