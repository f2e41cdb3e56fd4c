"""OpenTelemetry spans of every run, sent live over OTLP/HTTP (``pip install 'fanout[otel]'``
and ``OTEL_EXPORTER_OTLP_ENDPOINT`` set), following the GenAI semantic conventions::

    invoke_workflow fanout           the run (INTERNAL), a child of TRACEPARENT's span if given
      invoke_agent {name}            each call (INTERNAL), from queued to its end
        chat {model}                 each attempt that was sent (CLIENT), sent to its end

The spans are the run's own ids: the run's trace id is the trace, and each ``chat`` span's id
is the span id its request carried in ``traceparent``, so a server's logs line up with them.
They are built from the timing the engine records (an observer: nothing here runs inside the
engine), each call's spans as it finishes. Prompt and answer text are sent only with
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``.

The CLI attaches one of these to every run; a server makes one ``Telemetry`` and gives each run
``telemetry.observer()``. This module imports OpenTelemetry: import it only when it is wanted
(``tracing.telemetry_wanted``), so that start-up stays as it is without it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode

from fanout import __version__
from fanout.event import CallFinished, Event, RunFinished, RunStarted
from fanout.models import AttemptTiming, Call, CallResult
from fanout.tracing import CAPTURE_CONTENT_ENV

Attributes = dict[str, Any]
_SAMPLED = trace.TraceFlags(trace.TraceFlags.SAMPLED)
# How long an export may take, retries included, unless OTEL_EXPORTER_OTLP_TIMEOUT says: the
# SDK's 10 s would be added to every command's end while a collector is down.
EXPORT_TIMEOUT_S = 5.0
# In the SDK's order: the traces' own variable first, then the general one.
_TIMEOUT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")


class Telemetry:
    """The export pipeline (a tracer provider and its span processor), shared by the runs of
    a process; ``observer()`` gives each run the observer that turns its events into spans.
    ``shutdown()`` sends what is left (the CLI calls it as the command ends)."""

    def __init__(
        self,
        processor: SpanProcessor | None = None,
        *,
        capture_content: bool | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        self.warnings: list[str] = []  # what the environment asked that could not be done
        if capture_content is None:
            capture_content = self._capture_content(environ)
        self.capture_content = capture_content
        self._ids = _ChosenIds()
        self._lock = threading.Lock()  # the chosen ids are handed over one span at a time
        self._provider = TracerProvider(resource=_resource(), id_generator=self._ids)
        if processor is None:
            _one_line_sdk_warnings()
            exporter = OTLPSpanExporter(timeout=self._export_timeout(environ))
            # Batched: spans are sent from the processor's thread, never from the event loop.
            processor = BatchSpanProcessor(exporter)
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("fanout", __version__)

    def _export_timeout(self, environ: Mapping[str, str]) -> float:
        """The environment's timeout if it is a number of seconds, else fanout's bound (the
        SDK would wait its 10 s for a collector that hangs, at every command's end)."""
        for name in _TIMEOUT_ENVS:
            given = environ.get(name, "").strip()
            if not given:
                continue
            try:
                seconds = float(given)
            except ValueError:
                seconds = math.nan
            if math.isfinite(seconds) and seconds > 0:
                return seconds
            self.warnings.append(
                f"{name}={given[:40]!r} is not a number of seconds: spans are sent "
                f"within {EXPORT_TIMEOUT_S:g} s"
            )
            break
        return EXPORT_TIMEOUT_S

    def _capture_content(self, environ: Mapping[str, str]) -> bool:
        given = environ.get(CAPTURE_CONTENT_ENV, "").strip()
        if given.lower() not in ("", "true", "false"):
            self.warnings.append(
                f"{CAPTURE_CONTENT_ENV}={given[:40]!r} is neither true nor false: "
                "prompts and answers are not sent"
            )
        return given.lower() == "true"

    def observer(self) -> RunSpans:
        """An observer for one run."""
        return RunSpans(self)

    def shutdown(self) -> None:
        """Send the spans still queued, then stop (the OTLP exporter bounds its own wait)."""
        self._provider.shutdown()

    def start_span(
        self,
        name: str,
        *,
        trace_id: str,
        span_id: str,
        parent_span_id: str | None,
        kind: SpanKind,
        start_ns: int,
        attributes: Attributes,
    ) -> trace.Span:
        """A span with fanout's own ids, started at ``start_ns``."""
        parent = Context()  # a root span, not a child of whatever span the caller has open
        if parent_span_id:
            remote = SpanContext(
                int(trace_id, 16), int(parent_span_id, 16), is_remote=True, trace_flags=_SAMPLED
            )
            parent = trace.set_span_in_context(NonRecordingSpan(remote), parent)
        with self._lock:
            self._ids.chosen(trace_id, span_id)
            return self._tracer.start_span(
                name, context=parent, kind=kind, attributes=attributes, start_time=start_ns
            )


class RunSpans:
    """One run's observer: its ``invoke_workflow`` span from ``RunStarted`` to
    ``RunFinished``, and each call's ``invoke_agent`` and ``chat`` spans as the call ends."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry
        self._run: trace.Span | None = None
        self._trace_id = ""
        self._run_span_id = ""
        self._epoch_ns = 0
        self._conversation = ""  # gen_ai.conversation.id on every span of the run

    def handle(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._started(event)
        elif isinstance(event, CallFinished) and self._run is not None:
            self._call_spans(event.call, event.result)
        elif isinstance(event, RunFinished) and self._run is not None:
            report = event.report
            if report.status in ("failed", "cancelled"):
                self._run.set_attribute("error.type", report.status)
                self._run.set_status(Status(StatusCode.ERROR, report.status))
            self._run.end()
            self._run = None

    def _started(self, event: RunStarted) -> None:
        self._trace_id, self._run_span_id = event.trace_id, event.span_id
        self._epoch_ns = event.epoch_ns
        self._conversation = event.conversation_id or event.run_id
        attributes: Attributes = {
            "gen_ai.operation.name": "invoke_workflow",
            "gen_ai.workflow.name": "fanout",
            "gen_ai.conversation.id": self._conversation,
            "fanout.run.id": event.run_id,
            "fanout.run.shape": event.shape,
            "fanout.run.turn": event.turn,
        }
        if self._telemetry.capture_content:
            attributes["gen_ai.input.messages"] = _messages([("user", event.prompt)])
        self._run = self._telemetry.start_span(
            "invoke_workflow fanout",
            trace_id=event.trace_id,
            span_id=event.span_id,
            parent_span_id=event.parent_span_id,
            kind=SpanKind.INTERNAL,
            # Now, not the run's time zero: a carried-on run's zero lies in the past.
            start_ns=time.time_ns(),
            attributes=attributes,
        )

    def _call_spans(self, call: Call, result: CallResult) -> None:
        timing = result.timing
        if timing is None:  # not made in this run (skipped before it began, or kept)
            return
        end_s = timing.end_s if timing.end_s is not None else timing.queued_s
        attributes = {
            **_request_attributes(call),
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.conversation.id": self._conversation,
            "gen_ai.agent.name": call.name,
            "fanout.call.id": call.call_id,
            "fanout.call.stage": call.stage,
            "fanout.call.role": call.role,
            "fanout.call.attempts": result.attempts,
            **_response_attributes(result),
        }
        if self._telemetry.capture_content:
            attributes.update(_content(call, result))
        span = self._telemetry.start_span(
            f"invoke_agent {call.name}",
            trace_id=self._trace_id,
            span_id=timing.span_id,
            parent_span_id=self._run_span_id,
            kind=SpanKind.INTERNAL,
            start_ns=self._ns(timing.queued_s),
            attributes=attributes,
        )
        last = timing.attempts[-1] if timing.attempts else None
        for attempt in timing.attempts:
            if attempt.sent_s is not None:  # a request went out
                self._chat_span(call, result, attempt, timing.span_id, attempt is last)
        if result.status != "ok":
            kind = result.error.type if result.error is not None else result.status
            span.set_attribute("error.type", kind)
            span.set_status(Status(StatusCode.ERROR, kind))
        span.end(end_time=self._ns(end_s))

    def _chat_span(
        self, call: Call, result: CallResult, attempt: AttemptTiming, parent: str, last: bool
    ) -> None:
        attributes = {**_request_attributes(call), "gen_ai.operation.name": "chat"}
        attributes["gen_ai.conversation.id"] = self._conversation
        attributes["fanout.attempt"] = attempt.attempt
        answered = last and result.status == "ok"
        if answered:
            attributes.update(_response_attributes(result))
        if self._telemetry.capture_content:
            attributes.update(_content(call, result if answered else None))
        assert attempt.sent_s is not None
        span = self._telemetry.start_span(
            f"chat {call.agent.model}",
            trace_id=self._trace_id,
            span_id=attempt.span_id,
            parent_span_id=parent,
            kind=SpanKind.CLIENT,
            start_ns=self._ns(attempt.sent_s),
            attributes=attributes,
        )
        error = attempt.error
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, error))
        end = attempt.end_s if attempt.end_s is not None else attempt.sent_s
        span.end(end_time=self._ns(end))

    def _ns(self, seconds: float) -> int:
        return self._epoch_ns + round(seconds * 1e9)


class _ChosenIds(IdGenerator):
    """Hands the SDK the ids fanout chose (the ones its requests carry), one span at a time."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self._trace_id = 0
        self._span_id = 0

    def chosen(self, trace_id: str, span_id: str) -> None:
        self._trace_id, self._span_id = int(trace_id, 16), int(span_id, 16)

    def generate_trace_id(self) -> int:
        chosen, self._trace_id = self._trace_id, 0
        return chosen or self._random.generate_trace_id()

    def generate_span_id(self) -> int:
        chosen, self._span_id = self._span_id, 0
        return chosen or self._random.generate_span_id()


class _OneLine(logging.Handler):
    """The SDK's complaints (a variable it cannot read, a collector that refused spans) as
    one line each on stderr: it logs some with a traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a closed stderr costs the warning, nothing else
            message = " ".join(record.getMessage().split())
            sys.stderr.write(f"warning: OpenTelemetry: {message}\n")


def _one_line_sdk_warnings() -> None:
    logger = logging.getLogger("opentelemetry")
    if not any(isinstance(h, _OneLine) for h in logger.handlers):
        logger.addHandler(_OneLine(logging.WARNING))
        logger.propagate = False


def _resource() -> Resource:
    """The standard variables (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES) win; else the
    service is called fanout."""
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "fanout"}))
    return resource


def _request_attributes(call: Call) -> Attributes:
    agent = call.agent
    endpoint = agent.endpoint
    attributes: Attributes = {
        # fanout speaks the OpenAI API to every endpoint; server.address tells them apart.
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": agent.model,
        "server.address": endpoint.host,
    }
    if agent.temperature is not None:
        attributes["gen_ai.request.temperature"] = agent.temperature
    if agent.top_p is not None:
        attributes["gen_ai.request.top_p"] = agent.top_p
    if agent.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = agent.max_tokens
    port = _port(endpoint.base_url)
    if port is not None:
        attributes["server.port"] = port
    return attributes


def _response_attributes(result: CallResult) -> Attributes:
    attributes: Attributes = {}
    if result.response_model:
        attributes["gen_ai.response.model"] = result.response_model
    if result.usage.total_tokens and not result.usage_estimated:
        attributes["gen_ai.usage.input_tokens"] = result.usage.input_tokens
        attributes["gen_ai.usage.output_tokens"] = result.usage.output_tokens
    if result.finish_reason:
        attributes["gen_ai.response.finish_reasons"] = [result.finish_reason]
    return attributes


def _content(call: Call, result: CallResult | None) -> Attributes:
    """The messages sent (and the answer, if any), as the conventions shape them."""
    system = [m["content"] for m in call.messages if m.get("role") == "system"]
    sent = [(m.get("role", "user"), m.get("content", "")) for m in call.messages]
    attributes: Attributes = {
        "gen_ai.input.messages": _messages([(r, c) for r, c in sent if r != "system"])
    }
    if system:
        attributes["gen_ai.system_instructions"] = json.dumps(
            [{"type": "text", "content": text} for text in system], ensure_ascii=False
        )
    if result is not None and result.answer is not None:
        answer = [
            {
                "role": "assistant",
                "parts": [{"type": "text", "content": result.answer}],
                "finish_reason": result.finish_reason or "stop",
            }
        ]
        attributes["gen_ai.output.messages"] = json.dumps(answer, ensure_ascii=False)
    return attributes


def _messages(messages: Sequence[tuple[str, str]]) -> str:
    return json.dumps(
        [{"role": role, "parts": [{"type": "text", "content": text}]} for role, text in messages],
        ensure_ascii=False,
    )


def _port(base_url: str) -> int | None:
    try:
        return urlsplit(base_url).port
    except ValueError:
        return None
