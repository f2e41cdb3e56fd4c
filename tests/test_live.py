"""The live board: pane states rendered at fixed widths, and the real CLI in a terminal."""

from __future__ import annotations

import io
import os
import random
import re
import sys
import threading
from pathlib import Path
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
from fanout.live import GrowingText, LiveBoard, _MarkdownRenderer, markdown_tail
from fanout.models import Agent, AgentError, AgentResult, Call, CallResult, Usage
from tests.conftest import AgentsFile
from tests.fakeserver import FakeOpenAI, Reply
from tests.terminal import Terminal


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
    lines = live.frame(width, height)
    assert len(lines) <= height
    assert all(len(line) == width for line in lines), [len(line) for line in lines]
    return "\n".join(lines)


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
    assert "synthesis · synthesizer" in text and "Both agree." in text  # titled by its stage id
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
    assert "appraisal · arbiter" in text and "arbiter" in text and "A wins." in text


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
    sgr = [int(c) for p in re.findall(r"\x1b\[([\d;]*)m", output) for c in p.split(";") if c]
    assert not [c for c in sgr if 30 <= c <= 49 or 90 <= c <= 107]  # no colour codes
    if env.get("TERM") == "dumb":
        assert "streaming" not in output  # no live view on a dumb terminal


# -- the board's layout and drawing -------------------------------------------------------------


def colour_board(names: list[str], clock: Clock, width: int) -> LiveBoard:
    console = Console(width=width, height=30, file=io.StringIO(), color_system="truecolor")
    return LiveBoard(console, [Agent(n, model=f"m-{n}") for n in names], clock=clock)


def finish(live: LiveBoard, name: str, answer: str, **fields: Any) -> None:
    live.handle(AgentFinished(AgentResult(name, f"m-{name}", "ok", answer, **fields)))


def test_a_pane_takes_only_the_rows_its_answer_needs() -> None:
    clock = Clock()
    live, _ = board(["alpha", "beta", "gamma"], clock, 120)
    for name in ("alpha", "beta", "gamma"):
        finish(live, name, f"{name} in one line")
    lines = live.frame(120, 40)
    assert len(lines) == 4  # borders, status, the answer: not a third of the screen each
    stacked = live.frame(60, 40)
    assert len(stacked) == 12


def test_a_long_answer_takes_its_share_and_a_short_one_no_more() -> None:
    clock = Clock()
    live, _ = board(["short", "long"], clock, 60)
    finish(live, "short", "yes")
    finish(live, "long", "\n\n".join(f"paragraph {i}" for i in range(100)))
    lines = live.frame(60, 30)
    assert len(lines) == 30
    text = "\n".join(lines)
    assert text.count("yes") == 1 and "paragraph 99" in text
    assert lines[3].startswith("╰")  # the short pane is four rows; the long one has the rest


def test_panes_that_do_not_fit_are_counted_with_their_states() -> None:
    clock = Clock()
    names = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    live, console = board(names, clock, 70)
    finish(live, "zeta", "done")
    text = screen(live, console, 70, height=16)
    assert "+1 more: zeta ✓ done" in text
    assert all(name in text for name in names[:5])


def test_answers_are_drawn_as_markdown_like_the_final_view() -> None:
    clock = Clock()
    live, console = board(["alpha"], clock, 80)
    agent = Agent("alpha", model="m-alpha")
    live.handle(AgentSending(agent, 1))
    live.handle(AgentDelta(agent, "## Heat\n\nEnergy moves **from hot to cold**.\n\n- one item"))
    text = screen(live, console, 80)
    assert "Heat" in text and "from hot to cold" in text and "• one item" in text
    assert "##" not in text and "**" not in text


def test_a_streaming_answer_is_rendered_again_a_few_times_a_second_not_every_frame() -> None:
    clock = Clock()
    live, console = board(["alpha"], clock, 80)
    agent = Agent("alpha", model="m-alpha")
    live.handle(AgentSending(agent, 1))
    live.handle(AgentDelta(agent, "first words"))
    assert "first words" in screen(live, console, 80)
    live.handle(AgentDelta(agent, " and more"))
    assert "and more" not in screen(live, console, 80)  # the cached rendering, for now
    clock.t += 0.3
    assert "first words and more" in screen(live, console, 80)
    live.handle(AgentDelta(agent, " and the end"))
    finish(live, "alpha", "first words and more and the end")
    assert "and the end" in screen(live, console, 80)  # a finished answer is drawn at once


def test_escape_sequences_from_a_server_are_shown_never_acted_on() -> None:
    clock = Clock()
    evil = Agent("alpha", model="m-\x1b[2J")
    console = Console(width=100, height=30, file=io.StringIO(), color_system="truecolor")
    live = LiveBoard(console, [evil, Agent("beta", model="m-beta")], clock=clock)
    live.handle(AgentSending(evil, 1))
    live.handle(AgentDelta(evil, "Title: \x1b]0;pwned\x07 and \x9b31m red"))
    failed = AgentResult(
        "beta", "m-beta", "error", error=AgentError("server", "HTTP 500: \x1b[5mboom", 500)
    )
    live.handle(AgentFinished(failed))
    text = "\n".join(live.frame(100, 30))
    assert re.findall(r"\x1b(?!\[[0-9;]*m)", text) == []  # colours only
    assert "\x9b" not in text
    assert "␛]0;pwned␇" in text and "m-␛[2J" in text and "␛[5mboom" in text


def test_a_pane_counts_from_its_first_wait_and_shows_the_attempt() -> None:
    clock = Clock()
    live, console = board(["alpha"], clock, 100)
    agent = Agent("alpha", model="m-alpha")
    live.handle(CallWaiting(call_of(agent), wait_s=7.0))
    clock.t += 2
    text = screen(live, console, 100)
    assert "waiting for the rate limit, 5.0 s" in text and "2.0s" in text
    clock.t += 5
    live.handle(AgentSending(agent, 1))
    live.handle(AgentRetrying(agent, 1, 4, 2.0, "503", "HTTP 503"))
    clock.t += 2
    live.handle(AgentSending(agent, 2))
    clock.t += 0.5
    text = screen(live, console, 100)
    assert "asking… · attempt 2/4" in text
    assert "9.5s" in text  # since its first wait, not since the last attempt


def test_a_frame_writes_only_the_lines_that_changed_inside_synchronized_output() -> None:
    clock = Clock()
    live = colour_board(["alpha", "beta", "gamma"], clock, 60)
    for name in ("alpha", "beta", "gamma"):
        live.handle(AgentSending(Agent(name, model=f"m-{name}"), 1))
        live.handle(AgentDelta(Agent(name, model=f"m-{name}"), f"{name} says"))
    first = live.update(live.frame_cells(60, 30), (60, 30))
    assert first.startswith("\x1b[?2026h") and first.endswith("\x1b[?2026l")
    assert live.update(live.frame_cells(60, 30), (60, 30)) == ""  # nothing changed: nothing
    clock.t += 0.3
    live.handle(AgentDelta(Agent("beta", model="m-beta"), " more"))
    again = live.update(live.frame_cells(60, 30), (60, 30))
    # Each pane's spinner and clock moved on, and beta's answer and figures grew (with them
    # the border left of its figures): 2 + 2 + 3 pieces, each with the piece after it (a
    # border put back, should the terminal measure a character wider than we do); no whole
    # line, no top border.
    assert again.count("\x1b[?2026h") == 1
    assert len(re.findall(r"\x1b\[\d+;\d+H", again)) == 15
    assert "╭" not in again and "\x1b[2K" not in again
    side_by_side = colour_board(["alpha", "beta", "gamma"], clock, 150)
    side_by_side.handle(AgentSending(Agent("beta", model="m-beta"), 1))
    side_by_side.handle(AgentDelta(Agent("beta", model="m-beta"), "hello"))
    side_by_side.update(side_by_side.frame_cells(150, 30), (150, 30))
    clock.t += 0.3
    side_by_side.handle(AgentDelta(Agent("beta", model="m-beta"), " world"))
    changed = side_by_side.update(side_by_side.frame_cells(150, 30), (150, 30))
    assert "alpha" not in changed and "gamma" not in changed  # only beta's cells of the lines
    columns = [int(c) for c in re.findall(r"\x1b\[\d+;(\d+)H", changed)]
    assert len(columns) == 7 and all(51 <= c <= 100 for c in columns)  # within beta's pane
    resized = live.update(live.frame_cells(50, 30), (50, 30))
    assert resized.startswith("\x1b[?2026h\x1b[H\x1b[2J")  # a new size: drawn again whole


# -- the real CLI on an emulated terminal ---------------------------------------------------------

BOARD_ONLY = ("streaming", "asking…", "queued", "ttft", "tok/s", "more:")


def held_panel(
    server: FakeOpenAI, agents_file: AgentsFile, names: list[str], hold: threading.Event
) -> Path:
    for name in names:
        server.script(f"m-{name}", Reply(text=f"{name}-start and the rest", hold=hold))
    return agents_file(*names)


def assert_clean_hand_over(term: Terminal, names: list[str]) -> None:
    """What stays on the terminal is the final view alone: no piece of the board above it."""
    main = term.main_text()
    assert not term.screen.on_alt and term.echo_after
    for fragment in BOARD_ONLY:
        assert fragment not in main, (fragment, main)
    for name in names:
        assert main.count(f"{name} · m-{name}") == 1, (name, main)
    assert "Traceback" not in term.output


@pytest.mark.parametrize("case", ["enter", "resize", "interrupt", "small"])
def test_the_final_view_replaces_the_board_whatever_happened(
    server: FakeOpenAI, agents_file: AgentsFile, case: str
) -> None:
    names = (
        ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
        if case == "small"
        else ["alpha", "beta", "gamma"]
    )
    size = {"small": (16, 70), "resize": (45, 160)}.get(case, (30, 120))
    hold = threading.Event()
    config = held_panel(server, agents_file, names, hold)
    term = Terminal(["ask", "-c", config, "Why?"], *size)
    try:
        server.wait_for_requests(len(names))
        # The board is up and streaming (at 70x16, five panes of three rows: no answers).
        term.expect("streaming" if case == "small" else "alpha-start")
        if case == "enter":
            assert not term.child.getecho()  # keys typed meanwhile are not echoed
            term.send("\r\r\rtyped\r")
        elif case == "resize":
            term.resize(30, 100)
            term.expect(r"\x1b\[H\x1b\[2J")  # drawn again at the new size
        elif case == "interrupt":
            term.interrupt()
        elif case == "small":
            term.expect(r"\+1 more: zeta")  # the pane with no room is accounted for
        hold.set()
        code = term.finish()
    finally:
        hold.set()
        term.close()
    assert code == (130 if case == "interrupt" else 0), term.output
    assert_clean_hand_over(term, names)


@pytest.mark.parametrize("when", ["at-once", "once-the-board-is-gone"])
def test_a_second_ctrl_c_ends_at_once_and_quietly(
    server: FakeOpenAI, agents_file: AgentsFile, when: str
) -> None:
    hold = threading.Event()
    config = held_panel(server, agents_file, ["alpha", "beta"], hold)
    term = Terminal(["ask", "-c", config, "Why?"], 30, 120)
    try:
        server.wait_for_requests(2)
        term.expect("alpha-start")
        term.interrupt()
        if when != "at-once":
            term.expect(re.escape("\x1b[?25h"))  # the run is over: the final view, the exit
        term.interrupt()
        code = term.finish()
    finally:
        hold.set()
        term.close()
    assert code == 130
    assert "Exception ignored" not in term.output and "Traceback" not in term.output
    assert not term.screen.on_alt  # the terminal is given back
    assert term.echo_after  # with its echo
    assert term.output.rindex("\x1b[?25h") > term.output.rindex("\x1b[?25l")  # and its cursor


def test_a_code_block_cut_by_the_tail_or_still_streaming_stays_a_code_block() -> None:
    code = "```python\n" + "".join(f"x{i} = {i}\n\n" for i in range(400)) + "print(x)\n"
    tail = markdown_tail("Intro.\n\n" + code + "```\n", 200)
    assert tail.startswith("```\n") and "print(x)" in tail and len(tail) < 600
    clock = Clock()
    live, console = board(["alpha"], clock, 80)
    agent = Agent("alpha", model="m-alpha")
    live.handle(AgentSending(agent, 1))
    live.handle(AgentDelta(agent, "Intro.\n\n```python\na = 1\n\nb = 2\n"))
    text = screen(live, console, 80)
    # The blank line inside the block does not end it: nothing of it is read as prose.
    assert "```" not in text
    lines = text.splitlines()
    a = next(line for line in lines if "a = 1" in line)
    b = next(line for line in lines if "b = 2" in line)
    intro = next(line for line in lines if "Intro." in line)
    assert a.index("a = 1") == b.index("b = 2") != intro.index("Intro.")  # both code


# -- a long answer: each piece and each frame cost the same however much was shown -------------


def long_markdown(paragraphs: int) -> str:
    """Paragraphs, lists, headings and code blocks (blank lines inside them too)."""
    blocks = []
    for i in range(paragraphs):
        blocks.append(
            f"## Part {i}\n\nHeat moves **from hot to cold**, part {i}, until both agree."
        )
        blocks.append(f"- point {i}\n- a second, *longer* point {i} that wraps in a narrow pane")
        if i % 7 == 3:
            blocks.append(
                "```python\n" + "\n\n".join(f"x{i}_{j} = {j}" for j in range(9)) + "\n```"
            )
    return "\n\n".join(blocks) + "\n\nThe end.\n"


def stream_into(live: LiveBoard, clock: Clock, text: str, seed: int, width: int) -> list[str]:
    """``text`` streamed in pieces of random sizes, a frame now and then; the last frame."""
    agent = Agent("alpha", model="m-alpha")
    live.handle(AgentSending(agent, 1))
    rng = random.Random(seed)
    at = 0
    while at < len(text):
        size = rng.randint(1, 30)
        live.handle(AgentDelta(agent, text[at : at + size]))
        at += size
        if rng.random() < 0.05:
            clock.t += 0.3
            live.frame(width, 30)
    clock.t += 0.3
    return live.frame(width, 30)


@pytest.mark.parametrize(("seed", "width"), [(1, 100), (2, 60), (3, 160)])
def test_a_long_streamed_answer_shows_the_tail_the_whole_answer_renders_to(
    seed: int, width: int
) -> None:
    text = long_markdown(60)
    clock = Clock()
    live, console = board(["alpha"], clock, width)
    frame = stream_into(live, clock, text, seed, width)
    shown = [line[2:-2] for line in frame[2:-1] if line[2:-2].strip()]
    whole = [line for line in _MarkdownRenderer(console).lines(text, width - 4) if line.strip()]
    assert len(shown) > 10 and shown == whole[-len(shown) :]


class CountedText(GrowingText):
    """The pane's answer, counting what the board reads of it."""

    def __init__(self) -> None:
        super().__init__()
        self.read = 0
        self.whole = 0

    def slice(self, start: int, end: int | None = None) -> str:
        text = super().slice(start, end)
        self.read += len(text)
        return text

    def __str__(self) -> str:
        self.whole += 1
        return super().__str__()


def test_each_frame_of_a_long_answer_reads_what_is_new_not_what_was_shown() -> None:
    # Issue 21: a 10 MB answer took 283 s in a terminal (1 MB 3.4 s): every piece and every
    # frame went over the whole text shown so far.
    clock = Clock()
    live, _ = board(["alpha"], clock, 100)
    agent = Agent("alpha", model="m-alpha")
    live.handle(AgentSending(agent, 1))
    counted = live.panes["panel/alpha"].answer = CountedText()
    text = long_markdown(40)
    for copy in range(40):  # about 250 KB
        for at in range(0, len(text), 25):
            live.handle(AgentDelta(agent, text[at : at + 25]))
        clock.t += 0.3
        before = counted.read
        live.frame(100, 30)
        # What came in since the last frame (its lines read, its blocks rendered), and a
        # pane's worth of tail: never the whole.
        assert counted.read - before <= 2 * len(text) + 2 * 30 * 100, copy
    assert counted.whole == 1  # the whole answer is read once, where the pane starts from
    assert counted.length == 40 * len(text)
    assert len(counted._blocks) <= counted.length.bit_length()


def test_growing_text_reads_like_the_string_it_holds() -> None:
    rng = random.Random(5)
    grown, reference = GrowingText("start "), "start "
    for _ in range(3000):
        piece = "".join(rng.choice("ab\n`") for _ in range(rng.randint(0, 9)))
        grown.append(piece)
        reference += piece
        start = rng.randint(-2, len(reference) + 2)
        end = rng.choice([None, rng.randint(0, len(reference) + 2)])
        assert grown.slice(start, end) == reference[max(start, 0) : end]
    assert grown.length == len(reference) and str(grown) == reference
