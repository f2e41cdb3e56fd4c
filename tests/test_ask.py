"""``fanout ask`` end to end: the real CLI, the real openai client, the loopback test server."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from fanout.cli import app
from tests.conftest import SENTINEL_KEY, AgentsFile, Invoke, assert_usage_error
from tests.fakeserver import FakeOpenAI, Fault, Reply


def test_every_persona_answers_in_a_table(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file()
    result = invoke("ask", "-c", config, "What is temperature?")
    assert result.exit_code == 0, result.output
    for name in ("physicist", "chemist", "biologist"):
        assert name in result.stdout
        assert f"m-{name} says: What is temperature?" in result.stdout
    assert "3/3 answered" in result.stdout
    assert "says:" not in result.stderr  # answers go to stdout only
    assert server.count() == 3


def test_personas_are_asked_concurrently(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    # Each request is held until all four are in flight at once: a sequential client never
    # gets past the first one.
    server.default = Reply(gate=4)
    config = agents_file("a", "b", "c", "d")
    result = invoke("ask", "-c", config, "--json", "hello")
    assert result.exit_code == 0, result.output
    assert server.max_in_flight == 4


def test_concurrency_flag_caps_requests_in_flight(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.default = Reply(gate=2)
    config = agents_file("a", "b", "c", "d", "e")
    result = invoke("ask", "-c", config, "--json", "--concurrency", "2", "hello")
    assert result.exit_code == 0, result.output
    assert server.max_in_flight == 2
    assert server.count() == 5


def test_json_document_keeps_panel_order_whatever_finishes_first(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-first", Reply(text="slow answer", latency=0.3))
    server.script("m-second", Reply(text="fast answer"))
    config = agents_file("first", "second")
    result = invoke("ask", "-c", config, "--json", "Why?")
    assert result.exit_code == 0, result.output
    assert result.stderr == "" or "says" not in result.stderr
    document = json.loads(result.stdout)
    assert document["schema_version"] == 2
    assert document["status"] == "completed"
    assert document["prompt"] == "Why?"
    assert [a["name"] for a in document["agents"]] == ["first", "second"]
    assert document["output"] == {"first": "slow answer", "second": "fast answer"}
    first = document["agents"][0]
    assert first["status"] == "ok"
    assert first["model"] == "m-first"
    assert first["error"] is None
    assert first["attempts"] == 1
    assert first["latency_s"] >= 0
    assert set(first["usage"]) == {"input_tokens", "output_tokens", "total_tokens"}
    assert document["usage"]["total_tokens"] == sum(
        a["usage"]["total_tokens"] for a in document["agents"]
    )
    assert document["synthesis"] is None
    assert {"run_id", "started_at", "finished_at", "duration_s"} <= set(document)


def test_persona_sends_its_instructions_and_parameters(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file(
        "physicist",
        defaults={"temperature": 0.2},
        extra={"physicist": {"top_p": 0.5, "max_tokens": 64}},
    )
    result = invoke("ask", "-c", config, "Why?")
    assert result.exit_code == 0, result.output
    body = server.requests[0].body
    assert body["messages"] == [
        {"role": "system", "content": "You are a physicist."},
        {"role": "user", "content": "Why?"},
    ]
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.2, 0.5, 64)


def test_output_file_gets_the_document_and_the_table_still_shows(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    config = agents_file()
    target = tmp_path / "run.json"
    result = invoke("ask", "-c", config, "-o", target, "Why?")
    assert result.exit_code == 0, result.output
    assert "physicist" in result.stdout
    document = json.loads(target.read_text())
    assert document["status"] == "completed"
    assert len(document["agents"]) == 3


def test_output_into_missing_directory_is_a_usage_error(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    result = invoke("ask", "-c", agents_file(), "-o", tmp_path / "nope" / "x.json", "Why?")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "--output" in result.stderr
    assert server.count() == 0


def test_agents_flag_runs_a_subset(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file()
    result = invoke("ask", "-c", config, "--json", "-a", "chemist,physicist", "Why?")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [a["name"] for a in document["agents"]] == ["chemist", "physicist"]
    assert sorted(r.model for r in server.requests) == ["m-chemist", "m-physicist"]


def test_unknown_agent_suggests_the_closest_name(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    result = invoke("ask", "-c", agents_file(), "-a", "physicst", "Why?")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "unknown agent 'physicst'" in result.stderr
    assert "did you mean 'physicist'?" in result.stderr
    assert server.count() == 0


def test_model_flag_overrides_every_persona(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    result = invoke("ask", "-c", agents_file(), "--json", "-m", "llama3", "Why?")
    assert result.exit_code == 0, result.output
    assert {r.model for r in server.requests} == {"llama3"}
    assert {a["model"] for a in json.loads(result.stdout)["agents"]} == {"llama3"}


@pytest.mark.parametrize("args", [["-"], []])
def test_prompt_from_stdin(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, args: list[str]
) -> None:
    result = invoke("ask", "-c", agents_file("physicist"), "--json", *args, input="Piped?\n")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["prompt"] == "Piped?"
    assert server.requests[0].body["messages"][-1]["content"] == "Piped?"


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt_is_a_usage_error(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, prompt: str
) -> None:
    result = invoke("ask", "-c", agents_file(), prompt)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "prompt is empty" in result.stderr
    assert server.count() == 0


def test_some_personas_failing_is_partial_with_exit_3(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-chemist", Fault(400))
    result = invoke("ask", "-c", agents_file(), "--json", "Why?")
    assert result.exit_code == 3, result.output
    document = json.loads(result.stdout)
    assert document["status"] == "partial"
    chemist = document["agents"][1]
    assert chemist["status"] == "error"
    assert chemist["answer"] is None
    assert chemist["error"]["type"] == "bad_request"
    assert chemist["error"]["status_code"] == 400
    assert "fake 400 error" in chemist["error"]["message"]
    assert set(document["output"]) == {"physicist", "biologist"}


def test_table_shows_failures_inline(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-chemist", Fault(404))
    result = invoke("ask", "-c", agents_file(), "Why?")
    assert result.exit_code == 3
    assert "m-physicist says: Why?" in result.stdout
    assert "not_found" in result.stdout
    assert "chemist: failed" in result.stderr


def test_every_persona_failing_exits_1(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.default = Fault(403)
    result = invoke("ask", "-c", agents_file(), "--json", "Why?")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["status"] == "failed"
    assert document["output"] == {}


def test_synthesis_merges_the_answers(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-synth", Reply(text="merged view"))
    config = agents_file(synthesizer={"model": "m-synth", "instructions": "Merge them."})
    result = invoke("ask", "-c", config, "--json", "-s", "Why?")
    assert result.exit_code == 0, result.output
    synthesis = json.loads(result.stdout)["synthesis"]
    assert synthesis["status"] == "ok"
    assert synthesis["answer"] == "merged view"
    assert synthesis["partial"] is False
    assert synthesis["sources"] == ["physicist", "chemist", "biologist"]
    request = next(r for r in server.requests if r.model == "m-synth")
    assert request.body["messages"][0] == {"role": "system", "content": "Merge them."}
    merged_input = request.body["messages"][1]["content"]
    assert "m-physicist says: Why?" in merged_input
    assert "m-biologist says: Why?" in merged_input


def test_synthesis_after_a_failure_is_partial_and_says_so(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    # Not a 401: a refused key closes the endpoint, the synthesizer's too (it shares it).
    server.script("m-chemist", Fault(400))
    config = agents_file(synthesizer={"model": "m-synth"})
    result = invoke("ask", "-c", config, "-s", "Why?")
    assert result.exit_code == 3
    assert "partial (no answer from chemist)" in result.stdout
    request = next(r for r in server.requests if r.model == "m-synth")
    assert "chemist" in request.body["messages"][1]["content"]
    assert "m-chemist says" not in request.body["messages"][1]["content"]


def test_synthesis_uses_a_default_persona_without_synthesizer_section(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("physicist", defaults={"model": "m-default"})
    result = invoke("ask", "-c", config, "--json", "-s", "Why?")
    assert result.exit_code == 0, result.output
    synthesis = json.loads(result.stdout)["synthesis"]
    assert synthesis["name"] == "synthesizer"
    assert synthesis["model"] == "m-default"
    assert "moderator" in server.requests[-1].body["messages"][0]["content"]


def test_synthesis_is_skipped_when_nobody_answered(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.default = Fault(400)
    config = agents_file(synthesizer={"model": "m-synth"})
    result = invoke("ask", "-c", config, "--json", "-s", "Why?")
    assert result.exit_code == 1
    synthesis = json.loads(result.stdout)["synthesis"]
    assert synthesis["status"] == "skipped"
    assert server.count("m-synth") == 0


def test_remote_endpoint_without_key_is_a_config_error(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("physicist", defaults={"base_url": "https://api.example.com/v1"})
    result = invoke("ask", "-c", config, "Why?")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "$OPENAI_API_KEY" in result.stderr
    assert "api.example.com" in result.stderr


def test_named_key_variable_is_required_and_named(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file(
        "physicist",
        defaults={"base_url": "https://openrouter.example/api/v1", "api_key_env": "ROUTER_KEY"},
    )
    result = invoke("ask", "-c", config, "Why?")
    assert result.exit_code == 2
    assert "$ROUTER_KEY" in result.stderr


def test_key_is_sent_but_never_shown(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("FANOUT_TEST_KEY", SENTINEL_KEY)
    # A misbehaving proxy echoes the key back in its error message.
    server.script("m-chemist", Fault(401, body={"error": {"message": f"bad key {SENTINEL_KEY}"}}))
    config = agents_file("physicist", "chemist", defaults={"api_key_env": "FANOUT_TEST_KEY"})
    out = tmp_path / "out.json"
    result = invoke("ask", "-c", config, "-o", out, "Why?")
    assert result.exit_code == 3
    assert server.requests[0].headers["authorization"] == f"Bearer {SENTINEL_KEY}"
    assert "bad key" in result.stdout
    for text in (result.stdout, result.stderr, out.read_text()):
        assert SENTINEL_KEY not in text
        assert "SENTINEL" not in text


def test_local_endpoint_needs_no_key(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    result = invoke("ask", "-c", agents_file("physicist"), "Why?")
    assert result.exit_code == 0, result.output


def test_openai_base_url_env_applies_when_the_file_names_no_endpoint(
    server: FakeOpenAI, invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    config = tmp_path / "plain.yaml"
    config.write_text("agents:\n  - name: solo\n    model: m-solo\n")
    result = invoke("ask", "-c", config, "Why?")
    assert result.exit_code == 0, result.output
    assert server.count("m-solo") == 1


def test_a_key_with_a_line_break_is_refused_before_any_call(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROKEN_KEY", "Zx9+SECRET/base64key==\n")
    config = agents_file(
        "a", defaults={"base_url": "https://api.example.invalid/v1", "api_key_env": "BROKEN_KEY"}
    )
    result = invoke("ask", "-c", config, "Why?")
    assert result.exit_code == 2
    assert "$BROKEN_KEY" in result.stderr
    assert "SECRET" not in result.stderr + result.stdout


def test_openai_org_and_project_never_reach_another_server(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_ORG_ID", "org-MYORG")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj_MYPROJ")
    result = invoke("ask", "-c", agents_file("a"), "Why?")
    assert result.exit_code == 0
    headers = server.requests[0].headers
    assert "openai-organization" not in headers
    assert "openai-project" not in headers


def test_a_name_that_only_looks_like_loopback_needs_a_key(
    agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("a", defaults={"base_url": "http://127.evil.example/v1"})
    result = invoke("ask", "-c", config, "Why?")
    assert result.exit_code == 2
    assert "$OPENAI_API_KEY" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [(["-o", "."], "is a directory"), (["-m", " "], "--model")],
    ids=["output-dir", "empty-model"],
)
def test_bad_flag_values_are_usage_errors(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, args: list[str], message: str
) -> None:
    result = invoke("ask", "-c", agents_file("a"), *args, "Why?")
    assert result.exit_code == 2
    assert message in result.stderr
    assert server.count() == 0


def test_a_prompt_that_is_not_utf8_is_a_usage_error(
    server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    result = CliRunner().invoke(app, ["ask", "-c", str(agents_file("a"))], input=b"caf\xe9\n")
    assert result.exit_code == 2
    assert "not UTF-8" in result.stderr
    assert server.count() == 0


# --- the command line as people type it --------------------------------------------------------


def test_a_question_alone_is_asked_like_fanout_ask(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("physicist", "chemist")
    for args in (["What is temperature?", "-c", config], ["-c", config, "Why?"]):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("## physicist\nm-physicist says: "), result.stdout
    # Subcommands, the version and the help are what they were; a typo of a command says so.
    assert invoke("--version").stdout.startswith("fanout ")
    assert "Commands" in invoke("--help").stdout
    assert "did you mean ask? To ask it, fanout ask aks" in invoke("aks", "Why?").stderr
    assert invoke("agents", "-c", config).exit_code == 0


@pytest.mark.parametrize("word", ["hi", "why", "Temperature", "ask-me"])
def test_a_first_word_that_is_no_command_is_a_question(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, word: str
) -> None:
    # `fanout hi` and `fanout why` said "No such command".
    result = invoke(word, "-c", agents_file("physicist"))
    assert result.exit_code == 0, result.output
    assert f"m-physicist says: {word}" in result.stdout


@pytest.mark.parametrize(
    ("typo", "command"),
    [("runz", "runs"), ("Runs", "runs"), ("flwo", "flow"), ("agnets", "agents")],
)
def test_a_near_miss_of_a_command_says_which_and_how_to_ask_it(
    server: FakeOpenAI, invoke: Invoke, typo: str, command: str
) -> None:
    assert_usage_error(
        invoke(typo), f"No such command '{typo}': did you mean {command}? To ask it, fanout ask"
    )
    assert server.count() == 0


def test_help_as_a_word_shows_the_help(invoke: Invoke) -> None:
    assert "Commands" in invoke("help").stdout
    assert "fanout runs [OPTIONS] COMMAND" in invoke("help", "runs").stdout


def test_agents_repeat_merge_commas_and_match_any_case(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("physicist", "chemist", "biologist")
    result = invoke(
        "ask", "-c", config, "--json", "-a", "physicist", "-a", "CHEMIST,Physicist", "Why?"
    )
    assert result.exit_code == 0, result.output
    assert [a["name"] for a in json.loads(result.stdout)["agents"]] == ["physicist", "chemist"]
    assert sorted(r.model for r in server.requests) == ["m-chemist", "m-physicist"]


def test_an_unknown_persona_names_the_closest_and_the_whole_panel(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    result = invoke("ask", "-c", agents_file(), "-a", "physicst", "Why?")
    assert_usage_error(
        result, "did you mean 'physicist'?", "the panel has physicist, chemist, biologist"
    )


def test_init_writes_the_shipped_panel_and_never_overwrites(invoke: Invoke) -> None:
    from fanout.config import default_panel_text

    written = invoke("init")
    assert written.exit_code == 0, written.output
    target = Path("agents.yaml")
    assert target.read_text(encoding="utf-8") == default_panel_text()
    target.write_text(default_panel_text() + "# mine\n", encoding="utf-8")
    refused = invoke("init")
    assert_usage_error(refused, "already exists")
    assert target.read_text(encoding="utf-8").endswith("# mine\n")
    listed = invoke("agents")
    assert listed.exit_code == 0, listed.output
    assert "".join(str(target.absolute()).split()) in "".join(listed.stdout.split())


def test_agents_shows_each_endpoint_as_host_and_port(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    port = urlsplit(server.base_url).port
    shown = invoke("agents", "-c", agents_file("physicist"))
    assert shown.exit_code == 0, shown.output
    assert f"127.0.0.1:{port}" in shown.stdout
    assert "api.openai.com:443" in invoke("agents").stdout  # the shipped panel's synthesizer
    assert "shippedwithfanout" in "".join(invoke("agents").stdout.split())


def test_ask_help_keeps_the_extra_and_shows_no_bool_metavars(invoke: Invoke) -> None:
    shown = invoke("ask", "--help")
    assert shown.exit_code == 0, shown.output
    # Rich markup would eat "[local]"; the help wraps, so read it as one line of words.
    assert "pip install 'fanout[local]'" in " ".join(shown.stdout.replace("│", " ").split())
    lines = shown.stdout.splitlines()
    flags = [line for line in lines if line.startswith(("│ --synthesize ", "│ --vote "))]
    assert len(flags) == 2 and not any("<bool>" in line for line in flags), flags
