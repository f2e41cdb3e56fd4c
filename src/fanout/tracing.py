"""W3C trace context: the ids that tie a run, its calls and their HTTP requests together.

A run is one trace (32 hex digits) and one span; each call is a span under it and each attempt
of a call a span under that, whose id travels to the endpoint in the request's ``traceparent``
header (``00-<trace id>-<span id>-01``). A ``TRACEPARENT`` (or ``--traceparent``) given to a
run makes it a child of that span, in that trace. Nothing here imports OpenTelemetry: the ids
are fanout's own, and ``telemetry.py`` hands them to OTel when it is installed.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass

from fanout.errors import ConfigError

# The traceparent of the request about to leave, for the HTTP client's request hook (hooks are
# per client, attempts per task: the engine sets this around the provider's call).
CURRENT_TRACEPARENT: ContextVar[str | None] = ContextVar("CURRENT_TRACEPARENT", default=None)

# The standard OpenTelemetry variables that turn span export on, and the GenAI conventions'
# switch for sending prompt and answer text with the spans.
OTLP_ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


def new_trace_id() -> str:
    return os.urandom(16).hex()


def new_span_id() -> str:
    # getrandbits, as OpenTelemetry's own generator: a span per attempt is on the hot path
    # (0.2 µs, where os.urandom is a system call), and ``random`` is reseeded in a forked
    # child, so workers never share ids. Zero is not a valid span id.
    return f"{random.getrandbits(64) or 1:016x}"


def traceparent(trace_id: str, span_id: str) -> str:
    """The W3C header value for a span of a sampled trace."""
    return f"00-{trace_id}-{span_id}-01"


@dataclass(frozen=True)
class TraceParent:
    """A parsed ``traceparent``: the trace to join, and the span to be a child of."""

    trace_id: str
    span_id: str


def parse_traceparent(value: str) -> TraceParent | None:
    """A W3C ``traceparent`` value, or None for anything that is not a valid one (all-zero
    ids and version ``ff`` are invalid; later versions are read as version 00)."""
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, _flags, more = match.groups()
    if version == "ff" or (version == "00" and more):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceParent(trace_id, span_id)


def trace_parent(given: str | None, environ: Mapping[str, str]) -> TraceParent | None:
    """The trace to continue: ``--traceparent`` (a usage error if it is not one), else a
    valid ``TRACEPARENT`` in the environment (one that is not is ignored, as tools do)."""
    if given is not None:
        parent = parse_traceparent(given)
        if parent is None:
            raise ConfigError(
                f"--traceparent: {given!r} is not a W3C traceparent "
                "(00-<32 hex trace id>-<16 hex span id>-<2 hex flags>)"
            )
        return parent
    return parse_traceparent(environ.get("TRACEPARENT", ""))


def telemetry_wanted(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for OpenTelemetry spans: an OTLP endpoint is set and the
    SDK is not disabled (``OTEL_SDK_DISABLED``, ``OTEL_TRACES_EXPORTER=none``)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in OTLP_ENDPOINT_ENVS)
