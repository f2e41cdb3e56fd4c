"""Reasoning models (issue 25.2): reasoning tokens from usage.completion_tokens_details in the
usage, the cost, the panes and the summary; whole and streamed."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from rich.console import Console

from fanout.event import CallFinished
from fanout.live import LiveBoard
from fanout.models import Agent, Call, CallResult, Usage
from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI, Reply


def usage(prompt: int, completion: int, reasoning: Any, total: int | None = None) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion if total is None else total,
        "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0},
    }


def priced_panel(agents_file: AgentsFile) -> Any:
    path = agents_file("a", "b")
    with path.open("a", encoding="utf-8") as out:
        out.write("pricing:\n  m-a: {input: 1.0, output: 10.0}\n  m-b: {input: 0, output: 0}\n")
    return path


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
def test_reasoning_tokens_are_counted_in_usage_and_cost(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, stream: str
) -> None:
    server.script("m-a", Reply(text="Forty-two.", usage=usage(100, 900, 800)))
    server.script("m-b", Reply(text="Six.", usage=usage(10, 5, 0)))
    result = invoke("ask", "-c", priced_panel(agents_file), stream, "--json", "Q")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    a = document["agents"][0]
    assert a["usage"] == {
        "input_tokens": 100,
        "output_tokens": 900,
        "total_tokens": 1000,
        "reasoning_tokens": 800,
    }
    assert a["cost_usd"] == pytest.approx((100 * 1.0 + 900 * 10.0) / 1e6)
    assert document["usage"]["reasoning_tokens"] == 800
    assert document["usage"]["output_tokens"] == 905


def test_reasoning_counted_beside_the_answer_is_output_all_the_same(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    # Gemini's OpenAI endpoint: completion_tokens leaves the thinking out, total_tokens has it.
    server.script("m-a", Reply(usage=usage(10, 20, 300, total=330)))
    result = invoke("ask", "-c", priced_panel(agents_file), "-a", "a", "--json", "Q")
    a = json.loads(result.stdout)["agents"][0]
    assert a["usage"]["output_tokens"] == 320 and a["usage"]["reasoning_tokens"] == 300
    assert a["cost_usd"] == pytest.approx((10 * 1.0 + 320 * 10.0) / 1e6)


@pytest.mark.parametrize("odd", ["lots", -5, 1e400, None, [3]])
def test_a_reasoning_count_that_is_no_count_is_left_out(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, odd: Any
) -> None:
    server.script("m-a", Reply(usage=usage(3, 4, odd)))
    result = invoke("ask", "-c", agents_file("a"), "--json", "Q")
    assert result.exit_code == 0, result.output
    a = json.loads(result.stdout)["agents"][0]
    assert a["usage"] == {
        "input_tokens": 3,
        "output_tokens": 4,
        "total_tokens": 7,
        "reasoning_tokens": 0,
    }
    assert not a["usage_estimated"]


def test_the_views_say_how_many_tokens_went_to_reasoning(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-a", Reply(text="Forty-two.", usage=usage(100, 900, 800)))
    markdown = invoke("ask", "-c", agents_file("a"), "Q")
    assert markdown.exit_code == 0, markdown.output
    assert "1,000 tokens (100 in, 900 out, 800 reasoning)" in markdown.stdout
    server.script("m-a", Reply(text="Forty-two.", usage=usage(100, 900, 800)))
    table = invoke("ask", "-c", agents_file("a"), "--format", "table", "Q")
    assert "800 reasoning" in table.stdout


def test_a_pane_shows_its_reasoning_tokens() -> None:
    agent = Agent("thinker", model="o3-mini")
    console = Console(width=80, height=20, file=io.StringIO(), color_system=None)
    board = LiveBoard(console, [agent], clock=lambda: 100.0)
    result = CallResult("thinker", "o3-mini", "ok", "42", attempts=1, latency_s=2.0)
    result.usage = Usage(10, 900, 910, 800)
    board.handle(
        CallFinished(Call("panel/thinker", "panel", "persona", "thinker", agent, ()), result)
    )
    screen = "\n".join(board.frame(80, 20))
    assert "900 tok (800 reasoning)" in screen
