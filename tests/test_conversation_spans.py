"""A conversation in OpenTelemetry: every span of every turn carries the conversation's id."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
pytest.importorskip("opentelemetry.proto")

from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI
from tests.otlpreceiver import OtlpReceiver
from tests.test_chat import asked


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", running.endpoint)
        yield running


def test_every_span_of_both_turns_carries_the_conversation_id(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, receiver: OtlpReceiver
) -> None:
    config = agents_file("physicist", "chemist")
    first = asked(invoke, "-c", config, "-s", "What is temperature?")
    second = asked(invoke, "-c", config, "-s", "--continue", "And at absolute zero?")
    spans = receiver.spans
    assert {s.trace_id for s in spans} == {first["trace_id"], second["trace_id"]}
    assert len(spans) == 2 * (1 + 3 + 3)  # a run, three calls, a request each; twice
    assert {s.attributes["gen_ai.conversation.id"] for s in spans} == {first["run_id"]}
    runs = sorted(
        (s for s in spans if s.name == "invoke_workflow fanout"), key=lambda s: s.start_ns
    )
    assert [r.attributes["fanout.run.turn"] for r in runs] == [1, 2]
