"""The live board: pane states rendered at fixed widths, and the real CLI in a terminal."""

from __future__ import annotations

import io
import os
import sys
import threading
from typing import Any

import pexpect
import pytest
from rich.console import Console

from fanout.event import (
    CallDelta,
    CallFinished,
    CallRetrying,
    CallSending,
    CallWaiting,
    StageStarted,
)
from fanout.models import Agent, AgentError, AgentResult, Call, CallResult, Usage
from fanout.render import LiveBoard
from tests.conftest import AgentsFile
from tests.fakeserver import FakeOpenAI, Reply


def call_of(agent: Agent, stage: str = "panel", role: str = "persona") -> Call:
    return Call(f"{stage}/{agent.name}", stage, role, agent.name, agent, ())


def AgentWaiting(agent: Agent) -> CallWaiting:
    return CallWaiting(call_of(agent))


def AgentSending(agent: Agent, attempt: int) -> CallSending:
    return CallSending(call_of(agent), attempt)


def AgentDelta(agent: Agent, text: str) -> CallDelta:
    return CallDelta(call_of(agent), text)


def AgentRetrying(agent: Agent, *args: Any) -> CallRetrying:
    return CallRetrying(call_of(agent), *args)


def AgentFinished(result: CallResult) -> CallFinished:
    return CallFinished(call_of(Agent(result.name, model=result.model)), result)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def board(names: list[str], clock: Clock, width: int) -> tuple[LiveBoard, Console]:
    console = Console(width=width, height=30, file=io.StringIO(), color_system=None)
    return LiveBoard(console, [Agent(n, model=f"m-{n}") for n in names], clock=clock), console


def screen(live: LiveBoard, console: Console, width: int, height: int = 30) -> str:
    console.print(live.layout(width, height))
    file = console.file
    assert isinstance(file, io.StringIO)
    text = file.getvalue()
    file.seek(0)
    file.truncate()
    return text


@pytest.mark.parametrize("width", [80, 200])
def test_every_pane_state_is_shown(width: int) -> None:
    clock = Clock()
    names = ["queued", "waiting", "streaming", "retrying", "done", "failed"]
    live, console = board(names, clock, width)
    agents = {n: Agent(n, model=f"m-{n}") for n in names}
    live.handle(AgentWaiting(agents["waiting"]))
    live.handle(AgentSending(agents["streaming"], 1))
    clock.t += 0.25
    live.handle(AgentDelta(agents["streaming"], "Energy moves "))
    live.handle(AgentDelta(agents["streaming"], "from hot to cold."))
    live.handle(AgentRetrying(agents["retrying"], 1, 4, 2.0, "429", "HTTP 429: slow down"))
    ok = AgentResult("done", "m-done", "ok", "All done.", attempts=1, latency_s=1.5)
    ok.usage = Usage(5, 12, 17)
    live.handle(AgentFinished(ok))
    failed = AgentResult(
        "failed", "m-failed", "error", error=AgentError("auth", "HTTP 401: bad key", 401)
    )
    live.handle(AgentFinished(failed))
    clock.t += 0.5
    text = screen(live, console, width)
    assert all(len(line) <= width for line in text.splitlines())
    for expected in (
        "queued",
        "waiting for the rate limit",
        "streaming",
        "Energy moves from hot to cold.",
        "ttft 0.25s",
        "429, retry 2/4 in 1.5 s",
        "✓ done",
        "12 tok",
        "1.50s",
        "✗ HTTP 401: bad key",
    ):
        assert expected in text, expected


def test_wide_screens_put_panes_side_by_side_narrow_ones_stack_them() -> None:
    clock = Clock()
    live, console = board(["alpha", "beta", "gamma"], clock, 200)
    wide = screen(live, console, 200)
    assert any("alpha" in line and "beta" in line and "gamma" in line for line in wide.splitlines())
    narrow = screen(live, console, 60)
    assert not any("alpha" in line and "beta" in line for line in narrow.splitlines())
    assert "alpha" in narrow and "gamma" in narrow


def test_twelve_personas_stay_readable_at_80_columns() -> None:
    clock = Clock()
    names = [f"persona{i:02d}" for i in range(12)]
    live, console = board(names, clock, 80)
    text = screen(live, console, 80, height=40)
    assert all(name in text for name in names)
    assert all(len(line) <= 80 for line in text.splitlines())


def test_long_answers_show_their_latest_lines_while_streaming() -> None:
    clock = Clock()
    live, console = board(["talker"], clock, 80)
    agent = Agent("talker", model="m-talker")
    live.handle(AgentSending(agent, 1))
    for i in range(200):
        live.handle(AgentDelta(agent, f"line{i:03d}\n"))
    text = screen(live, console, 80, height=12)
    assert "line199" in text
    assert "line000" not in text


def test_synthesis_gets_its_own_pane_after_the_panel() -> None:
    clock = Clock()
    live, console = board(["alpha", "beta"], clock, 120)
    for name in ("alpha", "beta"):
        live.handle(AgentFinished(AgentResult(name, f"m-{name}", "ok", f"{name} says hi")))
    synthesizer = call_of(Agent("synthesizer", model="m-synth"), "synthesis", "synthesizer")
    live.handle(StageStarted("synthesis", "synthesis", [synthesizer]))
    live.handle(CallSending(synthesizer, 1))
    live.handle(CallDelta(synthesizer, "Both agree."))
    text = screen(live, console, 120)
    assert "Synthesis" in text and "Both agree." in text
    assert "alpha says hi" not in text  # the panel shrinks to its status lines
    done = CallResult("synthesizer", "m-synth", "ok", "Both agree.", stage="synthesis")
    live.handle(CallFinished(synthesizer, done))
    assert "✓ done" in screen(live, console, 120)


def test_a_stage_of_a_kind_the_board_never_heard_of_gets_panes_like_any_other() -> None:
    clock = Clock()
    live, console = board(["alpha"], clock, 120)
    live.handle(AgentFinished(AgentResult("alpha", "m-alpha", "ok", "hi")))
    judge = call_of(Agent("arbiter", model="m-judge"), "appraisal", "appraiser")
    live.handle(StageStarted("appraisal", "appraisal", [judge]))
    live.handle(CallDelta(judge, "A wins."))
    text = screen(live, console, 120)
    assert "Appraisal" in text and "arbiter" in text and "A wins." in text


def test_an_answer_cut_by_max_tokens_shows_as_truncated() -> None:
    clock = Clock()
    live, console = board(["alpha"], clock, 100)
    cut = AgentResult("alpha", "m-alpha", "ok", "half", finish_reason="length", truncated=True)
    live.handle(AgentFinished(cut))
    assert "truncated" in screen(live, console, 100)


def test_cli_in_a_terminal_streams_two_personas_side_by_side(
    server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    # Both streams stop before their last piece until the test has seen both on screen.
    hold = threading.Event()
    server.script("m-alpha", Reply(text="alpha-start and the rest", hold=hold))
    server.script("m-beta", Reply(text="beta-start and the rest", hold=hold))
    config = agents_file("alpha", "beta")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "fanout", "ask", "-c", str(config), "Why?"],
        dimensions=(30, 120),
        encoding="utf-8",
        timeout=30,
    )
    try:
        seen = set()
        while seen != {"alpha", "beta"}:
            index = child.expect(["alpha-start", "beta-start"])
            seen.add(["alpha", "beta"][index])
        # Both answers are on screen while neither request has finished.
        assert all(r.finished is None for r in server.requests)
        hold.set()
        child.expect(pexpect.EOF)
    finally:
        hold.set()
        child.close()
    assert child.exitstatus == 0
    final = child.before
    assert "2/2 answered" in final
    assert "alpha-start and the rest" in final


@pytest.mark.parametrize("env", [{"TERM": "dumb"}, {"NO_COLOR": "1"}], ids=["dumb", "no-color"])
def test_terminal_preferences_are_honoured(
    server: FakeOpenAI, agents_file: AgentsFile, env: dict[str, str]
) -> None:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "fanout", "ask", "-c", str(agents_file("alpha")), "Why?"],
        dimensions=(30, 100),
        encoding="utf-8",
        timeout=30,
        env={**os.environ, **env},
    )
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    output = child.before
    assert "m-alpha says: Why?" in output
    assert "\x1b[3" not in output  # no colour codes
    if env.get("TERM") == "dumb":
        assert "streaming" not in output  # no live view on a dumb terminal
