"""``fanout eval`` through the real CLI and the real client, against the loopback server with
scripted personas: one always right, one always wrong, one right half the time."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fanout.stats import wilson
from tests.conftest import Invoke, assert_usage_error
from tests.evalhelp import (
    CAPITALS,
    GRADER_MODEL,
    PERSONAS,
    respond,
    script_personas,
    write_agents,
    write_eval,
)
from tests.fakeserver import FakeOpenAI, Fault, Hang, Reply
from tests.test_dashboard import browser  # noqa: F401  (the headless Chromium fixture)

CASES = len(CAPITALS)


def candidates(content: str) -> tuple[str, str]:
    found = re.findall(r"Candidate [AB]:\n```\n(.*?)\n```", content, re.DOTALL)
    assert len(found) == 2, content
    return found[0], found[1]


def run_json(invoke: Invoke, *args: str | Path) -> dict[str, Any]:
    result = invoke("eval", *args, "--json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_pass_rates_are_exact_with_their_wilson_intervals(
    server: FakeOpenAI, invoke: Invoke, tmp_path: Path
) -> None:
    script_personas(server)
    agents, capitals = write_agents(tmp_path, server), write_eval(tmp_path)
    document = run_json(invoke, capitals, "-c", agents)
    rows = document["scorecard"]
    assert [r["persona"] for r in rows] == ["right", "half", "wrong"]  # best first
    assert [r["pass_rate"] for r in rows] == [1.0, 0.5, 0.0]
    assert [(r["passed"], r["total"]) for r in rows] == [(8, 8), (4, 8), (0, 8)]
    for row in rows:
        low, high = wilson(row["passed"], row["total"])
        assert (row["ci_low"], row["ci_high"]) == (round(low, 4), round(high, 4))
    # Wilson at n = 8, known values: 100 % -> [67.6 %, 100 %], 50 % -> [21.5 %, 78.5 %].
    assert (rows[0]["ci_low"], rows[0]["ci_high"]) == (0.6756, 1.0)
    assert (rows[1]["ci_low"], rows[1]["ci_high"]) == (0.2152, 0.7848)
    assert (rows[2]["ci_low"], rows[2]["ci_high"]) == (0.0, 0.3244)
    for row in rows:
        assert set(row) >= {"persona", "passed", "total", "pass_rate", "ci_low", "ci_high",
                            "cost_usd", "p50_s", "p95_s"}  # fmt: skip
        assert row["cost_usd"] > 0 and row["p50_s"] <= row["p95_s"]
    # 4 discordant cases of 8 are not enough to tell 'half' from the best (McNemar p = 0.125),
    # 8 of 8 are: the scorecard says which differences are noise.
    assert rows[1]["within_noise"] is True and rows[1]["p_vs_best"] == 0.125
    assert rows[2]["within_noise"] is False and rows[2]["p_vs_best"] < 0.05
    assert "pass_rate" in rows[0]["best"] and "failures" not in rows[0]["best"]
    assert server.count() == CASES * len(PERSONAS)  # no grader: nothing graded


def test_the_terminal_scorecard_marks_the_best_and_the_noise(
    server: FakeOpenAI, invoke: Invoke, tmp_path: Path
) -> None:
    script_personas(server)
    result = invoke("eval", write_eval(tmp_path), "-c", write_agents(tmp_path, server))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    right = next(line for line in lines if line.startswith(" right") or line.startswith("right"))
    assert "8/8 100% ★" in right and "68-100%" in right
    assert any(line.lstrip().startswith("half ≈") for line in lines)
    assert "McNemar" in result.stdout
    assert "48/48" not in result.stdout and "24/24 done" in result.stderr


def test_the_rubric_grader_is_blind_structured_and_paid_for(
    server: FakeOpenAI, invoke: Invoke, tmp_path: Path
) -> None:
    script_personas(server)
    agents, capitals = write_agents(tmp_path, server), write_eval(tmp_path, rubric=True)
    document = run_json(invoke, capitals, "-c", agents)
    graded = [r for r in server.requests if r.model == GRADER_MODEL]
    assert len(graded) == CASES * len(PERSONAS)
    for request in graded:
        sent = json.dumps(request.body)
        for name in PERSONAS:
            assert f"m-{name}" not in sent and f'"{name}"' not in sent
            assert not any(name in str(m.get("content")) for m in request.body["messages"])
        assert request.body["response_format"]["json_schema"]["schema"]["required"] == [
            "reason", "pass", "score",
        ]  # fmt: skip
    rows = {r["persona"]: r for r in document["scorecard"]}
    assert rows["right"]["mean_score"] == 1.0 and rows["wrong"]["mean_score"] == 0.2
    assert rows["half"]["mean_score"] == pytest.approx(0.6)
    totals = document["totals"]
    assert totals["grading_usd"] > 0
    assert totals["cost_usd"] == pytest.approx(totals["answers_usd"] + totals["grading_usd"])
    cell = document["cases"][0]["cells"][0]
    rubric = next(a for a in cell["assertions"] if a["assertion"].startswith("rubric"))
    assert rubric == {"assertion": rubric["assertion"], "passed": True, "reason": "checked",
                      "score": 1.0}  # fmt: skip


def test_pairwise_ranks_the_always_right_persona_first_with_an_interval(
    server: FakeOpenAI, invoke: Invoke, tmp_path: Path
) -> None:
    script_personas(server)
    agents, capitals = write_agents(tmp_path, server), write_eval(tmp_path)
    document = run_json(invoke, capitals, "-c", agents, "--pairwise")
    board = document["leaderboard"]
    assert [r["persona"] for r in board] == ["right", "half", "wrong"]
    for row in board:
        assert set(row) >= {"persona", "rating", "ci_low", "ci_high"}
        assert row["ci_low"] <= row["rating"] <= row["ci_high"]
    assert board[0]["ci_low"] < board[0]["ci_high"]
    assert board[0]["ci_low"] > board[2]["ci_high"]  # right is clearly above wrong
    judged = [r for r in server.requests if r.model == GRADER_MODEL]
    # Three pairs a case, each in both orders; but 'half' says exactly what 'right' says on
    # half the cases: a tie without asking.
    assert len(judged) == 2 * (3 * CASES - CASES // 2)
    shown = [candidates(r.body["messages"][-1]["content"]) for r in judged]
    assert sorted(shown) == sorted((b, a) for a, b in shown)  # each pair in both orders
    assert all(a != b for a, b in shown)
    assert document["pairs"]["compared"] == 3 * CASES


def test_pairwise_reference_and_dry_run_bound_the_pairs(
    server: FakeOpenAI, invoke: Invoke, tmp_path: Path
) -> None:
    script_personas(server)
    agents, capitals = write_agents(tmp_path, server), write_eval(tmp_path, rubric=True)
    result = invoke("eval", capitals, "-c", agents, "--pairwise", "--pairs", "reference",
                    "--reference", "half", "--dry-run")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert server.count() == 0
    text = result.stdout
    assert "answers" in text and "24" in text  # 8 cases x 3 personas
    assert "pairwise judge" in text and "32" in text  # at most 8 cases x 2 pairs x 2 orders
    assert "worst case $" in text
    document = run_json(invoke, capitals, "-c", agents, "--pairwise", "--pairs", "reference",
                        "--reference", "half")  # fmt: skip
    assert document["pairs"]["compared"] == 2 * CASES
    assert next(r["persona"] for r in document["leaderboard"]) == "right"


def test_csv_has_one_row_per_case_and_persona(
    server: FakeOpenAI, invoke: Invoke, tmp_path: Path
) -> None:
    script_personas(server)
    out = tmp_path / "cells.csv"
    result = invoke("eval", write_eval(tmp_path), "-c", write_agents(tmp_path, server), "-o", out)
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert len(rows) == CASES * len(PERSONAS)
    assert {(r["case"], r["persona"]) for r in rows} == {
        (str(i), p) for i in range(1, CASES + 1) for p in PERSONAS
    }
    wrong = [r for r in rows if r["persona"] == "wrong"]
    assert all(r["pass"] == "fail" and "icontains" in r["failed"] for r in wrong)
    assert [r["answer"] for r in rows if r["persona"] == "right"] == list(CAPITALS.values())


def test_eval_compare_exits_4_on_a_regression(
    server: FakeOpenAI, invoke: Invoke, tmp_path: Path
) -> None:
    script_personas(server)
    agents, capitals = write_agents(tmp_path, server), write_eval(tmp_path)
    before = run_json(invoke, capitals, "-c", agents)

    def france_goes_wrong(body: dict[str, Any]) -> str:  # whichever case is asked first
        if body["model"] == "m-right" and "France" in str(body["messages"]):
            return "Lyon"
        return respond(body)

    server.default = Reply(respond=france_goes_wrong)
    after_file = tmp_path / "after.json"
    result = invoke("eval", capitals, "-c", agents, "-o", after_file)
    assert result.exit_code == 0, result.stderr
    compared = invoke("eval", "compare", before["id"], after_file)
    assert compared.exit_code == 4, (compared.stdout, compared.stderr)
    assert "1 worse, 0 better" in compared.stdout
    assert "case 1 · right: pass → fail (icontains 'Paris')" in compared.stdout
    again = invoke("eval", "compare", after_file, before["id"][:-2], "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["better"][0]["persona"] == "right"
    assert_usage_error(invoke("eval", "compare", "nope", after_file), "'nope'", "no eval")


def test_eval_check_lists_every_problem_with_its_line(invoke: Invoke, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "prompt: 'Capital of {{country}}?'\n"
        "tests:\n"
        "  - vars: {country: France}\n"
        "    assert:\n"
        "      - {type: icontain, value: paris}\n"
        "      - {type: regex, value: '('}\n"
        "  - vars: {place: Japan}\n"
        "    assert:\n"
        "      - {type: max-length, value: -1}\n",
        encoding="utf-8",
    )
    result = invoke("eval", "check", bad)
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines == [
        f"fanout: error: {bad}:5: unknown assertion type 'icontain' (did you mean 'icontains'?)",
        f"fanout: error: {bad}:6: regex '(' does not compile: missing ), unterminated "
        "subpattern at position 0",
        f"fanout: error: {bad}:7: case 2: the prompt uses {{{{country}}}}, which it does not set",
        f"fanout: error: {bad}:9: max-length takes a number of characters (0 or more)",
    ]
    good = write_eval(tmp_path, rubric=True)
    result = invoke("eval", "check", good)
    assert result.exit_code == 0 and "8 cases" in result.stdout
    # A run stops at the first problem, and says how to see the others.
    assert_usage_error(invoke("eval", bad), f"{bad}:5", "and 3 more: fanout eval check")


def test_an_agents_section_in_the_eval_and_a_csv_dataset(
    server: FakeOpenAI, invoke: Invoke, tmp_path: Path
) -> None:
    script_personas(server)
    dataset = tmp_path / "cases.csv"
    dataset.write_text("country,expected\n" + "".join(f"{c},{k}\n" for c, k in CAPITALS.items()))
    document = {
        "prompt": "What is the capital of {{country}}?",
        "tests": "cases.csv",
        "assert": [{"type": "icontains", "value": "{{expected}}"}],
        "defaults": {"base_url": server.base_url},
        "agents": [{"name": "right", "model": "m-right"}, {"name": "half", "model": "m-half"}],
    }
    spec = tmp_path / "own.yaml"
    spec.write_text(yaml.safe_dump(document), encoding="utf-8")
    rows = run_json(invoke, spec)["scorecard"]
    assert [(r["persona"], r["pass_rate"]) for r in rows] == [("right", 1.0), ("half", 0.5)]
    # The dataset alone, with the template on the command line.
    agents = write_agents(tmp_path, server)
    rows = run_json(invoke, dataset, "-c", agents, "-a", "wrong,right",
                    "--prompt", "What is the capital of {{country}}?")["scorecard"]  # fmt: skip
    assert [(r["persona"], r["pass_rate"]) for r in rows] == [("right", 1.0), ("wrong", 0.0)]


def test_rate_limits_and_concurrency_hold(
    server: FakeOpenAI, invoke: Invoke, tmp_path: Path
) -> None:
    script_personas(server)
    server.script("m-right", Fault(429, headers={"retry-after": "0.01"}))
    agents, capitals = write_agents(tmp_path, server), write_eval(tmp_path)
    document = run_json(invoke, capitals, "-c", agents, "--concurrency", "2")
    assert server.max_in_flight <= 2
    assert document["scorecard"][0]["pass_rate"] == 1.0  # the 429 was retried
    assert server.count() == CASES * len(PERSONAS) + 1


def test_answers_through_the_batch_api(server: FakeOpenAI, invoke: Invoke, tmp_path: Path) -> None:
    script_personas(server)
    agents, capitals = write_agents(tmp_path, server), write_eval(tmp_path, rubric=True)
    document = run_json(invoke, capitals, "-c", agents, "--via", "openai-batch",
                        "--poll-interval", "0.01")  # fmt: skip
    assert [r["pass_rate"] for r in document["scorecard"]] == [1.0, 0.5, 0.0]
    assert server.uploads == 1 and len(server.batches) == 1
    direct = [r for r in server.requests if r.path != "batch"]
    assert {r.model for r in direct} == {GRADER_MODEL}  # only the grades were asked directly


def test_bad_flags_are_one_line(invoke: Invoke, tmp_path: Path, server: FakeOpenAI) -> None:
    capitals, agents = write_eval(tmp_path), write_agents(tmp_path, server)
    assert_usage_error(invoke("eval", capitals, "-c", agents, "--pairs", "3"), "--pairwise")
    assert_usage_error(
        invoke("eval", capitals, "-c", agents, "--pairwise", "--pairs", "x"), "--pairs"
    )
    assert_usage_error(invoke("eval", capitals, "-c", agents, "-o", tmp_path / "r.txt"), ".csv")
    assert_usage_error(invoke("eval", tmp_path / "missing.yaml"), "missing.yaml")
    assert server.count() == 0


def test_a_kill_and_a_resume_ask_nothing_twice(
    server: FakeOpenAI, invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("FANOUT_HOME", str(home))
    script_personas(server)
    # One call at a time, in order (case 1: right, wrong, half; case 2...): the third question
    # to 'right' (case 3) never gets an answer, and the process is killed while it waits.
    server.script("m-right", Reply(respond=respond), Reply(respond=respond), Hang())
    agents, capitals = write_agents(tmp_path, server), write_eval(tmp_path, rubric=True)
    command = ["eval", str(capitals), "-c", str(agents), "--concurrency", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "fanout", *command],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        server.wait_for_requests(7, timeout=30)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    answered_before = {(r.model, r.body["messages"][-1]["content"]) for r in server.requests[:6]}
    server.reset()
    script_personas(server)
    result = invoke(*command, "--json")
    assert result.exit_code == 0, result.stderr
    assert "carrying on eval" in result.stderr and "6 calls already answered" in result.stderr
    asked = [(r.model, r.body["messages"][-1]["content"]) for r in server.requests]
    answers = [a for a in asked if a[0] != GRADER_MODEL]
    assert len(answers) == CASES * len(PERSONAS) - 6  # the 6 answered are not asked again
    assert not answered_before & set(answers)
    assert len([a for a in asked if a[0] == GRADER_MODEL]) == CASES * len(PERSONAS)
    document = json.loads(result.stdout)
    assert [r["pass_rate"] for r in document["scorecard"]] == [1.0, 0.5, 0.0]
    assert (home / "evals" / f"{document['id']}.json").is_file()
    # Finished: the same command again starts a new eval.
    again = invoke(*command, "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["id"] != document["id"]


def test_the_html_report_opens_with_no_network_and_no_markup_from_answers(
    server: FakeOpenAI,
    invoke: Invoke,
    tmp_path: Path,
    browser: object,  # noqa: F811
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(browser, WebDriver)
    script_personas(server)
    hostile = '<img src="http://127.0.0.1:9/x.png" onerror="window.pwned=1"></script><b>Paris</b>'

    def hostile_on_france(body: dict[str, Any]) -> str:
        asked = body["messages"][-1]["content"]
        return hostile if body["model"] == "m-right" and "France" in asked else respond(body)

    server.default = Reply(respond=hostile_on_france)
    report = tmp_path / "report.html"
    result = invoke("eval", write_eval(tmp_path, rubric=True), "-c",
                    write_agents(tmp_path, server), "--pairwise", "-o", report)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    browser.get(report.as_uri())
    cells = browser.find_elements(By.CSS_SELECTOR, "#matrix td.cell")
    assert len(cells) == CASES * len(PERSONAS)
    rows = browser.find_elements(By.CSS_SELECTOR, "#matrix tr")
    failed = [sum("fail" in c.text for c in r.find_elements(By.CSS_SELECTOR, "td.cell"))
              for r in rows[1:]]  # fmt: skip
    assert failed == sorted(failed, reverse=True) and failed[0] > failed[-1]  # failing first
    assert len(browser.find_elements(By.CSS_SELECTOR, "#scorecard tr")) == 4
    assert len(browser.find_elements(By.CSS_SELECTOR, "#leaderboard tr")) == 4
    france = next(r for r in rows[1:] if r.text.startswith("1\n"))
    france.find_elements(By.CSS_SELECTOR, "td.cell")[0].click()
    assert browser.find_element(By.CSS_SELECTOR, "#detail pre.answer").text == hostile
    assert browser.execute_script("return window.pwned") is None
    assert browser.find_elements(By.TAG_NAME, "img") == []
    assert browser.find_elements(By.TAG_NAME, "b") == []
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    search = browser.find_element(By.ID, "search")
    search.send_keys("Japan")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#matrix tr")) == 2
    search.clear()
    browser.find_element(By.ID, "failing").click()
    failing = browser.find_elements(By.CSS_SELECTOR, "#matrix tr")[1:]
    assert len(failing) == CASES  # 'wrong' fails every case
    toggles = browser.find_elements(By.CSS_SELECTOR, "#personas input")
    next(t for t in toggles if t.get_attribute("data-persona") == "wrong").click()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#matrix tr")) - 1 == CASES // 2 + 1


def test_fresh_starts_over_and_list_shows_finished_evals(
    server: FakeOpenAI, invoke: Invoke, tmp_path: Path
) -> None:
    script_personas(server)
    agents, capitals = write_agents(tmp_path, server), write_eval(tmp_path)
    first = run_json(invoke, capitals, "-c", agents, "-a", "right")
    second = run_json(invoke, capitals, "-c", agents, "-a", "right", "--fresh")
    assert first["id"] != second["id"] and server.count() == 2 * CASES
    listed = invoke("eval", "list", "--json")
    assert listed.exit_code == 0
    assert {row["id"] for row in json.loads(listed.stdout)} == {first["id"], second["id"]}
    assert json.loads(listed.stdout)[0]["pass_rates"] == {"right": 1.0}


def test_an_eval_run_again_with_the_cache_sends_nothing(
    server: FakeOpenAI, invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FANOUT_HOME", str(tmp_path / "home"))  # the cache lives beside history
    script_personas(server)
    agents, capitals = write_agents(tmp_path, server), write_eval(tmp_path, rubric=True)
    first = run_json(invoke, capitals, "-c", agents, "--cache")
    assert server.count() == 2 * CASES * len(PERSONAS)  # every answer, and its grading
    server.reset()
    again = run_json(invoke, capitals, "-c", agents, "--cache")
    assert server.count() == 0  # the answers and the grader's verdicts came from the cache
    assert [r["pass_rate"] for r in again["scorecard"]] == [1.0, 0.5, 0.0]
    assert [r["cost_usd"] for r in again["scorecard"]] == [0, 0, 0]  # a cached answer is free
    assert first["id"] != again["id"]
    server.reset()
    script_personas(server)
    run_json(invoke, capitals, "-c", agents)  # without --cache: asked again
    assert server.count() == 2 * CASES * len(PERSONAS)
