"""``fanout ask --route``: the router's structured call, then only the personas it picked."""

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
    path.write_text(path.read_text() + "router:\n  model: m-router\n", encoding="utf-8")
    return path


def routed(invoke: Invoke, config: Path, *args: str, code: int = 0) -> dict[str, Any]:
    result = invoke("ask", "-c", config, "--route", "--json", *args, "Why is ice slippery?")
    assert result.exit_code == code, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def route_answer(*names: str, reason: str = "they know") -> Reply:
    return Reply(text=json.dumps({"personas": list(names), "reason": reason}))


def test_routing_calls_only_the_selected_personas(
    server: FakeOpenAI, config: Path, invoke: Invoke
) -> None:
    server.script("m-router", route_answer("chemist", "physicist", reason="molecules, pressure"))
    document = routed(invoke, config, "--route-max", "2")
    assert sorted(r.model for r in server.requests) == ["m-chemist", "m-physicist", "m-router"]
    router = server.requests[0]
    assert router.model == "m-router"  # asked before anyone else
    assert all(r.started >= (router.finished or 0) for r in server.requests[1:])
    schema = router.body["response_format"]["json_schema"]["schema"]["properties"]["personas"]
    assert schema["items"]["enum"] == ["physicist", "chemist", "biologist"]
    assert (schema["minItems"], schema["maxItems"]) == (1, 2)
    prompt = router.body["messages"][-1]["content"]
    assert "- chemist: the chemist" in prompt and "Why is ice slippery?" in prompt
    assert document["router"] == {
        "type": "router",
        "selected": ["chemist", "physicist"],
        "reason": "molecules, pressure",
        "fallback": False,
    }
    assert document["shape"] == "route"
    assert set(document["output"]) == {"chemist", "physicist"}  # the answers, not the router
    assert [s["id"] for s in document["stages"]] == ["router", "panel"]


def test_unknown_names_are_dropped_and_at_most_k_kept(
    server: FakeOpenAI, config: Path, invoke: Invoke
) -> None:
    server.script("m-router", route_answer("wizard", "biologist", "chemist"))
    document = routed(invoke, config, "--route-max", "1")
    assert document["router"]["selected"] == ["biologist"]
    assert sorted(r.model for r in server.requests) == ["m-biologist", "m-router"]


@pytest.mark.parametrize(
    "reply",
    [Fault(500), Reply(text="not json at all"), route_answer("wizard")],
    ids=["router-failed", "unreadable", "no-known-name"],
)
def test_a_failed_or_empty_routing_asks_the_whole_panel_and_says_so(
    reply: Fault | Reply, server: FakeOpenAI, config: Path, invoke: Invoke
) -> None:
    server.script("m-router", reply)
    result = invoke("ask", "-c", config, "--route", "--json", "--retries", "0", "Why?")
    assert result.exit_code in (0, 3), result.output
    document = json.loads(result.stdout)
    assert document["router"]["fallback"] is True
    assert document["router"]["selected"] == ["physicist", "chemist", "biologist"]
    assert (
        "whole panel" in document["router"]["reason"]
        or "all are asked" in (document["router"]["reason"])
    )
    assert server.count() == 4


def test_route_with_synthesis_and_a_default_router(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("a", "b", defaults={"model": "m-all"}, synthesizer={"model": "m-syn"})
    server.script("m-all", route_answer("b"))  # the router inherits the file's defaults
    result = invoke("ask", "-c", config, "--route", "-s", "--json", "Why?")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["router"]["selected"] == ["b"]
    assert document["synthesis"]["sources"] == ["b"]


def test_route_dry_run_lists_the_router_first(
    server: FakeOpenAI, config: Path, invoke: Invoke
) -> None:
    result = invoke("ask", "-c", config, "--route", "--dry-run", "--json", "Why?")
    assert result.exit_code == 0, result.output
    names = [c["name"] for c in json.loads(result.stdout)["calls"]]
    assert names == ["router", "physicist", "chemist", "biologist"]
    assert server.count() == 0


def test_route_max_needs_route(config: Path, invoke: Invoke) -> None:
    result = invoke("ask", "-c", config, "--route-max", "2", "Why?")
    assert result.exit_code == 2 and "--route-max goes with --route" in result.stderr


def test_a_routed_run_retries_with_its_router(
    server: FakeOpenAI, config: Path, invoke: Invoke
) -> None:
    server.script("m-router", route_answer("chemist", "biologist"))
    server.script("m-chemist", Fault(500))
    first = routed(invoke, config, "--retries", "0", code=3)
    server.reset()
    result = invoke("runs", "retry", first["run_id"], "--json")
    assert result.exit_code == 0, result.output
    assert [r.model for r in server.requests] == ["m-chemist"]  # the routing is kept
    assert json.loads(result.stdout)["router"]["selected"] == ["chemist", "biologist"]


def test_route_with_map_draws_the_agreement_map_of_the_routed_answers(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    # --map was accepted with --route and silently gave no synthesis at all.
    config = agents_file("a", "b", defaults={"model": "m-all"}, synthesizer={"model": "m-syn"})
    server.script("m-all", route_answer("a", "b"))
    result = invoke("ask", "-c", config, "--route", "--map", "--json", "Why?")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["synthesis"]["sources"] == ["a", "b"]
    syn = [r for r in server.requests if r.model == "m-syn"]
    assert syn[0].body["response_format"]["json_schema"]["name"] == "agreement_map"
