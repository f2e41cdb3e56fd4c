"""Bad input never gets a traceback: one line on stderr naming the flag, file or value, exit 2,
nothing on stdout, and no request sent (issue 11: flags, prompts, environment, output paths)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fanout
from fanout.config import load_panel
from fanout.errors import ConfigError
from fanout.local import local_everyone
from tests.conftest import AgentsFile, Invoke, assert_usage_error
from tests.fakeserver import FakeOpenAI

# --- FANOUT_LOCAL has one reading ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "everyone"),
    [
        *[("", False), ("0", False), ("false", False), ("No", False), (" off ", False)],
        *[("1", True), ("true", True), ("YES", True), ("on", True)],
    ],
)
def test_fanout_local_values(value: str, everyone: bool) -> None:
    assert local_everyone({"FANOUT_LOCAL": value}) is everyone


def test_fanout_local_unset_is_off() -> None:
    assert local_everyone({}) is False


def test_fanout_local_false_leaves_the_rest_of_the_panel_where_it_is(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = agents_file("a", "b", extra={"b": {"base_url": "local"}})
    monkeypatch.setenv("FANOUT_LOCAL", "false")
    result = invoke("ask", "-c", config, "--dry-run", "--json", "Why?")
    assert result.exit_code == 0, result.output
    calls = {c["name"]: c["base_url"] for c in json.loads(result.stdout)["calls"]}
    assert calls == {"a": server.base_url, "b": "local"}


@pytest.mark.parametrize("command", ["ask", "batch"])
def test_fanout_local_that_is_neither_yes_nor_no_is_a_usage_error(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    command: str,
) -> None:
    monkeypatch.setenv("FANOUT_LOCAL", "maybe")
    config = agents_file("a")
    if command == "ask":
        result = invoke("ask", "-c", config, "Why?")
    else:
        source = tmp_path / "q.txt"
        source.write_text("Why?\n")
        result = invoke("batch", source, "-c", config)
    assert_usage_error(result, "$FANOUT_LOCAL", "'maybe'")
    assert server.count() == 0


def test_local_everyone_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        local_everyone({"FANOUT_LOCAL": "2"})


# --- flags: one line, exit 2, never click's box ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["ask", "--bogus", "Why?"], ["No such option: --bogus", "ask --help"]),
        (["ask", "--concurrency", "many", "Why?"], ["--concurrency"]),
        (["batch"], ["Missing argument", "batch --help"]),
        (["runs", "show"], ["Missing argument"]),
        (["runz"], ["No such command 'runz': did you mean runs? To ask it, fanout ask runz"]),
        (["ask", "--json=yes", "Why?"], ["--json"]),
        (["runs", "list", "-n"], ["-n"]),
    ],
    ids=[
        *["unknown-flag", "not-a-number", "missing-file", "missing-run-id", "command-typo"],
        *["value-for-a-switch", "missing-value"],
    ],
)
def test_a_usage_error_is_one_line(invoke: Invoke, args: list[str], fragments: list[str]) -> None:
    result = invoke(*args)
    message = assert_usage_error(result, *fragments)
    assert "╭" not in message and "Usage:" not in message


@pytest.mark.parametrize("args", [[], ["runs"]], ids=["fanout", "fanout-runs"])
def test_no_arguments_show_the_help_and_exit_0(invoke: Invoke, args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "Usage:" in result.stdout and "Commands" in result.stdout
    assert result.stderr == ""


# --- numbers that overflow, or are inf or nan ---------------------------------------------------

HUGE = "99999999999999999999"


@pytest.mark.parametrize(
    "args",
    [
        ["runs", "list", "--limit", HUGE],
        ["runs", "list", "-n", "0"],
        ["ask", "--timeout", "inf", "Why?"],
        ["ask", "--timeout", "nan", "Why?"],
        ["ask", "--max-cost", "nan", "Why?"],
        ["ask", "--max-cost", "inf", "Why?"],
        ["ask", "--max-cost", "1e400", "Why?"],
        ["ask", "--rpm", "inf", "Why?"],
        ["ask", "--rpm", "nan", "Why?"],
        ["ask", "--tpm", "nan", "Why?"],
        ["ask", "--concurrency", "1" + "0" * 30, "Why?"],
        ["ask", "--retries", HUGE, "Why?"],
        ["ask", "--max-retry-after", "inf", "Why?"],
        ["batch", "q.txt", "--poll-interval", "inf"],
        ["batch", "q.txt", "--poll-interval", "nan"],
        ["batch", "q.txt", "--concurrency", HUGE],
    ],
    ids=lambda args: " ".join(a for a in args if a not in ("Why?", "q.txt"))[:40],
)
def test_numbers_out_of_bounds_are_usage_errors(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, args: list[str]
) -> None:
    flag = next(a for a in args if a.startswith("-"))
    result = invoke(*args, "-c", agents_file("a")) if args[0] != "runs" else invoke(*args)
    assert_usage_error(result, flag)
    assert server.count() == 0


# --- text that is not UTF-8 (a surrogate-escaped argument) --------------------------------------

NOT_UTF8 = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")  # what Python makes of the bytes


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["ask", NOT_UTF8], "the prompt"),
        (["ask", "-a", NOT_UTF8, "Why?"], "--agents"),
        (["ask", "-m", NOT_UTF8, "Why?"], "--model"),
        (["batch", "q.txt", "-m", NOT_UTF8], "--model"),
        (["ask", "--local-model", NOT_UTF8, "Why?"], "--local-model"),
    ],
    ids=["prompt", "agents", "model", "batch-model", "local-model"],
)
def test_an_argument_that_is_not_utf8_is_a_usage_error_before_any_call(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    tmp_path: Path,
    args: list[str],
    what: str,
) -> None:
    (Path.cwd() / "q.txt").write_text("Why?\n")
    result = invoke(*args, "-c", agents_file("a", "b"))
    assert_usage_error(result, f"{what} is not UTF-8 text")
    assert server.count() == 0


@pytest.mark.parametrize("command", ["show", "retry", "synth"])
def test_a_run_id_that_is_not_utf8_is_a_usage_error(invoke: Invoke, command: str) -> None:
    assert_usage_error(invoke("runs", command, NOT_UTF8), "the run id is not UTF-8 text")


def test_a_path_that_is_not_utf8_is_named_in_a_printable_line(invoke: Invoke) -> None:
    message = assert_usage_error(invoke("agents", "-c", "gone\n" + NOT_UTF8 + ".yaml"))
    assert "gone\\n" in message and "\\udcff" in message


# --- agents files: keys, merges, text, URLs -----------------------------------------------------


def write_config(text: str) -> Path:
    path = Path.cwd() / "panel.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "text",
    [
        "agents:\n  - name: a\n? [a, b]\n: 1\n",
        "agents:\n  - name: a\n    ? {x: 1}\n    : 1\n",
    ],
    ids=["list-key", "mapping-key"],
)
def test_a_key_that_is_not_a_name_is_a_config_error(invoke: Invoke, text: str) -> None:
    config = write_config(text)
    assert_usage_error(invoke("agents", "-c", config), str(config), "a key must be a name")


MERGED = """
agents:
  - &base
    name: a
    model: m-shared
    temperature: 0.2
  - <<: *base
    name: b
    description: merged
"""


def test_merge_keys_are_data(invoke: Invoke) -> None:
    result = invoke("agents", "--json", "-c", write_config(MERGED))
    assert result.exit_code == 0, result.output
    assert [a["name"] for a in json.loads(result.stdout)["agents"]] == ["a", "b"]
    b = load_panel(Path.cwd() / "panel.yaml", environ={}).agents[1]
    assert (b.name, b.model, b.temperature, b.description) == ("b", "m-shared", 0.2, "merged")


@pytest.mark.parametrize(
    "text",
    [
        MERGED + "    name: c\n",
        "agents:\n  - <<: {model: x, model: y}\n    name: a\n",
    ],
    ids=["own-keys", "inside-the-merged-mapping"],
)
def test_a_key_written_twice_is_still_an_error_with_merge_keys(invoke: Invoke, text: str) -> None:
    assert_usage_error(invoke("agents", "-c", write_config(text)), "appears twice")


@pytest.mark.parametrize(
    "line",
    ['  - name: "\\ud800"', '  - name: a\n    instructions: "be \\udfff brief"'],
    ids=["name", "instructions"],
)
def test_a_lone_surrogate_escape_is_a_config_error(invoke: Invoke, line: str) -> None:
    config = write_config(f"agents:\n{line}\n")
    assert_usage_error(invoke("agents", "-c", config), f"{config}:", "surrogate")


@pytest.mark.parametrize(
    "url",
    [
        "http://h\\x01/v1",
        "http://999.1.1.1/v1",
        "http://1.2.3/v1",
        "http://01.1.1.1/v1",
        "http://localhost:abc/v1",
        "http://localhost:99999/v1",
        "http://localhost:0/v1",
        "http://local host/v1",
        "http://::1/v1",
        "http://[::1/v1",
        "http://[::g]/v1",
        "http://-h-/v1",
        "http://a..b/v1",
        "http:///v1",
        "http://h/v1#part",
        "http://h\\u200b/v1",
        "ftp://h/v1",
        "http://" + "a" * 64 + ".example/v1",
    ],
)
def test_an_unusable_base_url_is_refused_before_any_call(
    server: FakeOpenAI, invoke: Invoke, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    config = write_config(f'agents:\n  - name: a\n    base_url: "{url}"\n')
    assert_usage_error(invoke("agents", "-c", config), f"{config}:3:", "base_url")
    assert_usage_error(invoke("ask", "-c", config, "Why?"), f"{config}:3:", "base_url")
    assert server.count() == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/v1",
        "http://[::1]:11434/v1",
        "https://bücher.example/v1",
        "http://my_service:8000/v1",
        "HTTPS://api.example.com./v1",
        "http://h:/v1",
    ],
)
def test_usable_base_urls_are_accepted(invoke: Invoke, url: str) -> None:
    config = write_config(f'agents:\n  - name: a\n    base_url: "{url}"\n')
    result = invoke("agents", "-c", config, "--json")
    assert result.exit_code == 0, result.output


def test_credentials_in_openai_base_url_are_refused_without_being_printed(
    server: FakeOpenAI, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://me:SECRET@127.0.0.1:{server.port}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    config = write_config("agents:\n  - name: a\n")
    message = assert_usage_error(
        invoke("ask", "-c", config, "Why?"), "$OPENAI_BASE_URL", "api_key_env", "***@"
    )
    assert "SECRET" not in message
    assert server.count() == 0


def test_a_bad_openai_base_url_is_a_usage_error(
    invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://h\x01/v1")
    config = write_config("agents:\n  - name: a\n")
    assert_usage_error(invoke("agents", "-c", config), "$OPENAI_BASE_URL", "\\x01")


def test_openai_base_url_is_not_checked_when_no_persona_uses_it(
    invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "not a url")
    config = write_config("agents:\n  - name: a\n    base_url: http://127.0.0.1:9/v1\n")
    config.write_text(config.read_text() + "synthesizer:\n  base_url: http://127.0.0.1:9/v1\n")
    assert invoke("agents", "-c", config).exit_code == 0


# --- files that are not regular files, or too big ------------------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    return path


def test_an_agents_file_that_is_a_fifo_is_refused_not_waited_on(invoke: Invoke, fifo: Path) -> None:
    assert_usage_error(invoke("agents", "-c", fifo), str(fifo), "pipe")


def test_an_agents_file_from_the_environment_that_is_a_fifo_is_refused(
    invoke: Invoke, fifo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FANOUT_CONFIG", str(fifo))
    assert_usage_error(invoke("agents"), str(fifo), "pipe")


def test_an_agents_file_that_is_a_device_is_refused(invoke: Invoke) -> None:
    assert_usage_error(invoke("agents", "-c", "/dev/zero"), "/dev/zero", "device")


def test_an_agents_file_over_4_mb_is_refused(invoke: Invoke) -> None:
    config = write_config("agents:\n  - name: a\n" + "# padding\n" * 500_000)
    assert_usage_error(invoke("agents", "-c", config), str(config), "over 4 MB")


def test_a_prompt_on_stdin_is_read_to_a_bound(server: FakeOpenAI, agents_file: AgentsFile) -> None:
    """``fanout ask < /dev/zero`` read until memory ran out."""
    with open("/dev/zero", "rb") as zeros:
        proc = subprocess.run(
            [sys.executable, "-m", "fanout", "ask", "-c", str(agents_file("a"))],
            stdin=zeros,
            capture_output=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(Path(fanout.__file__).parents[1])},
            check=False,
        )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == b""
    assert proc.stderr.decode().splitlines() == ["fanout: error: the prompt on stdin is over 16 MB"]
    assert server.count() == 0


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("text", "not a GGUF model"),
        ("empty", "the file is empty, not a GGUF model"),
        ("directory", "is a directory, not a GGUF model file"),
        ("fifo", "is a pipe (FIFO), not a GGUF model file"),  # it hung, waiting for a writer
        ("missing", "no such file"),
        ("unreadable", "cannot read it"),
    ],
)
def test_local_model_that_is_not_a_gguf_file_is_a_usage_error(
    invoke: Invoke,
    agents_file: AgentsFile,
    server: FakeOpenAI,
    tmp_path: Path,
    case: str,
    fragment: str,
) -> None:
    model = tmp_path / "model.bin"
    if case == "text":
        model.write_text("this is not a model\n")
    elif case == "empty":
        model.write_bytes(b"")
    elif case == "directory":
        model.mkdir()
    elif case == "fifo":
        os.mkfifo(model)
    elif case == "unreadable":
        if os.geteuid() != 0:
            model.write_bytes(b"GGUF")
            model.chmod(0)
        else:  # root reads any file: one the kernel refuses to read at offset 0
            model = Path("/proc/self/mem")
    result = invoke("ask", "-c", agents_file("a"), "--local-model", model, "Why?")
    assert_usage_error(result, f"--local-model: {model}: {fragment}")
    assert server.count() == 0
