"""The provider edge over real HTTP: what a server sends is untrusted input.

Each case runs the real ``OpenAIProvider`` against the loopback test server, streamed (with
``on_delta``) and whole, and checks what leaves the edge: a ``Completion`` whose numbers are
finite non-negative integers or unknown, or one ``ProviderError`` in plain words.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pydantic
import pytest
from openai.types.chat import ChatCompletion

from fanout.errors import ProviderError
from fanout.models import Agent, Completion, Endpoint, Usage
from fanout.provider import OpenAIProvider
from tests.conftest import SENTINEL_KEY
from tests.fakeserver import FakeOpenAI, Fault, Malformed, Reply, Step

pytestmark = pytest.mark.anyio

USER = [{"role": "user", "content": "Why?"}]
MODES = pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "whole"])
JSON_SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "vote", "schema": {"type": "object"}},
}


@pytest.fixture
async def provider() -> AsyncIterator[OpenAIProvider]:
    edge = OpenAIProvider(environ={"OPENAI_API_KEY": SENTINEL_KEY})
    try:
        yield edge
    finally:
        await edge.aclose()


def persona(server: FakeOpenAI, model: str = "m-a") -> Agent:
    return Agent(name="a", model=model, endpoint=Endpoint(base_url=server.base_url))


async def ask(
    provider: OpenAIProvider,
    server: FakeOpenAI,
    step: Step | None,
    *,
    streamed: bool,
    response_format: dict[str, Any] | None = None,
) -> tuple[Completion, list[str]]:
    """One call; the completion and the deltas it streamed."""
    if step is not None:
        server.script("m-a", step)
    deltas: list[str] = []
    options: dict[str, Any] = {"on_delta": deltas.append if streamed else None}
    if response_format is not None:
        options["response_format"] = response_format
    completion = await provider.complete(persona(server), USER, timeout_s=10, **options)
    return completion, deltas


async def failure(
    provider: OpenAIProvider, server: FakeOpenAI, step: Step, *, streamed: bool
) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await ask(provider, server, step, streamed=streamed)
    return caught.value


# -- usage: finite non-negative integers, or unknown ------------------------------------------

BAD_USAGE = [
    {"prompt_tokens": 3, "completion_tokens": "lots", "total_tokens": 9},
    {"prompt_tokens": 3, "completion_tokens": [4], "total_tokens": 9},
    {"prompt_tokens": -3, "completion_tokens": 4, "total_tokens": 1},
    {"prompt_tokens": 3, "completion_tokens": 4.5, "total_tokens": 7.5},
    {"prompt_tokens": True, "completion_tokens": 4, "total_tokens": 5},
    {"prompt_tokens": 3, "completion_tokens": {"n": 4}, "total_tokens": 7},
    "lots",
    [3, 4, 7],
]
# Numbers json.dumps cannot write (or writes only as non-standard words), sent verbatim.
RAW_BAD_USAGE = [
    '{"prompt_tokens": 3, "completion_tokens": 1e400, "total_tokens": 1e400}',
    '{"prompt_tokens": 3, "completion_tokens": -1e400, "total_tokens": 3}',
    '{"prompt_tokens": NaN, "completion_tokens": 4, "total_tokens": 7}',
    '{"prompt_tokens": 3, "completion_tokens": Infinity, "total_tokens": 7}',
    '{"prompt_tokens": 3, "completion_tokens": 1' + "0" * 400 + ', "total_tokens": 7}',
]


@MODES
@pytest.mark.parametrize("usage", BAD_USAGE, ids=lambda u: json.dumps(u)[:40])
async def test_a_bad_usage_field_makes_usage_unknown_and_keeps_the_answer(
    provider: OpenAIProvider, server: FakeOpenAI, streamed: bool, usage: Any
) -> None:
    completion, _ = await ask(
        provider, server, Reply(text="a fine answer", usage=usage), streamed=streamed
    )
    assert completion.text == "a fine answer"
    assert completion.usage is None


@MODES
@pytest.mark.parametrize("raw", RAW_BAD_USAGE, ids=["1e400", "-1e400", "NaN", "Infinity", "huge"])
async def test_numbers_no_count_can_be_make_usage_unknown(
    provider: OpenAIProvider, server: FakeOpenAI, streamed: bool, raw: str
) -> None:
    completion, _ = await ask(
        provider, server, Reply(text="a fine answer", raw_usage=raw), streamed=streamed
    )
    assert completion.text == "a fine answer"
    assert completion.usage is None


@MODES
@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}, Usage(3, 4, 7)),
        ({"prompt_tokens": 3.0, "completion_tokens": 4, "total_tokens": 7.0}, Usage(3, 4, 7)),
        ({"prompt_tokens": 3, "completion_tokens": 4}, Usage(3, 4, 7)),  # total left out
        ({"prompt_tokens": 3, "completion_tokens": None, "total_tokens": 3}, Usage(3, 0, 3)),
        ({}, None),
    ],
    ids=["ints", "integral-floats", "no-total", "null-field", "empty"],
)
async def test_good_usage_is_taken_as_reported(
    provider: OpenAIProvider,
    server: FakeOpenAI,
    streamed: bool,
    usage: dict[str, Any],
    expected: Usage | None,
) -> None:
    completion, _ = await ask(provider, server, Reply(usage=usage), streamed=streamed)
    assert completion.usage == expected


async def test_a_server_ignoring_stream_with_bad_usage_still_answers(
    provider: OpenAIProvider, server: FakeOpenAI
) -> None:
    # openai's strict model rejected the whole body here: a healthy answer lost to one field.
    step = Reply(text="whole anyway", can_stream=False, usage={"completion_tokens": "lots"})
    completion, deltas = await ask(provider, server, step, streamed=True)
    assert (completion.text, completion.usage, deltas) == ("whole anyway", None, ["whole anyway"])


def test_a_batch_result_line_with_bad_usage_keeps_its_answer() -> None:
    body = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": "lots", "total_tokens": 2},
    }
    completion = OpenAIProvider.batch_answer(200, body)
    assert (completion.text, completion.usage, completion.finish_reason) == ("hi", None, "stop")


# -- a stream must reach its end ---------------------------------------------------------------


async def test_a_stream_cut_cleanly_half_way_is_a_retryable_error_with_its_partial_text(
    provider: OpenAIProvider, server: FakeOpenAI
) -> None:
    error = await failure(
        provider, server, Reply(text="one two three four", cut_after=2), streamed=True
    )
    assert error.kind == "incomplete_stream"
    assert error.retryable is True
    assert error.partial_text == "one two "
    assert "ended before the answer did" in error.message


async def test_a_stream_cut_before_any_text_is_incomplete_too(
    provider: OpenAIProvider, server: FakeOpenAI
) -> None:
    error = await failure(provider, server, Reply(text="one two", cut_after=0), streamed=True)
    assert (error.kind, error.retryable, error.partial_text) == ("incomplete_stream", True, "")


@pytest.mark.parametrize(
    "step",
    [Reply(text="one two", send_done=False), Reply(text="one two", finish_reason=None)],
    ids=["finish-reason-without-done", "done-without-finish-reason"],
)
async def test_a_stream_with_either_end_marker_is_complete(
    provider: OpenAIProvider, server: FakeOpenAI, step: Reply
) -> None:
    completion, deltas = await ask(provider, server, step, streamed=True)
    assert completion.text == "one two"
    assert "".join(deltas) == "one two"


async def test_an_error_mid_stream_keeps_what_arrived_and_hides_the_key(
    provider: OpenAIProvider, server: FakeOpenAI
) -> None:
    piece = {"choices": [{"index": 0, "delta": {"content": "so far "}, "finish_reason": None}]}
    failed = {"error": {"message": f"overloaded (key {SENTINEL_KEY})"}}
    body = f"data: {json.dumps(piece)}\n\ndata: {json.dumps(failed)}\n\n"
    step = Malformed(body=body, content_type="text/event-stream")
    error = await failure(provider, server, step, streamed=True)
    assert error.partial_text == "so far "
    assert "overloaded" in error.message
    assert SENTINEL_KEY not in error.message and "SENTINEL" not in error.message


# -- finish_reason -----------------------------------------------------------------------------


@MODES
@pytest.mark.parametrize("reason", ["stop", "length", None])
async def test_finish_reason_is_recorded(
    provider: OpenAIProvider, server: FakeOpenAI, streamed: bool, reason: str | None
) -> None:
    completion, _ = await ask(provider, server, Reply(finish_reason=reason), streamed=streamed)
    assert completion.finish_reason == reason


def test_finish_reason_of_a_batch_result_line() -> None:
    choice = {"index": 0, "message": {"role": "assistant", "content": "cut"}}
    body = {"choices": [choice | {"finish_reason": "length"}]}
    assert OpenAIProvider.batch_answer(200, body).finish_reason == "length"


# -- structured output -------------------------------------------------------------------------


@MODES
async def test_response_format_is_sent_when_given(
    provider: OpenAIProvider, server: FakeOpenAI, streamed: bool
) -> None:
    await ask(provider, server, None, streamed=streamed)
    await ask(provider, server, None, streamed=streamed, response_format=JSON_SCHEMA)
    plain, structured = server.requests
    assert "response_format" not in plain.body
    assert structured.body["response_format"] == JSON_SCHEMA


@MODES
async def test_an_endpoint_refusing_response_format_is_asked_without_it_from_then_on(
    provider: OpenAIProvider, server: FakeOpenAI, streamed: bool
) -> None:
    server.default = Reply(text="plain answer", refuse_response_format=True)
    first, _ = await ask(provider, server, None, streamed=streamed, response_format=JSON_SCHEMA)
    second, _ = await ask(provider, server, None, streamed=streamed, response_format=JSON_SCHEMA)
    assert first.text == second.text == "plain answer"
    refused, retried, later = server.requests
    assert "response_format" in refused.body
    assert "response_format" not in retried.body
    assert "response_format" not in later.body
    assert retried.body.get("stream") is (True if streamed else None)


async def test_an_invalid_schema_is_our_error_not_a_reason_to_drop_structured_output(
    provider: OpenAIProvider, server: FakeOpenAI
) -> None:
    rejection = {
        "error": {
            "message": "Invalid schema for response_format 'vote'",
            "type": "invalid_request_error",
            "code": "invalid_json_schema",
        }
    }
    server.script("m-a", Fault(400, body=rejection))
    with pytest.raises(ProviderError) as caught:
        await ask(provider, server, None, streamed=False, response_format=JSON_SCHEMA)
    assert caught.value.kind == "bad_request"
    assert server.count() == 1


# -- answers that are not chat answers ---------------------------------------------------------


@MODES
async def test_an_html_page_is_not_a_json_chat_answer(
    provider: OpenAIProvider, server: FakeOpenAI, streamed: bool
) -> None:
    page = Malformed(body="<html><body>Gateway login</body></html>", content_type="text/html")
    error = await failure(provider, server, page, streamed=streamed)
    assert error.kind == "bad_response"
    assert "not a JSON chat answer (got text/html)" in error.message


@MODES
async def test_json_nested_beyond_the_stack_is_a_bad_response(
    provider: OpenAIProvider, server: FakeOpenAI, streamed: bool
) -> None:
    error = await failure(provider, server, Malformed(body="[" * 100_000), streamed=streamed)
    assert (error.kind, error.message) == (
        "bad_response",
        "malformed response: JSON nested too deeply",
    )


async def test_a_deeply_nested_stream_chunk_is_a_bad_response(
    provider: OpenAIProvider, server: FakeOpenAI
) -> None:
    step = Malformed(body="data: " + "[" * 100_000 + "\n\n", content_type="text/event-stream")
    error = await failure(provider, server, step, streamed=True)
    assert (error.kind, error.message) == (
        "bad_response",
        "malformed response: JSON nested too deeply",
    )


@MODES
async def test_a_null_content_is_an_empty_answer(
    provider: OpenAIProvider, server: FakeOpenAI, streamed: bool
) -> None:
    message = {"role": "assistant", "content": None}
    body = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    if streamed:
        chunk = {"choices": [{"index": 0, "delta": message, "finish_reason": "stop"}]}
        step: Step = Malformed(
            body=f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n", content_type="text/event-stream"
        )
    else:
        step = Malformed(body=json.dumps(body))
    completion, deltas = await ask(provider, server, step, streamed=streamed)
    assert (completion.text, completion.finish_reason, deltas) == ("", "stop", [])


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"role": "assistant", "content": 42}, "choices[0].message.content is a number, not text"),
        ({"role": "assistant", "content": {"a": 1}}, "choices[0].message.content is an object"),
        ("hello", "choices[0].message is text, not an object"),
    ],
)
async def test_a_malformed_answer_says_where_in_plain_words(
    provider: OpenAIProvider, server: FakeOpenAI, message: object, expected: str
) -> None:
    body = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    error = await failure(provider, server, Malformed(body=json.dumps(body)), streamed=False)
    assert error.kind == "bad_response"
    assert error.message.startswith(f"malformed response: {expected}")
    assert "validation error" not in error.message


async def test_a_200_carrying_an_error_says_so_without_the_key(
    provider: OpenAIProvider, server: FakeOpenAI
) -> None:
    body = {"error": {"message": f"upstream refused {SENTINEL_KEY}"}}
    error = await failure(provider, server, Malformed(body=json.dumps(body)), streamed=False)
    assert error.kind == "bad_response"
    assert "upstream refused" in error.message
    assert "SENTINEL" not in error.message


def test_a_pydantic_validation_error_becomes_plain_words() -> None:
    # openai's strict models are no longer used for answers, but any that still raise (a Batch
    # API object) leave as one line that says where, not pydantic's multi-line report.
    body = {"id": "x", "object": "chat.completion", "created": 0, "model": "m"}
    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": 4}}
    with pytest.raises(pydantic.ValidationError) as caught:
        ChatCompletion.model_validate(body | {"choices": [choice]})
    error = OpenAIProvider()._translate(caught.value, 10)
    assert error is not None and error.kind == "bad_response"
    assert error.message == "malformed response: choices[0].message.content is a number, not text"
