"""``fanout batch`` and ``ask -o``: the files they read and write (issue 11, items 6-12).

Whatever is wrong with a file is one line on stderr and exit 2 before any call; nothing hangs
on a pipe or reads a device for ever; a batch's output file has one writer at a time; a result
line that cannot be read costs only itself.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fanout
from tests.conftest import AgentsFile, Invoke, assert_usage_error
from tests.fakeserver import BadLine, FakeOpenAI, Hang, Reply


def prompts(content: str, name: str = "q.txt") -> Path:
    source = Path.cwd() / name
    source.write_text(content, encoding="utf-8")
    return source


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def fanout_process(*args: str | Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    """``python -m fanout ...`` in a real process that runs this checkout's code."""
    env = {**os.environ, "PYTHONPATH": str(Path(fanout.__file__).parents[1])}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    command = [sys.executable, "-m", "fanout", *map(str, args)]
    return subprocess.Popen(command, env=env, **kwargs)


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pipe.txt"
    os.mkfifo(path)
    yield path


# --- item 6: not a regular file -----------------------------------------------------------------


def test_a_batch_file_that_is_a_fifo_is_refused_not_waited_on(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, fifo: Path
) -> None:
    assert_usage_error(invoke("batch", fifo, "-c", agents_file("a")), str(fifo), "pipe")
    assert server.count() == 0


def test_a_batch_file_that_is_a_device_is_refused(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    zero = Path.cwd() / "zero.txt"
    zero.symlink_to("/dev/zero")
    assert_usage_error(invoke("batch", zero, "-c", agents_file("a")), "zero.txt", "device")
    assert server.count() == 0


@pytest.mark.parametrize("command", ["batch", "ask"])
@pytest.mark.parametrize("target", ["fifo", "/dev/full"])
def test_an_output_that_is_not_a_regular_file_is_refused(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    fifo: Path,
    command: str,
    target: str,
) -> None:
    output = fifo if target == "fifo" else Path(target)
    source = prompts("Why?\n")
    args = [source] if command == "batch" else ["Why?"]
    result = invoke(command, *args, "-c", agents_file("a"), "-o", output)
    assert_usage_error(result, "--output", str(output))
    assert server.count() == 0


def test_batch_to_dev_stdout_through_a_pipe_ends_at_once(
    server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    """``fanout batch q.txt -o /dev/stdout | cat`` read its own pipe back for ever."""
    source = prompts("Why?\n")
    proc = fanout_process(
        "batch", source, "-c", agents_file("a"), "-o", "/dev/stdout",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 2, err
    assert out == b""
    assert err.decode().count("\n") == 1 and b"--output" in err and b"pipe" in err
    assert server.count() == 0


# --- item 7: a resume from an output cut inside a character --------------------------------------


def test_a_resume_from_a_line_cut_inside_a_character_skips_that_line(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    source = prompts("one\ntwo\n")
    out = Path.cwd() / "out.jsonl"
    config = agents_file("a")
    server.default = Reply(text="naïve café ☕☕☕☕")
    assert invoke("batch", source, "-c", config, "-o", out, "--concurrency", "1").exit_code == 0
    data = out.read_bytes()
    cut = data.rindex("☕".encode()) + 1  # in the middle of the last line's last ☕
    out.write_bytes(data[:cut])
    server.reset()
    result = invoke("batch", source, "-c", config, "-o", out)
    assert result.exit_code == 0, result.output
    assert [r.body["messages"][-1]["content"] for r in server.requests] == ["two"]
    good = [json.loads(line) for line in out.read_bytes().splitlines() if line.endswith(b"}")]
    assert sorted(line["prompt"] for line in good) == ["one", "two"]


def test_an_output_with_a_line_too_deep_or_not_utf8_resumes(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    out = Path.cwd() / "out.jsonl"
    out.write_bytes(b"[" * 100_000 + b"\n\xff\xfe not text\n")
    result = invoke("batch", prompts("one\n"), "-c", agents_file("a"), "-o", out)
    assert result.exit_code == 0, result.output
    assert server.count() == 1


# --- item 8: batch input the file check catches ---------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "fine"}\n{"prompt": "bad \\ud800 half"}\n', 'q.jsonl:2: the "prompt"'),
        ('{"id": "\\udfff", "prompt": "x"}\n', 'q.jsonl:1: the "id"'),
        ('{"prompt": "fine"}\n' + "[" * 100_000 + "\n", "q.jsonl:2: nested too deeply"),
        ('{"id": ' + "9" * 5000 + ', "prompt": "x"}\n', "q.jsonl:1: a number too long"),
        ('{"prompt": "x"}\n\udcff\n', "not UTF-8"),
    ],
    ids=["surrogate-prompt", "surrogate-id", "deep", "long-number", "not-utf8"],
)
def test_bad_jsonl_lines_are_one_error_before_any_call(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, content: str, message: str
) -> None:
    source = Path.cwd() / "q.jsonl"
    source.write_bytes(content.encode("utf-8", "surrogateescape"))
    result = invoke("batch", source, "-c", agents_file("a"), "-o", Path.cwd() / "out.jsonl")
    assert_usage_error(result, message)
    assert server.count() == 0
    assert not (Path.cwd() / "out.jsonl").exists()


def test_a_csv_prompt_of_any_length_works(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    document = "word " * 60_000  # 300,000 characters, over the csv module's 131,072
    source = prompts(f'id,prompt\nlong,"{document}"\nshort,Why?\n', "q.csv")
    result = invoke("batch", source, "-c", agents_file("a"), "-o", Path.cwd() / "out.jsonl")
    assert result.exit_code == 0, result.output
    sent = sorted(r.body["messages"][-1]["content"] for r in server.requests)
    assert sent == ["Why?", document.strip()]


# --- item 9: a write that fails (a full disk) -----------------------------------------------------


def test_a_write_that_fails_is_one_line_not_a_traceback_from_close(
    server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    """The file size limit makes a write fail as a full disk would (EFBIG for ENOSPC): the run
    reports it once; closing the output must not raise again re-flushing the lost line."""
    source = prompts("".join(f"question {i}\n" for i in range(6)))
    out = Path.cwd() / "out.jsonl"

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error, not a signal, past the limit
        resource.setrlimit(resource.RLIMIT_FSIZE, (700, 700))

    proc = fanout_process(
        "batch", source, "-c", agents_file("a"), "-o", out, "--concurrency", "1",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=small_files,
    )  # fmt: skip
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    text = err.decode()
    assert proc.returncode == 1, text
    assert "Traceback" not in text
    assert text.splitlines()[-1].startswith("fanout: error: cannot write the results"), text
    assert 0 < out.stat().st_size <= 700


# --- item 10: one batch per output file -----------------------------------------------------------


def test_a_second_batch_on_the_same_output_is_refused_while_the_first_runs(
    server: FakeOpenAI, agents_file: AgentsFile, tmp_path: Path
) -> None:
    source = prompts("one\ntwo\n")
    out = Path.cwd() / "out.jsonl"
    config = agents_file("a")
    server.script("m-a", Hang())  # the first batch is held at its first call
    first = fanout_process("batch", source, "-c", config, "-o", out, "--concurrency", "1",
                           stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        server.wait_for_requests(1)
        second = fanout_process("batch", source, "-c", config, "-o", out,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        output, err = second.communicate(timeout=60)
    finally:
        first.kill()
        first.wait(timeout=30)
    assert second.returncode == 2, err
    assert output == b""
    message = err.decode()
    assert message.count("\n") == 1, message
    assert f"{out} is being written by another fanout batch (pid {first.pid})" in message
    assert server.count() == 1  # the second batch asked nothing
    # Once the first is gone, its lock is too: the next run carries on.
    server.reset()
    result = fanout_process("batch", source, "-c", config, "-o", out, stderr=subprocess.PIPE)
    assert result.wait(timeout=60) == 0
    assert sorted(line["prompt"] for line in lines_of(out)) == ["one", "two"]


# --- item 11: a bad line in a Batch API result file --------------------------------------------


def batch_api(invoke: Invoke, source: Path, config: Path, out: Path) -> Any:
    return invoke(
        "batch", source, "-c", config, "-o", out, "--via", "openai-batch", "--poll-interval", "0.01"
    )


def test_a_bad_result_line_is_that_request_s_error_and_the_rest_are_written(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    source = prompts("".join(f"q{i}\n" for i in range(6)))
    out = Path.cwd() / "out.jsonl"
    config = agents_file("a", "b")
    server.script("m-a", BadLine())  # the first of twelve result lines is cut in half
    first = batch_api(invoke, source, config, out)
    assert first.exit_code == 3, first.output
    assert "Traceback" not in first.output
    lines = {(line["id"], line["name"]): line for line in lines_of(out)}
    assert len(lines) == 12
    bad = [line for line in lines.values() if line["status"] != "ok"]
    assert [(line["id"], line["name"]) for line in bad] == [("1", "a")]
    assert bad[0]["error"]["type"] == "bad_response"
    # The next run asks that one again, and only that one.
    server.reset()
    again = batch_api(invoke, source, config, out)
    assert again.exit_code == 0, again.output
    assert [r.model for r in server.requests] == ["m-a"]


def test_a_result_line_without_a_custom_id_is_skipped_with_a_warning(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    source = prompts("q0\nq1\nq2\n")
    out = Path.cwd() / "out.jsonl"
    config = agents_file("a")
    server.script("m-a", Reply(), BadLine(keep_id=False))
    result = batch_api(invoke, source, config, out)
    assert result.exit_code == 3, result.output
    assert "skipped line 2 of a Batch API result file" in result.stderr
    assert sorted(line["prompt"] for line in lines_of(out)) == ["q0", "q2"]
    server.reset()
    assert batch_api(invoke, source, config, out).exit_code == 0
    assert [r.body["messages"][-1]["content"] for r in server.requests] == ["q1"]


@pytest.mark.parametrize(
    "state",
    [
        "{not json",
        '{"batches": {"id": "x"}}',
        '{"batches": [{"id": "b-1"}]}',
        '{"batches": [{"base_url": "http://h\\u0001/v1", "api_key_env": "K", "id": "b-1"}]}',
        '{"batches": [{"base_url": "http://h/v1", "api_key_env": "K", "id": ""}]}',
        "[" * 100_000,
    ],
    ids=["not-json", "not-a-list", "no-endpoint", "bad-url", "no-token", "deep"],
)
def test_a_broken_batch_state_file_is_one_line(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, state: str
) -> None:
    out = Path.cwd() / "out.jsonl"
    out.with_name("out.jsonl.batches.json").write_text(state)
    result = batch_api(invoke, prompts("q0\n"), agents_file("a"), out)
    assert_usage_error(result, "not a fanout batch state file")
    assert server.count() == 0


@pytest.mark.parametrize("command", ["ask", "init"])
def test_a_file_that_cannot_be_written_whole_keeps_what_it_had(
    command: str, server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    """`ask -o` and `init --force` wrote in place: a full disk (here, the file size limit) left
    half a document, or half an agents.yaml that the next run would try to use."""
    target = Path.cwd() / ("run.json" if command == "ask" else "agents.yaml")
    target.write_text("the old one\n", encoding="utf-8")
    args = (
        ["ask", "-c", agents_file("a"), "--no-log", "-o", target, "Why?"]
        if command == "ask"
        else ["init", "--force"]
    )

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))

    proc = fanout_process(
        *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=small_files
    )
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    text = err.decode()
    assert proc.returncode == 1, text
    assert "Traceback" not in text and "cannot write" in text.splitlines()[-1], text
    assert target.read_text(encoding="utf-8") == "the old one\n"
    assert sorted(p.name for p in Path.cwd().iterdir()) == [target.name]  # no partial left
