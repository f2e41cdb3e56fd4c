"""Usage, cost and the --max-cost budget; --dry-run sends nothing."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from fanout.cost import Budget, Price, Pricing, most_tokens
from fanout.models import Usage
from tests.conftest import AgentsFile, Invoke, assert_usage_error
from tests.fakeserver import EmptyChoices, FakeOpenAI, Reply

# $0.001 a token each way: the arithmetic stays readable.
PRICES = {"pricing": {f"m-{n}": {"input": 1000.0, "output": 1000.0} for n in "abc"}}
USAGE = {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}  # $0.01 a call


def test_shipped_prices_and_snapshots() -> None:
    pricing = Pricing.shipped()
    assert pricing.price("gpt-4o-mini") == Price(0.15, 0.6)
    assert pricing.price("gpt-4o-mini-2024-07-18") == Price(0.15, 0.6)
    assert pricing.price("gpt-4o-2024-08-06") == Price(2.5, 10.0)
    assert pricing.price("my-local-llama") is None
    assert pricing.cost("gpt-4o", Usage(1_000_000, 0, 1_000_000)) == pytest.approx(2.5)
    assert Pricing.shipped({"gpt-4o": Price(1, 1)}).price("gpt-4o") == Price(1, 1)


@pytest.mark.anyio
async def test_budget_waits_for_calls_in_flight_and_refuses_only_when_nothing_can_free() -> None:
    budget = Budget(1.0)
    assert await budget.reserve(0.6)
    order: list[str] = []

    async def second() -> None:
        ok = await budget.reserve(0.6)  # does not fit while the first one holds 0.6
        order.append(f"second {ok}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        order.append("first settles")
        budget.settle(0.6, 0.1)
    assert order == ["first settles", "second True"]
    assert budget.spent_usd == pytest.approx(0.1)
    budget.settle(0.6, 0.5)
    assert not await budget.reserve(0.5)  # 0.4 left, nothing in flight: refused at once


def test_cost_per_persona_and_in_total(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.default = Reply(usage=USAGE)
    config = agents_file("a", "b", extra={}, defaults={}, synthesizer=None)
    config.write_text(config.read_text() + "pricing:\n  m-a: {input: 1000.0, output: 1000.0}\n")
    result = invoke("ask", "-c", config, "--json", "Why?")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    a, b = document["agents"]
    assert a["cost_usd"] == pytest.approx(0.01)
    assert b["cost_usd"] is None  # m-b has no known price: unknown, never a guess
    assert document["cost_usd"] is None
    table = invoke("ask", "-c", config, "--format", "table", "Why?")
    assert "$0.0100" in table.stdout and "$?" in table.stdout


def test_tokens_of_failed_attempts_are_counted(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.script("m-a", EmptyChoices())
    config = agents_file("a")
    config.write_text(config.read_text() + "pricing:\n  m-a: {input: 1000.0, output: 1000.0}\n")
    result = invoke("ask", "-c", config, "--json", "--no-stream", "Why?")
    entry = json.loads(result.stdout)["agents"][0]
    assert entry["status"] == "error"
    assert entry["usage"]["input_tokens"] > 0
    assert entry["cost_usd"] == pytest.approx(entry["usage"]["input_tokens"] * 0.001)


def budget_config(agents_file: AgentsFile) -> object:
    config = agents_file("a", "b", "c", defaults={"max_tokens": 10})
    config.write_text(
        config.read_text()
        + "pricing:\n"
        + "".join(f"  m-{n}: {{input: 1000.0, output: 1000.0}}\n" for n in "abc")
    )
    return config


def worst_case() -> float:
    messages = [{"role": "system", "content": "You are a a."}, {"role": "user", "content": "Why?"}]
    return (most_tokens(messages) + 10) * 0.001


@pytest.mark.parametrize("concurrency", ["1", "8"])
def test_max_cost_stops_exactly_where_the_arithmetic_says(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, concurrency: str
) -> None:
    server.default = Reply(usage=USAGE)
    # Two calls cost 0.02; the third's worst case then no longer fits, by a hair.
    budget = 0.02 + worst_case() - 0.0005
    result = invoke(
        "ask", "-c", budget_config(agents_file), "--json", "--max-cost", f"{budget:.6f}",
        "--concurrency", concurrency, "Why?",
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    document = json.loads(result.stdout)
    statuses = sorted(a["status"] for a in document["agents"])
    assert statuses == ["ok", "ok", "skipped"]
    assert server.count() == 2
    skipped = next(a for a in document["agents"] if a["status"] == "skipped")
    assert skipped["error"]["type"] == "budget"
    assert "--max-cost" in skipped["error"]["message"]
    assert document["cost_usd"] == pytest.approx(0.02)
    assert document["cost_usd"] <= budget


def test_max_cost_with_room_for_all_skips_nothing(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    server.default = Reply(usage=USAGE)
    budget = 0.02 + worst_case() + 0.0005
    config = budget_config(agents_file)
    result = invoke("ask", "-c", config, "--json", "--max-cost", f"{budget:.6f}", "Why?")
    assert result.exit_code == 0, result.output
    assert server.count() == 3


@pytest.mark.parametrize("command", ["ask", "batch"])
def test_max_cost_with_a_model_of_unknown_price_is_one_usage_error_before_any_call(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path, command: str
) -> None:
    # It failed every persona with the same long line and recorded a failed run.
    config = agents_file("x", "y")
    if command == "batch":
        prompts = tmp_path / "q.txt"
        prompts.write_text("Why?\nHow?\n", encoding="utf-8")
        result = invoke("batch", "-c", config, "--max-cost", "1", prompts)
    else:
        result = invoke("ask", "-c", config, "--json", "--max-cost", "1", "Why?")
    assert_usage_error(
        result, "--max-cost", "no price is known for m-x (x); m-y (y)", "pricing: {m-x: {input:"
    )
    assert server.count() == 0
    assert json.loads(invoke("runs", "list", "--json").stdout)["runs"] == []


def test_dry_run_sends_nothing_and_shows_the_plan(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = budget_config(agents_file)
    result = invoke("ask", "-c", config, "--dry-run", "-s", "--json", "--max-cost", "5", "Why?")
    assert result.exit_code == 0, result.output
    assert server.count() == 0
    plan = json.loads(result.stdout)
    assert plan["dry_run"] is True
    assert [c["name"] for c in plan["calls"]] == ["a", "b", "c", "synthesizer"]
    assert plan["calls"][0]["worst_case_usd"] == pytest.approx(worst_case())
    assert plan["calls"][3]["max_tokens"] == 10  # the synthesizer inherits the defaults
    assert plan["worst_case_usd"] == pytest.approx(sum(c["worst_case_usd"] for c in plan["calls"]))
    table = invoke("ask", "-c", config, "--dry-run", "Why?")
    assert table.exit_code == 0
    assert "nothing was sent" in table.stdout and "worst case" in table.stdout
    assert server.count() == 0


@pytest.mark.parametrize("columns", [80, 160])
def test_dry_run_shows_host_and_port_and_squeezes_no_column_to_nothing(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    monkeypatch: pytest.MonkeyPatch,
    columns: int,
) -> None:
    # It showed the host alone (agents shows host:port) and, at 80 columns with limits and
    # request fields, squeezed Model to 3 cells, Endpoint to 4 and Limits to 3.
    long = {"model": "meta-llama/llama-3.1-405b-instruct-turbo", "temperature": 0.7}
    config = agents_file(
        "physicist-with-a-long-name", "b", defaults={"rpm": 500, "tpm": 200000},
        extra={"physicist-with-a-long-name": long},
    )  # fmt: skip
    monkeypatch.setenv("COLUMNS", str(columns))
    table = invoke("ask", "-c", config, "--dry-run", "--param", "seed=42", "Why?")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert all(len(line) <= columns for line in lines), table.stdout
    header = next(line for line in lines if "Persona" in line)
    cells = [c.strip() for c in header.strip("┃").split("┃")]
    assert cells[-3:] == ["Prompt", "Max out", "Worst"] and all(cells), header
    # Each column read top to bottom, without the spaces its folding added.
    rows = [line.split("│")[1:-1] for line in lines if line.startswith("│")]
    columns_text = ["".join(row[j] for row in rows).replace(" ", "") for j in range(len(cells))]
    shown = "|".join(columns_text)
    for words in (f"127.0.0.1:{server.port}", "500rpm", "200000tpm", "temperature=0.7"):
        assert words in shown, (words, table.stdout)
    assert "seed=42" in shown and "meta-llama/llama-3.1-405b-instruct-turbo" in shown


def test_max_cost_gives_unbounded_answers_a_max_tokens(
    agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("x")
    unbounded = json.loads(invoke("ask", "-c", config, "--dry-run", "--json", "Q").stdout)
    assert unbounded["calls"][0]["max_tokens"] is None
    bounded = invoke("ask", "-c", config, "--dry-run", "--json", "--max-cost", "1", "Q")
    assert json.loads(bounded.stdout)["calls"][0]["max_tokens"] == 1024


def test_dry_run_needs_no_key(invoke: Invoke) -> None:
    result = invoke("ask", "--dry-run", "-a", "physicist", "Why?")
    assert result.exit_code == 0, result.output
    assert "gpt-4o-mini" in result.stdout


def test_the_budget_holds_for_text_a_character_count_underestimates(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    # 4,000 CJK characters are ~4,000 tokens, not 1,000: the worst case must not guess low.
    server.default = Reply(
        usage={"prompt_tokens": 4000, "completion_tokens": 5, "total_tokens": 4005}
    )
    config = agents_file("a", "b", defaults={"max_tokens": 10})
    config.write_text(config.read_text() + "pricing:\n  m-a: {input: 10.0, output: 10.0}\n"
                      "  m-b: {input: 10.0, output: 10.0}\n")  # fmt: skip
    result = invoke("ask", "-c", config, "--json", "--max-cost", "0.05", "温" * 4000)
    document = json.loads(result.stdout)
    assert document["cost_usd"] <= 0.05


@pytest.mark.parametrize(("budget", "fits"), [("0.01", False), ("5", True), (None, None)])
def test_dry_run_says_whether_the_worst_case_fits_max_cost(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, budget: str | None, fits: bool
) -> None:
    config = budget_config(agents_file)
    flags = ["--max-cost", budget] if budget else []
    document = invoke("ask", "-c", config, "--dry-run", "--json", *flags, "Why?")
    assert document.exit_code == 0, document.stderr
    assert json.loads(document.stdout)["fits"] is fits
    table = invoke("ask", "-c", config, "--dry-run", *flags, "Why?")
    assert table.exit_code == 0, table.stderr
    for result in (document, table):
        if fits is False:
            worst = f"${3 * worst_case():.4f}"
            assert result.stderr == (
                f"worst case {worst} is above --max-cost $0.01: the run would stop early or "
                "skip calls\n"
            )
        else:
            assert result.stderr == ""
    assert server.count() == 0


def test_dry_run_with_an_unknown_price_does_not_fit_max_cost(
    agents_file: AgentsFile, invoke: Invoke
) -> None:
    result = invoke("ask", "-c", agents_file("x"), "--dry-run", "--json", "--max-cost", "1", "Q")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["fits"] is False
    assert "worst case unknown (no price for m-x)" in result.stderr
