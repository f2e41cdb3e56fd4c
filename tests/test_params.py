"""Request parameters (issue 25.1): a persona's params: (and the defaults'), extra_body and
extra_headers, --param key=value, persona variants (-a name@key=v1,v2), and how the answer's
bound is sent to reasoning models. Every check reads the request bodies the loopback server
received."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AgentsFile, Invoke, assert_usage_error
from tests.fakeserver import FakeOpenAI, Fault


def bodies(server: FakeOpenAI, model: str | None = None) -> list[dict[str, Any]]:
    return [r.body for r in server.requests if model is None or r.model == model]


def only_body(server: FakeOpenAI, model: str) -> dict[str, Any]:
    found = bodies(server, model)
    assert len(found) == 1, found
    return found[0]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "panel.yaml"
    path.write_text(textwrap.dedent(text).removeprefix("\n"), encoding="utf-8")
    return path


def ask_json(invoke: Invoke, *args: str | Path) -> dict[str, Any]:
    result = invoke("ask", *args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    document: dict[str, Any] = json.loads(result.stdout)
    return document


# -- params arrive as given ------------------------------------------------------------------


def test_params_arrive_as_given(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    config = agents_file(
        "a",
        "b",
        defaults={"temperature": 0.2, "params": {"seed": 7, "user": "team"}},
        extra={
            "a": {
                "params": {
                    "seed": 42,
                    "top_p": 0.5,
                    "stop": ["END"],
                    "presence_penalty": -1.5,
                    "logit_bias": {50256: -100},
                    "response_format": schema,
                },
                "frequency_penalty": 0.5,  # at the top works too
            },
            "b": {"reasoning_effort": "low"},
        },
    )
    document = ask_json(invoke, "-c", config, "Why?")
    a, b = only_body(server, "m-a"), only_body(server, "m-b")
    assert {k: a[k] for k in a if k not in ("model", "messages")} == {
        "temperature": 0.2,
        "seed": 42,
        "user": "team",
        "top_p": 0.5,
        "stop": ["END"],
        "presence_penalty": -1.5,
        "frequency_penalty": 0.5,
        "logit_bias": {"50256": -100},
        "response_format": schema,
    }
    assert b["seed"] == 7 and b["reasoning_effort"] == "low" and b["temperature"] == 0.2
    assert "top_p" not in b and "max_tokens" not in b
    calls = {c["name"]: c for c in document["agents"]}
    assert calls["b"]["params"] == {
        "temperature": 0.2,
        "seed": 7,
        "user": "team",
        "reasoning_effort": "low",
    }
    assert calls["a"]["params"]["seed"] == 42


@pytest.mark.parametrize(
    ("yaml_text", "fragments"),
    [
        (
            """
            agents:
              - name: a
                params:
                  reasoning_efort: low
            """,
            ("panel.yaml:4", "reasoning_efort", "did you mean 'reasoning_effort'?"),
        ),
        (
            """
            agents:
              - name: a
                reasoning_efort: low
            """,
            ("panel.yaml:3", "agents[0] (a).reasoning_efort", "did you mean 'reasoning_effort'?"),
        ),
        (
            """
            defaults:
              reasoning_effort: hihg
            agents:
              - name: a
            """,
            ("panel.yaml:2", "defaults.reasoning_effort", "did you mean 'high'?"),
        ),
        (
            """
            agents:
              - name: a
                params: {temperature: 3}
            """,
            ("panel.yaml:3", "params.temperature", "less than or equal to 2"),
        ),
        (
            """
            agents:
              - name: a
                seed: "42"
            """,
            ("panel.yaml:3", "seed", "valid integer"),
        ),
        (
            """
            agents:
              - name: a
                temperature: 0.5
                params: {temperature: 0.7}
            """,
            ("panel.yaml:2", "temperature is set twice"),
        ),
        (
            """
            agents:
              - name: a
                max_tokens: 10
                params: {max_completion_tokens: 20}
            """,
            ("panel.yaml:2", "max_tokens and max_completion_tokens: give one"),
        ),
        (
            """
            agents:
              - name: a
                params: {n: 3}
            """,
            ("panel.yaml:3", "-a NAME:N"),
        ),
        (
            """
            agents:
              - name: a
                extra_body: {stream: false}
            """,
            ("panel.yaml:3", "extra_body", "'stream' is set by fanout itself"),
        ),
        (
            """
            agents:
              - name: a
                response_format: {type: xml}
            """,
            ("panel.yaml:3", "response_format", "json_schema"),
        ),
        (
            """
            agents:
              - name: a
                logit_bias: {hello: 3}
            """,
            ("panel.yaml:3", "logit_bias", "token id"),
        ),
    ],
)
def test_a_bad_parameter_is_one_line_naming_file_line_and_key(
    tmp_path: Path, invoke: Invoke, yaml_text: str, fragments: tuple[str, ...]
) -> None:
    config = write(tmp_path, yaml_text)
    assert_usage_error(invoke("ask", "-c", config, "Why?"), *fragments)


def test_extra_body_arrives_untouched(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    nested = {"top_k": 40, "thinking": {"type": "enabled", "budget_tokens": 1024}, "x": [1, None]}
    config = agents_file(
        "a", defaults={"extra_body": {"top_k": 1, "a": "b"}}, extra={"a": {"extra_body": nested}}
    )
    ask_json(invoke, "-c", config, "Why?")
    body = only_body(server, "m-a")
    assert body["thinking"] == nested["thinking"] and body["x"] == [1, None]
    assert body["top_k"] == 40 and body["a"] == "b"  # the persona's keys over the defaults'


def test_extra_headers_are_sent_and_never_shown(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    secret, literal = "hdr-SECRET-9f8e7d6c5b", "plain-LITERAL-1234"
    monkeypatch.setenv("GATEWAY_KEY", secret)
    headers = {"X-Gateway-Key": "Bearer ${GATEWAY_KEY}", "X-Title": literal}
    config = agents_file("a", "b", extra={"a": {"extra_headers": headers}})
    # The gateway echoes the headers back in its error, as some do.
    echo = f"bad key {secret} for {literal}"
    server.script("m-a", Fault(400, body={"error": {"message": echo}}))
    result = invoke("ask", "-c", config, "--json", "Why?")
    assert result.exit_code == 3, result.output
    sent = [r.headers for r in server.requests if r.model == "m-a"]
    assert sent[0]["x-gateway-key"] == f"Bearer {secret}" and sent[0]["x-title"] == literal
    assert "x-gateway-key" not in next(r for r in server.requests if r.model == "m-b").headers
    dry = invoke("ask", "-c", config, "--dry-run", "--json", "Why?")
    history = tmp_path / "xdg-data"
    stored = b"".join(p.read_bytes() for p in history.rglob("*") if p.is_file())
    for text in (result.stdout, result.stderr, dry.stdout):
        assert secret not in text and literal not in text
    assert secret.encode() not in stored and literal.encode() not in stored
    entry = {c["name"]: c for c in json.loads(result.stdout)["agents"]}
    assert entry["a"]["params"]["extra_headers"] == {"X-Gateway-Key": "***", "X-Title": "***"}
    assert entry["a"]["error"]["message"] == "HTTP 400: bad key *** for ***"


def test_a_header_variable_that_is_not_set_is_an_error_before_any_call(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("a", extra={"a": {"extra_headers": {"X-Key": "${NOT_SET_ANYWHERE}"}}})
    assert_usage_error(invoke("ask", "-c", config, "Why?"), "X-Key", "$NOT_SET_ANYWHERE")
    assert server.count() == 0


# -- --param -------------------------------------------------------------------------------


def test_param_flag_is_typed_from_its_value_and_reaches_every_persona(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("a", "b", extra={"a": {"params": {"seed": 1, "user": "x"}}})
    document = ask_json(
        invoke, "-c", config, "-s", "Why?",
        "--param", "seed=42", "--param", "temperature=0.5", "--param", 'stop=["END", "STOP"]',
        "--param", "user=007", "--param", "logprobs=true", "--param", 'metadata={"k": "v"}',
    )  # fmt: skip
    for model in ("m-a", "m-b"):
        body = only_body(server, model)
        assert body["seed"] == 42 and isinstance(body["seed"], int)
        assert body["temperature"] == 0.5 and body["stop"] == ["END", "STOP"]
        assert body["user"] == "007" and body["logprobs"] is True
        assert body["metadata"] == {"k": "v"}
    synthesis = [b for b in bodies(server) if b["model"] not in ("m-a", "m-b")]
    assert synthesis and "seed" not in synthesis[0]  # personas only, not the synthesizer
    assert document["agents"][0]["params"]["seed"] == 42


@pytest.mark.parametrize(
    ("value", "fragments"),
    [
        ("reasoning_efort=low", ("--param", "did you mean 'reasoning_effort'?")),
        ("temperature=hot", ("--param", "temperature", "valid number")),
        ("seed", ("--param", "KEY=VALUE")),
        ("top_p=1.5", ("--param", "top_p", "less than or equal to 1")),
        ("stop=[1", ("--param", "not JSON")),
        ("n=2", ("--param", "-a NAME:N")),
    ],
)
def test_a_bad_param_flag_is_a_usage_error(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, value: str, fragments: tuple[str]
) -> None:
    config = agents_file("a")
    assert_usage_error(invoke("ask", "-c", config, "--param", value, "Why?"), *fragments)
    assert server.count() == 0


def test_param_flag_in_batch_and_flow(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    config = agents_file("a")
    prompts = tmp_path / "q.txt"
    prompts.write_text("one\ntwo\n", encoding="utf-8")
    result = invoke("batch", prompts, "-c", config, "--param", "seed=3")
    assert result.exit_code == 0, result.output
    assert [b["seed"] for b in bodies(server)] == [3, 3]
    assert all(json.loads(line)["params"] == {"seed": 3} for line in result.stdout.splitlines())
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        "name: f\ninputs:\n  topic: {required: true}\nstages:\n"
        "  - id: first\n    agent: a\n    prompt: 'Say {{topic}}'\n",
        encoding="utf-8",
    )
    server.reset()
    result = invoke("flow", "run", flow, "-c", config, "-i", "topic=x", "--param", "seed=5")
    assert result.exit_code == 0, result.output
    assert [b["seed"] for b in bodies(server)] == [5]


# -- variants ------------------------------------------------------------------------------


def test_a_persona_varied_across_values_makes_a_panel(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("analyst", "other", extra={"analyst": {"params": {"seed": 1}}})
    document = ask_json(
        invoke, "-c", config, "-a", "other,Analyst@reasoning_effort=low,medium,high", "Q"
    )
    names = [c["name"] for c in document["agents"]]
    assert names == [
        "other",
        "analyst@reasoning_effort=low",
        "analyst@reasoning_effort=medium",
        "analyst@reasoning_effort=high",
    ]
    efforts = sorted(b["reasoning_effort"] for b in bodies(server, "m-analyst"))
    assert efforts == ["high", "low", "medium"]
    assert all(b["seed"] == 1 for b in bodies(server, "m-analyst"))
    assert set(document["output"]) == set(names)


def test_a_bad_variant_is_a_usage_error(agents_file: AgentsFile, invoke: Invoke) -> None:
    config = agents_file("analyst")
    assert_usage_error(
        invoke("ask", "-c", config, "-a", "analyst@temperature=0,9", "Q"),
        "--agents",
        "less than or equal to 2",
    )
    assert_usage_error(
        invoke("ask", "-c", config, "-a", "nobody@temperature=0,1", "Q"), "unknown agent"
    )
    assert_usage_error(invoke("ask", "-c", config, "-a", "analyst@seed=1,1", "Q"), "twice")


def test_personas_at_two_reasoning_efforts_in_the_file(
    server: FakeOpenAI, tmp_path: Path, invoke: Invoke
) -> None:
    config = write(
        tmp_path,
        f"""
        defaults:
          base_url: {server.base_url}
          model: o3-mini
        agents:
          - name: o-low
            reasoning_effort: low
          - name: o-high
            reasoning_effort: high
        """,
    )
    document = ask_json(invoke, "-c", config, "Q")
    assert sorted(b["reasoning_effort"] for b in bodies(server)) == ["high", "low"]
    assert {c["name"]: c["params"] for c in document["agents"]} == {
        "o-low": {"reasoning_effort": "low"},
        "o-high": {"reasoning_effort": "high"},
    }


# -- the answer's bound --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "written", "sent"),
    [
        ("gpt-4o-mini", "max_tokens", "max_tokens"),
        ("o3-mini", "max_tokens", "max_completion_tokens"),
        ("openai/gpt-5-nano", "max_tokens", "max_completion_tokens"),
        ("gpt-4o-mini", "max_completion_tokens", "max_completion_tokens"),  # the file's word
    ],
)
def test_the_bound_goes_under_the_name_the_model_takes(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, model: str, written: str, sent: str
) -> None:
    config = agents_file("a", extra={"a": {"model": model, written: 77}})
    document = ask_json(invoke, "-c", config, "Q")
    body = only_body(server, model)
    assert body[sent] == 77
    (other,) = {"max_tokens", "max_completion_tokens"} - {sent}
    assert other not in body
    assert document["agents"][0]["params"] == {written: 77}


def test_a_server_that_refuses_the_bound_name_is_asked_again_with_the_other(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    refusal = (
        "Unsupported parameter: 'max_tokens' is not supported with this model. "
        "Use 'max_completion_tokens' instead."
    )
    server.script("deploy-1", Fault(400, body={"error": {"message": refusal}}))
    config = agents_file("a", "b", extra={n: {"model": "deploy-1", "max_tokens": 5} for n in "ab"})
    document = ask_json(invoke, "-c", config, "--concurrency", "1", "Q")
    assert document["status"] == "completed"
    sent = [("max_tokens" in b, b.get("max_completion_tokens")) for b in bodies(server)]
    assert sent == [(True, None), (False, 5), (False, 5)]  # learned once, for the model


# -- the history: runs retry asks with the same parameters ---------------------------------


def test_runs_retry_asks_with_the_recorded_parameters(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW", "gw-value-0001")
    config = agents_file(
        "analyst",
        extra={
            "analyst": {
                "params": {"seed": 1},
                "extra_body": {"top_k": 3},
                "extra_headers": {"X-Gw": "${GW}"},
            }
        },
    )
    server.script("m-analyst", Fault(500), Fault(500))
    first = invoke(
        "ask", "-c", config, "--retries", "0", "--param", "user=u1", "--json",
        "-a", "analyst@reasoning_effort=low,high", "Q",
    )  # fmt: skip
    assert first.exit_code == 1, first.output
    server.reset()
    again = invoke("runs", "retry", json.loads(first.stdout)["run_id"], "--json")
    assert again.exit_code == 0, again.output
    sent = sorted(bodies(server), key=lambda b: str(b["reasoning_effort"]))
    assert [b["reasoning_effort"] for b in sent] == ["high", "low"]
    for body in sent:
        assert body["seed"] == 1 and body["user"] == "u1" and body["top_k"] == 3
    assert all(r.headers["x-gw"] == "gw-value-0001" for r in server.requests)


def test_the_history_never_holds_a_literal_header_value(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    config = agents_file("a", extra={"a": {"extra_headers": {"X-Literal": "abcd-1234-literal"}}})
    server.script("m-a", Fault(500))
    first = invoke("ask", "-c", config, "--retries", "0", "--json", "Q")
    (database,) = (tmp_path / "xdg-data").rglob("*.db")
    with sqlite3.connect(database) as db:
        dump = "\n".join(db.iterdump())
    assert "abcd-1234-literal" not in dump and "X-Literal" in dump
    # Not recorded, so not sendable: the retry says how to make it so.
    again = invoke("runs", "retry", json.loads(first.stdout)["run_id"])
    assert_usage_error(again, "X-Literal", "${VAR}")


def test_dry_run_shows_the_parameters(agents_file: AgentsFile, invoke: Invoke) -> None:
    config = agents_file("a", extra={"a": {"reasoning_effort": "high", "max_tokens": 9}})
    result = invoke("ask", "-c", config, "--dry-run", "--json", "--param", "seed=4", "Q")
    assert result.exit_code == 0, result.output
    (call,) = json.loads(result.stdout)["calls"]
    assert call["params"] == {"max_tokens": 9, "reasoning_effort": "high", "seed": 4}
    table = invoke("ask", "-c", config, "--dry-run", "--param", "seed=4", "Q")
    assert "reasoning_effort=high" in table.stdout and "seed=4" in table.stdout
