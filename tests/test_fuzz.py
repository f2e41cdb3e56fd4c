"""Bad input, generated: hundreds of malformed agents files, flag combinations and batch files
from a fixed seed, each through the real CLI. Every one must end the same way: exit 2, one
non-empty line on stderr, nothing on stdout, no traceback, and no request sent.

Each case is a valid input with one thing broken, so that every case must fail; the seed makes
a failure reproducible (its id names the mutation and its number).
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner, Result

from fanout.cli import app
from fanout.config import base_url_problem
from tests.conftest import Invoke, assert_usage_error
from tests.fakeserver import FakeOpenAI

SEED = 20_240_611
COMMAND = typer.main.get_command(app)


@pytest.fixture
def invoke_fast() -> Invoke:
    """The ``invoke`` fixture without its cost: typer's ``CliRunner.invoke`` builds the click
    command from the app on every call (most of a case's time); this builds it once."""
    runner = CliRunner()

    def run(*args: str | Path, input: str | None = None) -> Result:
        exit_code, exception = 0, None
        with runner.isolation(input=input) as (stdout, stderr, output):
            try:
                COMMAND.main(args=[str(a) for a in args], prog_name="fanout")
            except SystemExit as exc:
                exit_code = exc.code if isinstance(exc.code, int) else 1
                exception = exc if exit_code else None
            except Exception as exc:
                exit_code, exception = 1, exc
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                out, err, both = stdout.getvalue(), stderr.getvalue(), output.getvalue()
        return Result(runner, out, err, both, None, exit_code, exception)

    return run


BASE_URL = "http://127.0.0.1:{port}/v1"  # the fake server's, filled in per run


def valid_panel() -> dict[str, Any]:
    return {
        "defaults": {"base_url": BASE_URL, "temperature": 0.3, "max_tokens": 200},
        "agents": [
            {"name": "physicist", "model": "m-p", "description": "the physicist"},
            {"name": "chemist", "model": "m-c", "instructions": "Be brief.", "rpm": 60},
        ],
        "synthesizer": {"model": "m-s", "timeout": 30},
        "pricing": {"m-p": {"input": 1.0, "output": 2.0}},
    }


# --- agents files: each mutation takes a valid panel and returns the text of a broken one ------

FIELDS_STR = ["model", "description", "instructions", "base_url", "api_key_env", "name"]
FIELDS_NUM = ["temperature", "top_p", "max_tokens", "timeout", "rpm", "tpm", "concurrency"]
WRONG_VALUES: list[Any] = [[1, 2], {"a": 1}, True, "", "ten"]
OUT_OF_RANGE: dict[str, list[Any]] = {
    "temperature": [2.5, -0.1, 1e300],
    "top_p": [1.5, -1],
    "max_tokens": [0, -5, 10**30, 1.5],
    "timeout": [0, -1, 1e30],
    "rpm": [0, 1e7, -3],
    "tpm": [0, 1e11],
    "concurrency": [0, 10**12, 2.5],
}
BAD_URLS = [
    "http://h\x01/v1", "http://999.1.1.1/v1", "http://1.2.3/v1", "http://h:port/v1",
    "http://h:70000/v1", "http://h:-1/v1", "http://h h/v1", "http://::1/v1", "http://[::1/v1",
    "http://[zz::1]/v1", "http://user:sk-SECRET@h/v1", "http://h/v1?api-key=sk-SECRET",
    "http://h/v1#frag", "ftp://h/v1", "h/v1", "http://", "http://-x-/v1", "http://a..b/v1",
    "http://h\u202e/v1", "https://" + "x" * 70 + ".com/v1", "http://h/\ud800", "LOCAL", "local ",
    "http://" + "a." * 1100 + "com", "javascript:alert(1)", "http://h\t/v1", "http://0x7f.1/v1",
]  # fmt: skip
TAGS = [
    "!!python/object/apply:os.system ['true']", "!!python/name:os.system", "!!binary aGk=",
    "!!set {a, b}", "!custom thing", "!!timestamp 2001-12-14", "!!omap [a: 1]", "!!int 5",
]  # fmt: skip


def dump(panel: dict[str, Any]) -> str:
    return yaml.safe_dump(panel, sort_keys=False, allow_unicode=True)


def a_section(rng: random.Random, panel: dict[str, Any]) -> dict[str, Any]:
    """One of the mappings that take persona fields: a persona, defaults or the synthesizer."""
    choice = rng.choice(["agent", "agent", "defaults", "synthesizer"])
    if choice == "agent":
        agent: dict[str, Any] = rng.choice(panel["agents"])
        return agent
    section: dict[str, Any] = panel[choice]
    return section


def wrong_type(rng: random.Random, panel: dict[str, Any]) -> str:
    section = a_section(rng, panel)
    field = rng.choice(FIELDS_STR + FIELDS_NUM)
    if field == "name" and section is panel["defaults"]:
        field = "model"
    value = rng.choice(WRONG_VALUES)
    if field in FIELDS_STR and isinstance(value, str):
        value = 42  # a string is right for a string field (and "" is wrong only for some)
    section[field] = value
    return dump(panel)


def out_of_range(rng: random.Random, panel: dict[str, Any]) -> str:
    field = rng.choice(list(OUT_OF_RANGE))
    a_section(rng, panel)[field] = rng.choice(OUT_OF_RANGE[field])
    return dump(panel)


def special_number(rng: random.Random, panel: dict[str, Any]) -> str:
    field = rng.choice(["temperature", "top_p", "timeout", "rpm", "tpm"])
    text = dump(panel).replace("agents:\n", f"agents:\n- name: n\n  {field}: PLACEHOLDER\n", 1)
    return text.replace("PLACEHOLDER", rng.choice([".inf", "-.inf", ".nan", ".NaN", "1e400"]))


def unknown_key(rng: random.Random, panel: dict[str, Any]) -> str:
    key = rng.choice(["modle", "temprature", "baseurl", "x", "api_key", "yes", "on", "1", "null"])
    where = rng.choice(["top", "agent", "defaults", "synthesizer", "pricing"])
    if where == "top":
        text = dump(panel) + f"{key}: 1\n"
        return text
    if where == "pricing":
        panel["pricing"]["m-p"][key] = 1
    else:
        a_section(rng, panel)[key] = "value"
    return dump(panel).replace("'yes'", "yes").replace("'on'", "on").replace("'1'", "1")


def bad_url(rng: random.Random, panel: dict[str, Any]) -> str:
    url = rng.choice(BAD_URLS)
    a_section(rng, panel)["base_url"] = url
    # JSON is YAML too, and writes a lone surrogate as the escape that yaml.safe_dump refuses.
    return json.dumps(panel) if "\ud800" in url else dump(panel)


def control_char(rng: random.Random, panel: dict[str, Any]) -> str:
    char = rng.choice(["\x00", "\x01", "\x07", "\x1b", "\x7f", "\x85", "\ufeff"])
    if rng.random() < 0.5:
        panel["agents"][0]["name"] = f"ph{char}ys"  # escaped by the dumper: a bad name
        return dump(panel)
    text = dump(panel)
    cut = rng.randrange(len(text))
    raw = "\x01" if char in ("\x85", "\ufeff") else char  # raw in the file: not YAML
    return text[:cut] + raw + text[cut:]


def deep(rng: random.Random, panel: dict[str, Any]) -> str:
    depth = rng.choice([50, 200, 1_000, 5_000, 50_000])
    opener, closer = rng.choice([("[", "]"), ("{a: ", "}")])
    where = rng.choice(["agents: ", "  - name: ", "defaults: "])
    body = opener * depth + closer * depth
    if where == "  - name: ":
        return f"agents:\n  - name: {body}\n"
    return f"{where}{body}\nagents:\n  - name: a\n" if where != "agents: " else where + body + "\n"


def binary(rng: random.Random, panel: dict[str, Any]) -> bytes:
    data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    return data + b"\x00" if rng.random() < 0.5 else dump(panel).encode() + b"\xff\xfe\x00"


def not_utf8(rng: random.Random, panel: dict[str, Any]) -> bytes:
    text = dump(panel).encode()
    cut = rng.randrange(len(text))
    return text[:cut] + rng.choice([b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80"]) + text[cut:]


def tag(rng: random.Random, panel: dict[str, Any]) -> str:
    where = rng.choice(["agents: ", "  - name: ", "    model: "])
    value = rng.choice(TAGS)
    if where == "agents: ":
        return f"agents: {value}\n"
    if where == "  - name: ":
        return f"agents:\n  - name: {value}\n"
    return f"agents:\n  - name: a\n    model: {value}\n"


def alias(rng: random.Random, panel: dict[str, Any]) -> str:
    kind = rng.choice(["undefined", "bomb", "self", "bad-merge", "list-key", "duplicate"])
    if kind == "undefined":
        return "agents:\n  - name: a\n    model: *nowhere\n"
    if kind == "bomb":
        levels = ["a0: &a0 [x, x, x, x, x, x]"]
        for i in range(1, 7):
            levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 6) + "]")
        field = rng.choice(["agents: *a6", "agents:\n  - name: a\n    stop: *a6"])
        return "\n".join(levels) + "\n" + field + "\n"
    if kind == "self":
        return "agents:\n  - &x\n    name: a\n    <<: *x\n"
    if kind == "bad-merge":
        return f"agents:\n  - name: a\n    <<: {rng.choice(['1', '[1, 2]', 'text', '*nowhere'])}\n"
    if kind == "list-key":
        return "agents:\n  - name: a\n? [a, b]\n: 1\n"
    return "agents:\n  - name: a\n    model: x\n    model: y\n"


def indentation(rng: random.Random, panel: dict[str, Any]) -> str:
    lines = dump(panel).splitlines()
    candidates = [i for i, line in enumerate(lines) if line.startswith("  ") and ":" in line]
    i = rng.choice(candidates)
    lines[i] = rng.choice([" ", "   ", "\t"]) + lines[i]
    text = "\n".join(lines) + "\n"
    try:
        yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text.replace("agents:\n", "agents:\n - name: x\n  y\n", 1)  # surely broken


def structure(rng: random.Random, panel: dict[str, Any]) -> str:
    return rng.choice(
        [
            "", "# nothing\n", "agents: []\n", "agents:\n", "[1, 2]\n", "just text\n", "42\n",
            "defaults: {}\n", "agents: physicist\n", "agents:\n  - physicist\n",
            "agents:\n  - name: a\n  - name: a\n", "agents:\n  - model: x\n",
            "agents:\n  - name: ''\n", "agents:\n  - name: two words\n", "agents:\n  - name: a,b\n",
            "agents:\n  - name: a\nsynthesizer: []\n", "agents:\n  - name: a\npricing: [1]\n",
            "agents:\n  - name: a\npricing:\n  m: {input: -1, output: 1}\n",
            "agents:\n  - name: a\npricing:\n  m: {input: 1}\n",
            "agents:\n  - name: a\n    stop: [a, b, c, d, e]\n",
            "agents:\n  - name: a\n    stop: 3\n",  # text is one stop sequence (#25)
            "agents:\n  - name: \"\\ud800\"\n", "agents:\n  - name: a\n    model: \"x\\udfffy\"\n",
            "{agents: [{name: a}]\n", "agents:\n  - name: a\n  model: x\n", "'unclosed\n",
        ]
    )  # fmt: skip


MUTATIONS: list[Callable[[random.Random, dict[str, Any]], str | bytes]] = [
    wrong_type, wrong_type, out_of_range, out_of_range, special_number, unknown_key,
    unknown_key, bad_url, bad_url, bad_url, control_char, control_char, deep, binary, not_utf8,
    tag, alias, alias, indentation, structure, structure,
]  # fmt: skip


def agents_cases(count: int) -> Iterator[tuple[str, str | bytes]]:
    rng = random.Random(SEED)
    for number in range(count):
        mutate = rng.choice(MUTATIONS)
        yield f"{mutate.__name__}-{number}", mutate(rng, valid_panel())


AGENT_CASES = list(agents_cases(320))


def write(path: Path, content: str | bytes, port: int) -> Path:
    if isinstance(content, str):
        content = content.replace(BASE_URL, BASE_URL.format(port=port))
        data = content.encode("utf-8", "surrogatepass")
    else:
        data = content
    path.write_bytes(data)
    return path


def test_the_valid_panel_is_valid(server: FakeOpenAI, invoke: Invoke, tmp_path: Path) -> None:
    """The mutations start from a panel that works: every case is broken by its mutation."""
    config = write(tmp_path / "panel.yaml", dump(valid_panel()), server.port)
    assert invoke("agents", "-c", config).exit_code == 0
    result = invoke("ask", "-c", config, "--json", "Why?")
    assert result.exit_code == 0, result.output
    assert server.count() == 2


def test_malformed_agents_files(
    server: FakeOpenAI, invoke_fast: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    for number, (name, content) in enumerate(AGENT_CASES):
        config = write(tmp_path / f"{name}.yaml", content, server.port)
        # Every case through `agents`; one in four through `ask` too, where a call could leak.
        commands = [["agents", "-c", config]]
        if number % 4 == 0:
            commands.append(["ask", "-c", config, "Why?"])
        for args in commands:
            result = invoke_fast(*args)
            try:
                assert_usage_error(result)
            except AssertionError as exc:
                raise AssertionError(f"case {name} ({content[:300]!r}): {exc}") from None
    assert server.count() == 0


def test_a_huge_agents_file(invoke: Invoke, tmp_path: Path) -> None:
    config = tmp_path / "huge.yaml"
    config.write_text("agents:\n  - name: a\n    description: '" + "x" * 5_000_000 + "'\n")
    assert_usage_error(invoke("agents", "-c", config), "over 4 MB")


# --- flags: a valid command with one thing wrong ----------------------------------------------

NUMERIC_FLAGS = {
    "ask": ["--concurrency", "--retries", "--timeout", "--max-retry-after", "--rpm", "--tpm",
            "--max-cost"],
    "batch": ["--concurrency", "--retries", "--timeout", "--max-retry-after", "--rpm", "--tpm",
              "--max-cost", "--poll-interval"],
    "runs list": ["--limit"],
}  # fmt: skip
BAD_NUMBERS = [
    "", "x", "1x", "nan", "NaN", "inf", "-inf", "1e400", "-1", "-0.5", "0x10", "1,5",
    "99999999999999999999", "1" + "0" * 400, "\udcff", "1\n2", "٣",
]  # fmt: skip


def flag_cases(count: int) -> Iterator[tuple[str, list[str]]]:
    rng = random.Random(SEED + 1)
    for number in range(count):
        kind = rng.choice(["number", "number", "unknown", "conflict", "value", "missing"])
        command = rng.choice(["ask", "batch", "runs list"])
        base = {"ask": ["ask", "Why?"], "batch": ["batch", "q.txt"], "runs list": ["runs", "list"]}
        args = list(base[command])
        if kind == "number":
            args += [rng.choice(NUMERIC_FLAGS[command]), rng.choice(BAD_NUMBERS)]
        elif kind == "unknown":
            args.append(rng.choice(["--bogus", "-z", "--jsn", "--agent", "---", "--json=1"]))
        elif kind == "conflict" and command == "ask":
            args += rng.choice(
                [["--json", "--jsonl"], ["--jsonl-deltas"], ["--json", "--jsonl-deltas"]]
            )
        elif kind == "conflict" and command == "batch":
            args += rng.choice(
                [["--via", "openai-batch"], ["--via", "openai-batch", "-s", "-o", "o.jsonl"]]
            )
        elif kind == "value" and command != "runs list":
            args += rng.choice(
                [["-a", ","], ["-a", " "], ["-a", "nobody"], ["-m", " "], ["-m", ""],
                 ["-a", "\udcff"], ["-m", "x\udcff"], ["-c", "missing.yaml"], ["-c", "."],
                 ["-o", "/nonexistent/dir/out"], ["-o", "."]]
                + ([["--via", "pigeon"], ["-o", "/dev/null"]] if command == "batch" else
                   [["--local-model", "nope.gguf"], ["\udcffprompt"]])
            )  # fmt: skip
        else:
            args += {"ask": ["--timeout"], "batch": ["-o"], "runs list": ["-n"]}[command]
        yield f"{kind}-{number}", args


FLAG_CASES = list(flag_cases(160))


def test_bad_flag_combinations(
    server: FakeOpenAI, invoke_fast: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    config = write(tmp_path / "panel.yaml", dump(valid_panel()), server.port)
    monkeypatch.setenv("FANOUT_CONFIG", str(config))
    (Path.cwd() / "q.txt").write_text("Why?\n")
    for name, args in FLAG_CASES:
        result = invoke_fast(*args)
        try:
            assert_usage_error(result)
        except AssertionError as exc:
            raise AssertionError(f"case {name} {args!r}: {exc}") from None
    assert server.count() == 0


# --- batch input files: a valid file with one line broken -------------------------------------

GOOD_JSONL = ['{"id": "a", "prompt": "one"}', '"two"', '{"prompt": "three", "id": 7}']
BAD_JSONL = [
    "{not json", "[1, 2]", "42", "null", '{"prompt": 5}', '{"prompt": ""}', '{"prompt": "  "}',
    '{"id": "x"}', '{"prompt": "p", "id": true}', '{"prompt": "p", "id": 1.5}',
    '{"prompt": "p", "id": null}', '{"prompt": "p", "id": [1]}', '{"prompt": "p", "id": "a"}',
    '{"prompt": "bad \\ud800"}', '{"prompt": "p", "id": "\\udc00"}', "[" * 100_000,
    '{"prompt": "p", "id": ' + "1" * 5000 + "}", '{"prompt": "p"', '"\\x41"', "'single'",
    '{"prompt": "p", "prompt": NaN, "id": Infinity}', '{"prompt": {"text": "p"}}',
]  # fmt: skip
BAD_CSV = [
    "question\nWhy?\n", "id,prompt\na,one\nb,\n", "id,prompt\na,one\na,two\n", "",
    "id\n1\n", "prompt\n \n", "\ufeffid;prompt\na;one\n",
]  # fmt: skip


def batch_cases(count: int) -> Iterator[tuple[str, str, bytes]]:
    rng = random.Random(SEED + 2)
    for number in range(count):
        kind = rng.choice(["jsonl", "jsonl", "jsonl", "csv", "encoding", "format"])
        if kind == "jsonl":
            lines = list(GOOD_JSONL)
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(BAD_JSONL))
            yield f"jsonl-{number}", "q.jsonl", "\n".join(lines).encode() + b"\n"
        elif kind == "csv":
            yield f"csv-{number}", "q.csv", rng.choice(BAD_CSV).encode()
        elif kind == "encoding":
            suffix = rng.choice(["q.txt", "q.jsonl", "q.csv"])
            good = {"q.txt": b"one\ntwo\n", "q.jsonl": b'"one"\n', "q.csv": b"prompt\none\n"}
            data = good[suffix]
            cut = rng.randrange(len(data))
            junk = rng.choice([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xe2\x82"])
            yield f"encoding-{number}", suffix, data[:cut] + junk + data[cut:]
        else:
            yield f"format-{number}", rng.choice(["q.pdf", "q", "q.json", "q.TXT.gz"]), b"one\n"


BATCH_CASES = list(batch_cases(120))


def test_bad_batch_files(
    server: FakeOpenAI, invoke_fast: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    config = write(tmp_path / "panel.yaml", dump(valid_panel()), server.port)
    for name, filename, data in BATCH_CASES:
        source = tmp_path / name / filename
        source.parent.mkdir()
        source.write_bytes(data)
        out = tmp_path / name / "out.jsonl"
        result = invoke_fast("batch", source, "-c", config, "-o", out)
        try:
            assert_usage_error(result)
        except AssertionError as exc:
            raise AssertionError(f"case {name} {data[:200]!r}: {exc}") from None
        assert not out.exists() or out.stat().st_size == 0
    assert server.count() == 0


# --- URLs: whatever passes the check, httpx (through openai) takes -----------------------------

URL_PARTS = [
    "http://", "https://", "HTTP://", "h", "host", "example.com", "127.0.0.1", "999", ".", "..",
    ":", ":80", ":0", ":65536", ":8x", "[", "]", "[::1]", "::1", "@", "user:pw@", "/", "/v1",
    "?", "#", "%", "%41", "é", "ü", "-", "_", "xn--", "\u200b", " ", "\t", "\x00", "\\", "1.2",
]  # fmt: skip


def random_urls(count: int) -> Iterator[str]:
    rng = random.Random(SEED + 3)
    for _ in range(count):
        yield rng.choice(["http://", "https://"]) + "".join(
            rng.choice(URL_PARTS) for _ in range(rng.randrange(1, 6))
        )


def test_every_base_url_that_passes_is_one_httpx_accepts() -> None:
    import openai

    # The URL class the openai client parses base_url with (httpx's), without naming httpx.
    url_class = type(openai.AsyncOpenAI(base_url="http://h/v1", api_key="k").base_url)
    accepted = 0
    for url in random_urls(3_000):
        if base_url_problem(url) is None:
            accepted += 1
            assert url_class(url).host, url
    assert accepted > 100  # the generator does reach valid URLs
