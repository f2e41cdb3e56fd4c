"""OpenTelemetry: every run's spans reach a real OTLP/HTTP receiver, shaped by the GenAI
semantic conventions, with the run's own trace and span ids; nothing of it loads unless asked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
pytest.importorskip("opentelemetry.proto")

from fanout.tracing import parse_traceparent, traceparent
from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI, Fault, Hang, Reply
from tests.otlpreceiver import OtlpReceiver, ReceivedSpan

INTERNAL, CLIENT, ERROR = 1, 3, 2
QUICK_503 = Fault(503, headers={"retry-after-ms": "1"})
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", running.endpoint)
        yield running


def one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    (found,) = [s for s in spans if s.name == name]
    return found


def ask(invoke: Invoke, *args: str | Path) -> dict[str, Any]:
    result = invoke("ask", "--json", *args)
    assert result.exit_code in (0, 3), result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_a_run_exports_workflow_agent_and_chat_spans_with_genai_attributes(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, receiver: OtlpReceiver
) -> None:
    server.script("m-physicist", QUICK_503, Reply(text="second time lucky"))
    server.script("m-chemist", Fault(400, body={"error": {"message": "nope"}}))
    config = agents_file(
        "physicist", "chemist", extra={"physicist": {"temperature": 0.3, "max_tokens": 50}}
    )
    document = ask(invoke, "-c", config, "--synthesize", "Why is the sky blue?")
    spans = receiver.spans
    calls = {c["name"]: c for s in document["stages"] for c in s["calls"]}

    run = one(spans, "invoke_workflow fanout")
    assert (run.trace_id, run.span_id, run.parent_span_id) == (
        document["trace_id"], document["span_id"], ""
    )  # fmt: skip
    assert run.kind == INTERNAL and run.attributes["gen_ai.operation.name"] == "invoke_workflow"
    assert run.resource["service.name"] == "fanout"
    assert {s.trace_id for s in spans} == {document["trace_id"]}

    agents = {
        s.attributes["gen_ai.agent.name"]: s for s in spans if s.name.startswith("invoke_agent")
    }
    assert set(agents) == {"physicist", "chemist", "synthesizer"}
    for name, span in agents.items():
        assert span.name == f"invoke_agent {name}" and span.kind == INTERNAL
        assert span.parent_span_id == run.span_id
        assert span.span_id == calls[name]["timing"]["span_id"]
        assert span.attributes["gen_ai.operation.name"] == "invoke_agent"
        assert span.attributes["gen_ai.provider.name"] == "openai"
        assert span.attributes["gen_ai.request.model"] == calls[name]["model"]
        assert run.start_ns <= span.start_ns <= span.end_ns <= run.end_ns

    physicist = agents["physicist"].attributes
    assert physicist["gen_ai.response.model"] == "m-physicist"
    assert physicist["gen_ai.request.temperature"] == pytest.approx(0.3)
    assert physicist["gen_ai.request.max_tokens"] == 50
    usage = calls["physicist"]["usage"]
    assert physicist["gen_ai.usage.input_tokens"] == usage["input_tokens"]
    assert physicist["gen_ai.usage.output_tokens"] == usage["output_tokens"]
    assert physicist["gen_ai.response.finish_reasons"] == ["stop"]
    assert "error.type" not in physicist
    chemist = agents["chemist"]
    assert chemist.attributes["error.type"] == "bad_request" and chemist.status_code == ERROR
    assert "gen_ai.request.temperature" not in chemist.attributes

    chats = [s for s in spans if s.name.startswith("chat ")]
    sent = {}
    for request in server.requests:
        parent = parse_traceparent(request.headers["traceparent"])
        assert parent is not None
        sent[parent.span_id] = request.model
    # One client span per request, with the span id the request carried.
    assert {c.span_id: c.attributes["gen_ai.request.model"] for c in chats} == sent
    by_parent: dict[str, list[ReceivedSpan]] = {}
    for chat in chats:
        model = chat.attributes["gen_ai.request.model"]
        assert chat.kind == CLIENT and chat.name == f"chat {model}"
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        by_parent.setdefault(chat.parent_span_id, []).append(chat)
    failed, answered = sorted(by_parent[agents["physicist"].span_id], key=lambda s: s.start_ns)
    assert failed.attributes["error.type"] == "server_error" and failed.status_code == ERROR
    assert "gen_ai.usage.output_tokens" not in failed.attributes
    assert answered.attributes["gen_ai.usage.output_tokens"] == usage["output_tokens"]
    assert answered.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert answered.attributes["gen_ai.request.max_tokens"] == 50
    assert failed.end_ns <= answered.start_ns
    # No prompt or answer text unless asked for.
    for span in spans:
        assert not any(k.startswith(("gen_ai.input", "gen_ai.output")) for k in span.attributes)
        assert "Why is the sky blue?" not in json.dumps(span.attributes)


def test_message_content_is_exported_only_when_asked(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    receiver: OtlpReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    server.script("m-physicist", Reply(text="Rayleigh scattering"))
    ask(invoke, "-c", agents_file("physicist"), "Why is the sky blue?")
    chat = next(s for s in receiver.spans if s.name.startswith("chat "))
    sent = json.loads(chat.attributes["gen_ai.input.messages"])
    question = {"type": "text", "content": "Why is the sky blue?"}
    assert sent == [{"role": "user", "parts": [question]}]
    system = json.loads(chat.attributes["gen_ai.system_instructions"])
    assert system == [{"type": "text", "content": "You are a physicist."}]
    (answer,) = json.loads(chat.attributes["gen_ai.output.messages"])
    assert answer["parts"][0]["content"] == "Rayleigh scattering"


def test_a_traceparent_makes_the_run_a_child_of_the_callers_span(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    receiver: OtlpReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRACEPARENT", traceparent("e" * 32, "f" * 16))
    document = ask(invoke, "-c", agents_file("physicist"), "Q")
    run = one(receiver.spans, "invoke_workflow fanout")
    assert (run.trace_id, run.parent_span_id) == ("e" * 32, "f" * 16)
    assert run.span_id == document["span_id"]
    assert {s.trace_id for s in receiver.spans} == {"e" * 32}


def test_retry_spans_join_the_runs_trace_under_its_span(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, receiver: OtlpReceiver
) -> None:
    server.script("m-chemist", Fault(400))
    document = ask(invoke, "-c", agents_file("physicist", "chemist"), "Q")
    before = len(receiver.spans)
    result = invoke("runs", "retry", document["run_id"], "--json")
    assert result.exit_code == 0, result.output
    retried = receiver.spans[before:]
    run = one(retried, "invoke_workflow fanout")
    assert run.trace_id == document["trace_id"] and run.parent_span_id == document["span_id"]
    (agent,) = [s for s in retried if s.name.startswith("invoke_agent")]
    assert agent.name == "invoke_agent chemist" and agent.parent_span_id == run.span_id


def test_nothing_of_opentelemetry_loads_without_the_variable(
    server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    config = agents_file("physicist")
    script = (
        "import sys\n"
        "from fanout.cli import main\n"
        f"sys.argv = ['fanout', 'ask', '-c', {str(config)!r}, '--json', '--no-log', 'Q']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
        "loaded = [m for m in sys.modules if m.startswith(('opentelemetry', 'fanout.telemetry'))]\n"
        "print(loaded, file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(SRC)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "[]"
    assert json.loads(done.stdout)["status"] == "completed"


def test_each_batch_prompt_is_a_run_with_its_spans(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    receiver: OtlpReceiver,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # fanout batch exported nothing: its calls were invisible to the collector.
    monkeypatch.setenv("TRACEPARENT", traceparent("d" * 32, "c" * 16))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Why?\nHow?\nWhen?\n", encoding="utf-8")
    config = agents_file("physicist", "chemist")
    result = invoke("batch", prompts, "-c", config)
    assert result.exit_code == 0, result.output
    spans = receiver.spans
    runs = [s for s in spans if s.name == "invoke_workflow fanout"]
    assert len(runs) == 3  # one per prompt
    assert {(r.trace_id, r.parent_span_id) for r in runs} == {("d" * 32, "c" * 16)}
    agents = [s for s in spans if s.name.startswith("invoke_agent")]
    assert len(agents) == 6 and {a.parent_span_id for a in agents} == {r.span_id for r in runs}
    assert len([s for s in spans if s.name.startswith("chat ")]) == 6


def test_an_interrupted_batch_ends_its_run_spans_and_a_resume_adds_none_for_done_prompts(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    receiver: OtlpReceiver,
    tmp_path: Path,
) -> None:
    # Ctrl-C left the prompt's run span unended (never exported: its calls' spans pointed at
    # a parent nobody had), and a resume exported an empty run for a prompt already done.
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Why?\nHow?\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    config = agents_file("chemist")
    server.script("m-chemist", Reply(text="first"), Hang())
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fanout", "batch", str(prompts), "-c", str(config), "-o", str(out),
         "--concurrency", "1"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        server.wait_for_requests(2, timeout=30)  # prompt 2's call is held
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    spans = receiver.spans
    runs = [s for s in spans if s.name == "invoke_workflow fanout"]
    assert len(runs) == 2
    agents = [s for s in spans if s.name.startswith("invoke_agent")]
    assert {a.parent_span_id for a in agents} <= {r.span_id for r in runs}
    before = len(spans)
    server.script("m-chemist", Reply(text="second"))
    result = invoke("batch", prompts, "-c", config, "-o", out)
    assert result.exit_code == 0, result.output
    resumed = [s for s in receiver.spans[before:] if s.name == "invoke_workflow fanout"]
    assert len(resumed) == 1  # prompt 2 only: prompt 1 was answered whole


@pytest.fixture
def export_timeouts(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """The timeout each OTLP exporter is made with (the real exporter, watched)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    made: list[float | None] = []
    original = OTLPSpanExporter.__init__

    def watched(self: OTLPSpanExporter, *args: Any, **kwargs: Any) -> None:
        made.append(kwargs.get("timeout"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(OTLPSpanExporter, "__init__", watched)
    return made


@pytest.mark.parametrize(
    ("variables", "timeout", "warned"),
    [
        ({}, 5.0, None),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "2.5"}, 2.5, None),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "abc"}, 5.0, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "inf"}, 5.0, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "-1"}, 5.0, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "nan"}, 5.0, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "x", "OTEL_EXPORTER_OTLP_TIMEOUT": "3"},
            5.0,
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        ),
        ({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "yes"}, 5.0, "CAPTURE_MESSAGE"),
        ({"OTEL_BSP_SCHEDULE_DELAY": "abc"}, 5.0, "OTEL_BSP_SCHEDULE_DELAY"),
    ],
)
def test_an_unusable_otel_value_falls_back_with_one_warning(
    variables: dict[str, str],
    timeout: float,
    warned: str | None,
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    receiver: OtlpReceiver,
    export_timeouts: list[float | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # OTEL_EXPORTER_OTLP_TIMEOUT=abc left the SDK's 10 s (added to every command's end while a
    # collector hangs); the SDK logged a bad OTEL_BSP_* value with a traceback.
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    server.script("m-physicist", Reply(text="an answer"))
    result = invoke("ask", "-c", agents_file("physicist"), "--json", "Why?")
    assert result.exit_code == 0, result.output
    assert export_timeouts == [timeout]
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr and "Invalid timeout" not in result.stderr
    if warned is None:
        assert lines == []
    else:
        assert len(lines) == 1 and warned in lines[0] and lines[0].startswith("warning:"), lines
    assert "gen_ai.input.messages" not in one(receiver.spans, "chat m-physicist").attributes
