"""The live board as a user sees it: real runs of the CLI on a pty, every frame played again on
an emulated terminal and read back into panes' boxes (``tests/boxes.py``). In every frame,
each pane's box is whole and holds its own answer's words, nothing else."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pytest
from rich.cells import cell_len
from wcwidth import wcswidth

from tests.boxes import BoardError, Screen, check_board, parse_board, pyte_screen, text_screen
from tests.conftest import AgentsFile
from tests.fakeserver import FakeOpenAI, Reply
from tests.terminal import Terminal

NAMES = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]
NAMES += ["juliet", "kilo", "lima"]
WIDE = "温度"  # CJK: two cells each
EMOJI = "🔥"  # two cells, Emoji_Presentation


def answer_of(name: str, paragraphs: int = 3) -> str:
    """A Markdown answer whose every word is the persona's own (``alphaw007``), with a heading,
    emphasis, a list, a table, a code block, CJK and emoji; its last word, ``alphaend``, is
    the piece the server holds back until the test lets the run end."""
    count = iter(range(1000))

    def w() -> str:
        return f"{name}w{next(count):03d}"

    blocks = [f"## {w()} {w()}"]
    for _ in range(paragraphs):
        prose = " ".join(w() for _ in range(12))
        blocks.append(f"{prose} **{w()} {w()}** {EMOJI} {w()}{WIDE} *{w()}* `{w()}` {w()}.")
        blocks.append(f"- {w()} {w()}\n- {w()} {EMOJI} {w()}")
    blocks.append(f"| {w()} | {w()} |\n|---|---|\n| {w()} | {w()}{WIDE} |")
    blocks.append(f"```\n{w()} {w()}\n{w()}\n```")
    blocks.append(f"{w()} {name}end")
    return "\n\n".join(blocks)


def test_the_wide_characters_measure_alike_here_and_in_the_emulator() -> None:
    # The board measures with Rich, the emulators with wcwidth: the checks below mean
    # something only where the two agree.
    for text in (WIDE, EMOJI, "⠋·✓✗↻…"):
        assert cell_len(text) == wcswidth(text), text


@dataclass(frozen=True)
class Case:
    panes: int
    size: tuple[int, int]  # rows, columns
    resize: tuple[tuple[int, int], ...] = ()
    paragraphs: int = 3
    more: bool = False  # no room for every pane: a "+N more" line (and none to grow)


CASES = {
    "2-panes-60x20": Case(2, (20, 60), paragraphs=6),
    "4-panes-120x40": Case(4, (40, 120)),
    "7-panes-80x10-more": Case(7, (10, 80), more=True),
    "12-panes-200x50": Case(12, (50, 200), paragraphs=2),
    "3-panes-resized-both-ways": Case(3, (30, 100), ((45, 160), (20, 70))),
}


class Gate(threading.Event):
    """The event a stream's last piece waits for, counting the streams that reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: set[int] = set()
        self.reached = threading.Condition()

    def wait(self, timeout: float | None = None) -> bool:
        with self.reached:
            self.waiting.add(threading.get_ident())
            self.reached.notify_all()
        return super().wait(timeout)

    def wait_for(self, streams: int) -> None:
        with self.reached:
            assert self.reached.wait_for(lambda: len(self.waiting) >= streams, timeout=30)


def run_board(
    server: FakeOpenAI, agents_file: AgentsFile, case: Case
) -> tuple[Terminal, dict[str, str]]:
    names = NAMES[: case.panes]
    answers = {n: answer_of(n, case.paragraphs) for n in names}
    hold = Gate()
    for name, answer in answers.items():
        server.script(f"m-{name}", Reply(text=answer, chunk_delay=0.006, hold=hold))
    term = Terminal(["ask", "-c", agents_file(*names), "Why?"], *case.size)
    try:
        hold.wait_for(len(names))  # every answer has streamed all but its last piece
        term.frames_from_now(2)  # and the board has drawn it
        # On a fast machine the first frame and the held one may be all there is so far (both
        # already written when "now" was taken): a few more (the spinner turns) to check.
        term.frames_drawn(3)
        for rows, columns in case.resize:
            term.resize(rows, columns)
            term.expect(r"\x1b\[H\x1b\[2J")  # drawn again whole at the new size
            term.frames_from_now(1)
        hold.set()
        code = term.finish()
    finally:
        hold.set()
        term.close()
    assert code == 0, term.output
    return term, answers


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_every_frame_of_a_real_run_draws_every_pane_whole(
    server: FakeOpenAI, agents_file: AgentsFile, case: Case
) -> None:
    term, answers = run_board(server, agents_file, case)
    checked, heights, mores = 0, set(), 0
    for index, screen in term.frames():
        try:
            board = check_board(pyte_screen(screen), answers, panes=case.panes)
        except BoardError as error:
            raise BoardError(f"frame {index}: {error}") from None
        checked += 1
        heights.add(tuple(b.bottom - b.top for b in board.boxes))
        mores += board.more > 0
    assert checked >= 3, term.output
    assert len(heights) > 1 or case.more  # the panes grew as their answers did
    assert bool(mores) == case.more


# -- the checker itself: it must see what a user would --------------------------------------------


def screen_of(text: str, columns: int) -> Screen:
    return text_screen(text.strip("\n").splitlines(), columns)


GOOD = """
╭─ alpha · m ───╮╭─ bravo · m ───╮
│ ⠋ streaming   ││ ✓ done        │
│ alphaw1 温度  ││ bravow1       │
╰──── 1 tok ────╯╰───────────────╯
+1 more: charlie · queued
"""


def test_the_checker_passes_a_whole_board() -> None:
    answers = {n: f"{n}w0 {n}w1 温度" for n in ("alpha", "bravo", "charlie")}
    board = check_board(screen_of(GOOD, 34), answers, panes=3)
    assert [b.name for b in board.boxes] == ["alpha", "bravo"] and board.more == 1


@pytest.mark.parametrize(
    ("row", "broken", "complaint"),
    [
        # The frame: a status line's erase did not move the cursor, so the first
        # pane's right border landed after its text and the second pane shifted left.
        (1, "│ ⠋ streaming ││ ✓ done │", "right border missing"),
        (1, "│ ⠋ streaming │ ││ ✓ done        │", "a border inside a pane"),
        (2, "│ alphaw1 温度  ││ alphaw1       │", "not one stretch of its answer"),
        (2, "│ alphaw1 温度  ││ bravow        │", "not one stretch of its answer"),
        (2, "│ alphaw1 温度  ││ bravow1 alphaw0", "right border missing"),
        (3, "╰──── 1 tok ────╯╰───────────────", "bottom-right corner missing"),
        (1, "│ ⠋ sreaming    ││ ✓ done        │", "not a state"),
        (0, "╭─ alpha · m ───╮╭─ alpha · m ───╮", "'alpha' has two panes"),
    ],
)
def test_the_checker_sees_a_broken_board(row: int, broken: str, complaint: str) -> None:
    answers = {n: f"{n}w0 {n}w1 温度" for n in ("alpha", "bravo", "charlie")}
    lines = GOOD.strip("\n").splitlines()
    lines[row] = broken
    with pytest.raises(BoardError, match=complaint):
        check_board(text_screen(lines, 34), answers, panes=3)


def test_the_checker_sees_text_outside_the_panes() -> None:
    stray = GOOD.replace("+1 more: charlie · queued", "│ · queued")
    with pytest.raises(BoardError, match="outside every pane"):
        parse_board(screen_of(stray, 34))


# -- keys typed while the board is up -------------------------------------------------------------


def test_keys_typed_during_a_run_never_reach_the_shell(
    server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    # A shell's part played by `read`: whatever is left in the terminal's input once fanout is
    # over is what the shell would run.
    hold = Gate()
    server.script("m-alpha", Reply(text="alpha-start and the rest", hold=hold))
    fanout = f"{sys.executable} -m fanout ask -c {agents_file('alpha')} Why?"
    child = pexpect.spawn(
        "sh",
        ["-c", f'{fanout}; echo "FANOUT-EXIT=$?"; read line; echo "SHELL-READ:$line"'],
        dimensions=(24, 100),
        encoding="utf-8",
        timeout=30,
    )
    try:
        hold.wait_for(1)
        child.expect("alpha-start")
        child.send("echo TYPED-DURING-RUN\r")
        hold.set()
        child.expect("FANOUT-EXIT=0")
        child.send("typed afterwards\r")
        child.expect(r"SHELL-READ:(.*)\r\n")
        assert child.match[1] == "typed afterwards"
        child.expect(pexpect.EOF)
    finally:
        hold.set()
        child.close(force=True)


# -- a real terminal: tmux -----------------------------------------------------------------------


class Tmux:
    """A tmux server of the test's own, one window running an interactive shell."""

    def __init__(self, socket: Path, rows: int, columns: int) -> None:
        self.socket = socket
        shell = "env PS1='$ ' bash --norc --noprofile"
        self.run("-f", "/dev/null", "new-session", "-d", "-x", str(columns), "-y", str(rows), shell)

    def run(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return done.stdout

    def type(self, text: str) -> None:
        self.run("send-keys", "-l", text)
        self.run("send-keys", "Enter")

    def capture(self) -> list[str]:
        return self.run("capture-pane", "-p").split("\n")[:-1]

    def wait_for(self, seen: Callable[[list[str]], bool]) -> list[str]:
        """Capture the window again and again until ``seen`` says what it holds is there."""
        for _ in range(3000):
            lines = self.capture()
            if seen(lines):
                return lines
        raise AssertionError("never seen:\n" + "\n".join(self.capture()))

    def close(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.run("kill-server")


@pytest.mark.skipif(
    shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)"
)
def test_in_tmux_the_board_is_whole_mid_run_and_typed_keys_are_dropped(
    server: FakeOpenAI, agents_file: AgentsFile, tmp_path: Path
) -> None:
    names = NAMES[:4]
    answers = {n: answer_of(n) for n in names}
    hold = Gate()
    for name, answer in answers.items():
        server.script(f"m-{name}", Reply(text=answer, chunk_delay=0.002, hold=hold))
    config = agents_file(*names)
    rows, columns = 40, 120
    tmux = Tmux(tmp_path / "tmux.sock", rows, columns)
    try:
        tmux.wait_for(lambda lines: lines[0].startswith("$"))
        tmux.type(f"{sys.executable} -m fanout ask -c {config} Why?; echo EXIT=$?")
        hold.wait_for(len(names))
        # Every pane shows the last words streamed: the board is drawn as the run stands.
        lasts = [answers[n].split()[-2] for n in names]
        tmux.wait_for(lambda lines: all(w in "\n".join(lines) for w in lasts))
        tmux.type("echo TYPED-DURING-RUN")
        for _ in range(5):  # frames go on (spinners, clocks): each must be whole
            check_board(text_screen(tmux.capture(), columns), answers, panes=len(names))
        hold.set()
        tmux.wait_for(lambda lines: any(line.startswith("EXIT=") for line in lines))
        tmux.type("echo AFTER-THE-RUN")
        screen = tmux.wait_for(lambda lines: "AFTER-THE-RUN" in "\n".join(lines[-3:]))
    finally:
        hold.set()
        tmux.close()
    text = "\n".join(screen)
    assert "EXIT=0" in text and "4/4 answered" in text
    assert "TYPED-DURING-RUN" not in text  # the shell never saw the keys typed meanwhile


# -- the first frame, before anything heavy loads --------------------------------------------------


def test_the_first_frame_is_drawn_before_the_heavy_modules_load(
    server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    # About 2 s of blank screen on a loaded machine while the client libraries loaded. Python
    # reports each import on the terminal as it happens (-X importtime, straight to fd 2):
    # the first frame must come before the CLI's, Rich's, pydantic's and openai's.
    server.script("m-alpha", Reply(text="alpha-start and the rest"))
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    term = Terminal(["ask", "-c", agents_file("alpha"), "Why?"], 30, 120, env=env)
    try:
        assert term.finish() == 0
    finally:
        term.close()
    output = term.output
    first_frame = output.index("\x1b[?1049h")
    assert "asking the panel" in output[first_frame : first_frame + 200]
    for module in ("typer", "rich", "pydantic", "openai", "fanout.cli", "fanout.config"):
        loaded = re.search(rf"\|\s+{re.escape(module)}\r?\n", output)
        assert loaded is not None and loaded.start() > first_frame, module
    assert output.count("\x1b[?1049h") == 1  # the board drew on the same screen


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["ask", "--bogus", "Why?"], "No such option: --bogus"),
        (["ask", "-c", "missing.yaml", "Why?"], "missing.yaml"),
    ],
    ids=["usage", "config"],
)
def test_an_error_before_the_board_is_left_on_the_main_screen(args: list[str], error: str) -> None:
    term = Terminal(args, 24, 100)
    try:
        code = term.finish()
    finally:
        term.close()
    assert code == 2
    assert "\x1b[?1049h" in term.output  # the first frame was drawn...
    assert not term.screen.on_alt and term.echo_after  # ...and the terminal given back
    assert error in term.main_text() and "fanout: error:" in term.main_text()


def test_every_frame_of_a_flow_draws_every_pane_whole(
    server: FakeOpenAI, agents_file: AgentsFile, tmp_path: Path
) -> None:
    # Flows showed the same broken borders: a later stage's panes come under the earlier ones,
    # which shrink to their status lines, titled with their stage.
    answers = {n: answer_of(n, 2) for n in ("alpha", "bravo", "charlie")}
    for name, answer in answers.items():
        server.script(f"m-{name}", Reply(text=answer, chunk_delay=0.004))
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        "inputs:\n  topic: {required: true}\nstages:\n"
        "  - {id: research, panel: [alpha, bravo], prompt: 'Research {{topic}}'}\n"
        "  - {id: draft, agent: charlie, prompt: 'Draft from {{research}}'}\n",
        encoding="utf-8",
    )
    config = agents_file(*answers)
    term = Terminal(["flow", "run", flow, "-c", config, "-i", "topic=tides"], 30, 100)
    try:
        code = term.finish()
    finally:
        term.close()
    assert code == 0, term.output
    seen: set[str] = set()
    titles: set[str] = set()
    for index, screen in term.frames():
        try:
            board = check_board(pyte_screen(screen), answers)
        except BoardError as error:
            raise BoardError(f"frame {index}: {error}") from None
        seen |= {b.name for b in board.boxes}
        titles |= {b.title for b in board.boxes}
    assert seen == set(answers)
    assert "draft · charlie · m-charlie" in titles, titles  # the later stage, titled
