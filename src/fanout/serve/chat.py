"""The panel as an OpenAI model: ``GET /v1/models`` and ``POST /v1/chat/completions``.

``model: "fanout"`` asks the panel the conversation's last user message and answers with the
synthesis. The messages before it are the conversation so far: each earlier user message and
the assistant's reply after it reach every persona as its thread (the reply as its own earlier
answer), and a system message is added to each persona's instructions (``client_history``).
``fanout/<shape>`` runs that shape (whatever ``SHAPES`` registers) and answers with its
verdict. ``usage`` is summed over every call and the whole result document rides along under a
top-level ``fanout`` field. Run options (``agents``, ``timeout``...) go in a ``fanout``
object in the body (``extra_body={"fanout": {...}}`` with the openai client). A chat run is a
run like any other: it counts against ``--max-runs``, shows in the dashboard and the history.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from starlette.responses import Response, StreamingResponse

from fanout.conversation import Transcript, Turn
from fanout.errors import FanoutError
from fanout.export import json_line, json_objects
from fanout.serve.errors import error, error_body
from fanout.serve.runs import (
    BadRequest,
    LiveRun,
    caller_trace,
    failure_reason,
    final_answer,
    run_request,
    shape_names,
)

if TYPE_CHECKING:
    from starlette.requests import Request

MODEL = "fanout"
KEEPALIVE_S = 15.0
# What OpenAI clients send beside model and messages: accepted and not used (each persona
# keeps its own sampling settings from the agents file).
IGNORED = {"stream_options", "temperature", "top_p", "max_tokens", "max_completion_tokens",
           "user", "metadata", "store", "seed", "stop", "presence_penalty", "frequency_penalty",
           "logit_bias", "logprobs", "top_logprobs", "response_format", "service_tier",
           "parallel_tool_calls", "reasoning_effort", "n"}  # fmt: skip
KNOWN = {"model", "messages", "stream", "fanout", *IGNORED}


def models() -> list[str]:
    """``fanout`` (the panel with synthesis) and ``fanout/<shape>`` per registered shape."""
    return [MODEL, *(f"{MODEL}/{shape}" for shape in shape_names())]


def openai_error(status: int, message: str, code: str | None = None) -> Response:
    return error(status, message, path="/v1/", code=code)


def run_failure(run_id: str, document: Mapping[str, object], text: str) -> str | None:
    """Why a run gives no answer to send (None: it has one): every call failed, or it was
    stopped before anything answered."""
    status = document.get("status")
    if status == "failed" or (not text and status in ("cancelled", "interrupted")):
        return f"run {run_id} {status}: {failure_reason(document) or 'no call answered'}"
    return None


async def list_models(request: Request) -> Response:
    created = int(request.app.state.started)
    data = [
        {"id": m, "object": "model", "created": created, "owned_by": "fanout"} for m in models()
    ]
    return Response(json_line({"object": "list", "data": data}), media_type="application/json")


def run_body(body: Mapping[str, object]) -> dict[str, object]:
    """The runs API body a chat request stands for; ``BadRequest`` naming what is wrong."""
    for key in body:
        if key not in KNOWN:
            raise BadRequest(f"unknown parameter {key!r}")
    if body.get("n") not in (None, 1):
        raise BadRequest("n: fanout gives one answer (n=1)")
    model = body.get("model")
    if model not in models():
        raise _UnknownModel(f"the model {model!r} does not exist (known: {', '.join(models())})")
    options = body.get("fanout") or {}
    if not isinstance(options, dict):
        raise BadRequest("fanout: an object of run options (agents, timeout...)")
    if "prompt" in options:
        raise BadRequest("fanout.prompt: the prompt is the last user message")
    run: dict[str, object] = {"prompt": last_user_message(body.get("messages")), **options}
    if model != MODEL:
        run.setdefault(str(model).split("/", 1)[1], True)
    elif "shape" not in run:  # fanout: the panel with its synthesis, unless a shape is named
        run.setdefault("synthesize", True)
    return run


class _UnknownModel(BadRequest):
    pass


def client_history(messages: Sequence[object], named: Transcript | None) -> Transcript | None:
    """The conversation a client's messages hold before the last user message: each user
    message (consecutive ones joined) with the assistant's reply after it as an earlier turn,
    and the system (or developer) messages as one text. ``named``: the conversation the
    request named (``fanout.conversation_id``), whose id the run takes. None: a lone
    question, in no named conversation."""
    last = max(i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user")
    system: list[str] = []
    turns: list[Turn] = []
    asked: list[str] = []
    for message in messages[:last]:
        role = message.get("role") if isinstance(message, dict) else None
        text = _text(message.get("content")) if isinstance(message, dict) else ""
        if role in ("system", "developer") and text.strip():
            system.append(text)
        elif role == "user" and text.strip():
            asked.append(text)
        elif role == "assistant" and asked and text.strip():
            turns.append(Turn("\n\n".join(asked), reply=text, number=len(turns) + 1))
            asked = []
    if asked:  # asked and never answered: the personas are told so, not given an answer
        turns.append(Turn("\n\n".join(asked), answers={}, reply=None, number=len(turns) + 1))
    for message in messages[last + 1 :]:
        if isinstance(message, dict) and message.get("role") in ("system", "developer"):
            system.append(_text(message.get("content")))
    if not (turns or system or named):
        return None
    return Transcript(named.id if named else "", tuple(turns), "\n\n".join(system) or None)


def _text(content: object) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return content if isinstance(content, str) else ""


def last_user_message(messages: object) -> str:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: a non-empty list of chat messages")
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts: the text ones
                content = "\n".join(
                    str(p.get("text", "")) for p in content if isinstance(p, dict)
                    and p.get("type") == "text"
                )  # fmt: skip
            if isinstance(content, str) and content.strip():
                return content
            raise BadRequest("the last user message has no text")
    raise BadRequest("messages: no user message to answer")


def answer_text(document: Mapping[str, object]) -> str:
    """What the assistant says: what the run decided, in words (the synthesis, the judge's
    pick, the vote's winner, or why nothing was decided), else each answer under its name (one
    persona asked alone: its answer as it is, as a stream of it says). The whole verdict rides
    along in the ``fanout`` field."""
    final = final_answer(document)
    if final is not None:
        return final
    answers = json_objects(document.get("agents"))
    if len(answers) == 1:
        answer = answers[0].get("answer")
        return str(answer) if answers[0].get("status") == "ok" and answer is not None else ""
    return "\n\n".join(
        f"{call.get('name')}: {call.get('answer')}"
        for call in answers
        if call.get("status") == "ok"
    )


def usage_of(document: Mapping[str, object]) -> dict[str, int]:
    given = document.get("usage")
    usage = given if isinstance(given, dict) else {}  # derive_totals made it one
    return {
        "prompt_tokens": int(usage.get("input_tokens") or 0),
        "completion_tokens": int(usage.get("output_tokens") or 0),
        "total_tokens": int(usage.get("total_tokens") or 0),
    }


async def chat_completions(request: Request) -> Response:
    from fanout.serve.app import manager_of, read_json

    body = await read_json(request)
    try:
        wanted = run_body(body)
    except _UnknownModel as exc:
        return openai_error(404, str(exc), "model_not_found")
    streamed = body.get("stream") is True
    manager = manager_of(request)
    try:
        asked = run_request(wanted, manager.panel, run_id="")
    except FanoutError as exc:
        raise BadRequest(str(exc)) from None
    messages = body["messages"]  # a list with a user message: run_body checked it
    history = client_history(messages if isinstance(messages, list) else [], asked.conversation)
    # The client waits for its answer: nothing to record before going on, and unless it is
    # streamed, each answer is asked for whole (less work than reading a stream of pieces).
    run = await manager.start(
        replace(asked, conversation=history),
        durable=False,
        deltas=streamed,
        trace=caller_trace(request.headers),
    )
    model = str(body["model"])
    if streamed:
        return StreamingResponse(
            _chunks(run, model),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    await run.answered.wait()
    document = run.document()
    text = answer_text(document)
    failure = run_failure(run.id, document, text)
    if failure is not None:
        return openai_error(502, failure, "run_failed")
    completion = {
        "id": f"chatcmpl-{run.id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": usage_of(document),
        "fanout": document,
    }
    return Response(json_line(completion), media_type="application/json")


async def _chunks(run: LiveRun, model: str) -> AsyncIterator[str]:
    """The answer as ``chat.completion.chunk`` events: the final stage's one call streamed as
    it is written, else the answer whole at the end; then usage and the document."""
    created = int(time.time())

    def chunk(delta: dict[str, object], finish: str | None = None, **extra: object) -> str:
        body = {
            "id": f"chatcmpl-{run.id}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json_line(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    # The stage whose one call is the answer (a synthesis; a persona asked alone) streams as
    # it is written; a lone stage with a verdict, or one that grows the plan (the answer is
    # what comes of it), does not.
    stages = run.plan.stages
    alone = len(stages) == 1 and (stages[0].key is not None or hasattr(stages[0], "follow"))
    last_stage = None if alone else stages[-1].id
    streaming: str | None = None  # the call id whose deltas are the answer
    streamed: list[str] = []
    index = 0
    while True:
        while index < len(run.lines):
            line = run.lines[index]
            index += 1
            if line.kind == "stage_started":
                value = line.value()
                calls = value.get("calls")
                if value.get("stage") == last_stage and isinstance(calls, list):
                    one = calls[0] if len(calls) == 1 and isinstance(calls[0], dict) else {}
                    streaming = one.get("call_id")
            elif line.kind == "delta" and streaming and line.call_id == streaming:
                text = str(line.value().get("text"))
                streamed.append(text)
                yield chunk({"content": text})
            elif line.kind == "retry" and line.call_id == streaming:
                streaming = None  # a second attempt would repeat itself: answer whole at the end
        if run.answered.is_set():
            break
        await run.changed(KEEPALIVE_S)
        if index >= len(run.lines) and not run.answered.is_set():
            yield ": keep-alive\n\n"
    document = run.document()
    text = answer_text(document)
    failure = run_failure(run.id, document, text)
    if failure is not None:
        # What OpenAI's clients raise on in a stream (openai: APIError), not a stop.
        yield f"data: {json_line(error_body(502, failure, path='/v1/', code='run_failed'))}\n\n"
        yield "data: [DONE]\n\n"
        return
    if not streamed and text:
        yield chunk({"content": text})
    yield chunk({}, "stop")
    empty = {
        "id": f"chatcmpl-{run.id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage_of(document),
        "fanout": document,
    }
    yield f"data: {json_line(empty)}\n\n"
    yield "data: [DONE]\n\n"
