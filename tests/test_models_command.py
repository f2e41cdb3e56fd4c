"""``fanout models`` (issue 25.6): what each configured endpoint serves (GET /v1/models), which
are unreachable, and which personas ask for a model their endpoint does not list."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import MODELS, FakeOpenAI, Fault


def closed_port() -> int:
    """A port nothing listens on (bound, then let go)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listing(invoke: Invoke, config: Path) -> tuple[int, dict[str, Any]]:
    result = invoke("models", "-c", config, "--json")
    assert result.stderr == "", result.stderr
    return result.exit_code, json.loads(result.stdout)


def test_models_lists_each_endpoint_and_says_which_are_unreachable(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.models = ["m-b", "m-a", "m-extra"]
    down = f"http://127.0.0.1:{closed_port()}/v1"
    other = f"http://127.0.0.1:{server.port}"  # the same server by another path
    config = agents_file(
        "a",
        "b",
        "c",
        synthesizer={"model": "m-a"},
        extra={"b": {"base_url": other}, "c": {"base_url": down, "fallbacks": ["m-a"]}},
    )
    code, document = listing(invoke, config)
    assert code == 3
    by_url = {e["base_url"]: e for e in document["endpoints"]}
    first = by_url[server.base_url]
    assert first["reachable"] is True and first["models"] == ["m-a", "m-b", "m-extra"]
    assert first["used_by"]["a"] == "m-a" and first["used_by"]["synthesizer"] == "m-a"
    assert by_url[other]["models"] == ["m-a", "m-b", "m-extra"]
    assert by_url[other]["used_by"] == {"b": "m-b"}
    assert by_url[down]["reachable"] is False
    assert by_url[down]["error"].startswith("unreachable: connection failed")
    assert by_url[down]["used_by"] == {"c": "m-c", "c (fallback 1)": "m-a"}
    text = invoke("models", "-c", config)
    assert text.exit_code == 3
    assert f"{server.base_url} ($OPENAI_API_KEY) · used by a, synthesizer\n" in text.stdout
    assert "  * m-a\n    m-b\n    m-extra\n" in text.stdout  # * the panel asks for it here
    assert "✗ unreachable: connection failed" in text.stdout


def test_a_persona_whose_model_is_not_listed_is_named(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.models = ["m-a"]
    config = agents_file("a", "b", synthesizer={"model": "m-a"})
    code, document = listing(invoke, config)
    assert code == 0
    assert document["endpoints"][0]["not_listed"] == {"b": "m-b"}
    assert "! b asks for m-b, which it does not list" in invoke("models", "-c", config).stdout


def test_a_refused_key_and_a_missing_key(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script(MODELS, Fault(401, body={"error": {"message": "Incorrect API key"}}))
    config = agents_file(
        "a",
        "b",
        synthesizer={"model": "m-a"},
        extra={"b": {"base_url": "https://api.example.com/v1", "api_key_env": "EXAMPLE_KEY"}},
    )
    code, document = listing(invoke, config)
    assert code == 1
    errors = {e["host"]: e["error"] for e in document["endpoints"]}
    assert errors["127.0.0.1"].startswith("key refused: HTTP 401: Incorrect API key")
    assert errors["api.example.com"] == "not asked: no key in $EXAMPLE_KEY"


def test_what_a_server_names_is_shown_not_acted_on(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.models = ["m-a", "evil\x1b]0;title\x07"]
    result = invoke("models", "-c", agents_file("a", synthesizer={"model": "m-a"}))
    assert "\x1b" not in result.stdout and "evil\\x1b]0;title\\x07" in result.stdout


def test_an_ollama_tag_is_the_same_model(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.models = ["m-a:latest", "m-b"]
    code, document = listing(invoke, agents_file("a", "b", synthesizer={"model": "m-a"}))
    assert code == 0 and document["endpoints"][0]["not_listed"] == {}
