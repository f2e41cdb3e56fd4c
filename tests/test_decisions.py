"""Decisions read as decisions (issue #20): every defect the issue quotes, through the real CLI,
the real server and the real HTML export, against the loopback server. Each test failed before
the shapes presented their verdicts as one neutral summary."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from fanout.history import History, history_path
from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI, Fault, Hang, Reply
from tests.servehelp import Served, serve_in_thread, until

EXIT_UNDECIDED = 5  # the README's exit-code table


def said(server: FakeOpenAI, model: str, *texts: str) -> None:
    server.script(model, *[Reply(text=t) for t in texts])


def with_judge(path: Path) -> Path:
    path.write_text(path.read_text() + "judge:\n  model: m-judge\n")
    return path


def judged(winner: str, reasoning: str = "clearest") -> Reply:
    return Reply(text=json.dumps({"reasoning": reasoning, "winner": winner}))


@pytest.fixture
def served(agents_file: AgentsFile) -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for one in started:
        one.stop()


# -- structured answers show their value ------------------------------------------------------


def test_a_vote_with_choices_shows_each_answer_as_its_choice(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    said(server, "m-a", json.dumps({"choice": "Paris"}))
    said(server, "m-b", '```json\n{"choice": "Paris"}\n```')
    said(server, "m-c", json.dumps({"choice": "Lyon"}))
    config = agents_file("a", "b", "c")
    result = invoke("ask", "-c", config, "--vote", "--choices", "Paris,Lyon", "--format", "md", "?")
    assert result.exit_code == 0, result.output
    assert '"choice"' not in result.stdout
    assert "## a\nParis\n" in result.stdout and "## c\nLyon\n" in result.stdout


# -- an undecided verdict ---------------------------------------------------------------------


def test_a_vote_without_quorum_shows_no_check_mark_warns_once_and_exits_5(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    for model, answer in (("m-a", "Paris"), ("m-b", "Paris"), ("m-c", "Lyon"), ("m-d", "Nice")):
        said(server, model, answer, answer)
    config = agents_file("a", "b", "c", "d")
    result = invoke("ask", "-c", config, "--vote", "--format", "table", "Capital?")
    assert result.exit_code == EXIT_UNDECIDED, result.output
    shown = result.stdout + result.stderr
    assert "✓" not in shown
    assert shown.count("Paris has 2 of 4 votes (50%)") == 1, shown  # said once
    assert "No decision" in shown
    document = json.loads(invoke("ask", "-c", config, "--vote", "--json", "Capital?").stdout)
    assert (document["status"], document["decided"]) == ("completed", False)
    shown_again = invoke("runs", "show", document["run_id"], "--exit-status")
    assert shown_again.exit_code == EXIT_UNDECIDED, shown_again.output


def test_a_tie_and_an_inconsistent_judge_are_undecided(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    said(server, "m-a", "first")
    said(server, "m-b", "second")
    server.script("m-judge", judged("A"), judged("B"))  # the two orders disagree
    config = with_judge(agents_file("a", "b"))
    result = invoke("ask", "-c", config, "--judge", "--format", "md", "Which?")
    assert result.exit_code == EXIT_UNDECIDED, result.output
    assert "✓" not in result.stdout
    assert result.stdout.count("inconsistent") == 1, result.stdout


def test_a_decided_vote_exits_0_and_says_so(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    for model in ("m-a", "m-b"):
        said(server, model, "Paris")
    said(server, "m-c", "Lyon")
    result = invoke("ask", "-c", agents_file("a", "b", "c"), "--vote", "--format", "md", "?")
    assert result.exit_code == 0, result.output
    assert "✓ Paris" in result.stdout


# -- the router in words ----------------------------------------------------------------------


def test_the_router_says_in_words_whom_it_picked_and_why(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    reply = {"personas": ["physicist"], "reason": "It is a physics question."}
    said(server, "gpt-4o-mini", json.dumps(reply))
    config = agents_file("physicist", "chemist")
    for view in ("md", "table"):
        result = invoke("ask", "-c", config, "--route", "--format", view, "Why is the sky blue?")
        assert result.exit_code == 0, result.output
        out = result.stdout
        assert "fallback" not in out and '"personas"' not in out, out
        line = next(line for line in out.splitlines() if "It is a physics question." in line)
        assert "physicist" in line, out
        said(server, "gpt-4o-mini", json.dumps(reply))


# -- flows by stage id ------------------------------------------------------------------------

FLOW = """\
name: rwr
stages:
  - id: research
    panel: [physicist, chemist, biologist]
    prompt: "Research ice."
  - id: draft
    agent: teacher
    prompt: "Draft from:\\n{{research}}"
  - id: review
    panel: [skeptic, physicist]
    prompt: "Review:\\n{{draft}}"
output: [draft, review]
"""


@pytest.fixture
def flow_run(agents_file: AgentsFile, invoke: Invoke, tmp_path: Path) -> dict[str, Any]:
    config = agents_file("physicist", "chemist", "biologist", "teacher", "skeptic")
    flow = tmp_path / "flow.yaml"
    flow.write_text(FLOW, encoding="utf-8")
    result = invoke("flow", "run", "--json", flow, "-c", config)
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_a_flow_is_shown_by_its_stage_ids_and_counted_stage_by_stage(
    flow_run: dict[str, Any], invoke: Invoke
) -> None:
    run_id = flow_run["run_id"]
    for view in ("columns", "md", "text", "table"):
        result = invoke("runs", "show", run_id, "--format", view)
        assert result.exit_code == 0, result.output
        out = result.stdout
        for kind in ("Agent ·", "Panel ·", "Agent:", "Panel:"):
            assert kind not in out, (view, out)
        for stage in ("research", "draft", "review"):
            assert stage in out, (view, stage, out)
        assert "research 3/3 · draft 1/1 · review 2/2" in out, (view, out)
        assert "3/3 answered" not in out


def test_a_flows_timeline_rows_are_its_stage_ids_without_an_empty_output_row(
    flow_run: dict[str, Any], invoke: Invoke
) -> None:
    result = invoke("runs", "show", flow_run["run_id"], "--json", "--timeline")
    assert result.exit_code == 0, result.output
    headings = [line.strip() for line in result.stderr.splitlines() if line.strip().isalpha()]
    assert headings == ["research", "draft", "review"], result.stderr


def test_a_flows_html_export_has_a_section_per_stage_id(
    flow_run: dict[str, Any], invoke: Invoke
) -> None:
    result = invoke("runs", "export", flow_run["run_id"], "--format", "html")
    assert result.exit_code == 0, result.output
    page = result.stdout
    assert "<h2>Agent" not in page and "<h2>Panel" not in page and "Answers · panel" not in page
    for stage in ("research", "draft", "review"):
        assert f"<h2>{stage}" in page, page


# -- cancelled reads cancelled ----------------------------------------------------------------


def test_a_cancelled_run_reads_cancelled_in_runs_show_and_the_html_export(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, served: list[Served]
) -> None:
    server.script("m-chemist", Hang())
    served.append(serve_in_thread(agents_file("physicist", "chemist")))
    with served[0].client() as client:
        run_id = client.post("/api/runs", json={"prompt": "Why?"}).json()["id"]

        def answered() -> bool:
            calls = client.get(f"/api/runs/{run_id}").json()["customStatus"]["calls"]
            return bool(calls.get("physicist") == "ok")

        until(answered, what="the physicist's answer")
        assert client.post(f"/api/runs/{run_id}/terminate").status_code == 202
        until(lambda: client.get(f"/api/runs/{run_id}").status_code == 200, what="the end")
    shown = invoke("runs", "show", run_id, "--format", "md")
    assert shown.exit_code == 0, shown.output
    header = shown.stdout.splitlines()[0]
    assert "cancelled" in header and "failed" not in header, header
    assert "cancelled" in shown.stdout.splitlines()[-1]
    page = invoke("runs", "export", run_id, "--format", "html").stdout
    meta = next(line for line in page.splitlines() if 'class="meta"' in line)
    assert "cancelled" in meta and "failed" not in meta, meta
    assert invoke("runs", "show", run_id, "--exit-status").exit_code == 130


# -- /v1 answers in words ---------------------------------------------------------------------


def test_v1_judge_answers_with_the_winning_answer_not_a_blind_label(
    server: FakeOpenAI, agents_file: AgentsFile, served: list[Served]
) -> None:
    said(server, "m-a", "Seize the day.")
    said(server, "m-b", "Pluck the day.")
    said(server, "m-c", "Enjoy the moment.")
    server.script("m-judge", judged("B", "it keeps the image"))
    served.append(serve_in_thread(with_judge(agents_file("a", "b", "c"))))
    client = openai.OpenAI(base_url=f"{served[0].url}/v1", api_key="unused", max_retries=0)
    completion = client.chat.completions.create(
        model="fanout/judge",
        messages=[{"role": "user", "content": "carpe diem?"}],
        extra_body={"fanout": {"synthesize": False}},
    )
    content = completion.choices[0].message.content or ""
    document = (completion.model_extra or {})["fanout"]
    winner = document["judge"]["winner"]
    answer = {c["name"]: c["answer"] for c in document["agents"]}[winner]
    assert content.startswith(answer), content
    assert "{" not in content and '"winner"' not in content


def test_v1_vote_answers_with_the_winner_in_words(
    server: FakeOpenAI, agents_file: AgentsFile, served: list[Served]
) -> None:
    for model, answer in (("m-a", "Paris"), ("m-b", "Paris"), ("m-c", "Lyon")):
        said(server, model, answer)
    served.append(serve_in_thread(agents_file("a", "b", "c")))
    client = openai.OpenAI(base_url=f"{served[0].url}/v1", api_key="unused", max_retries=0)
    completion = client.chat.completions.create(
        model="fanout/vote",
        messages=[{"role": "user", "content": "Capital of France?"}],
        extra_body={"fanout": {"synthesize": False}},
    )
    content = completion.choices[0].message.content or ""
    assert content.startswith("Paris"), content
    assert "Verdict:" not in content and "{" not in content
    assert (completion.model_extra or {})["fanout"]["vote"]["winner"] == "Paris"


# -- a judge run started by the server is carried on with its judge ---------------------------


def test_a_judge_run_from_the_server_is_retried_with_its_own_judge(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, served: list[Served]
) -> None:
    said(server, "m-a", "first")
    said(server, "m-b", "second")
    said(server, "m-c", "third")
    server.script("m-judge", Fault(500), judged("A"))
    served.append(serve_in_thread(with_judge(agents_file("a", "b", "c"))))
    with served[0].client() as client:
        body = {"prompt": "Which?", "judge": True, "retries": 0}
        status = client.post("/api/runs?wait=30", json=body).json()
        run_id = status["instanceId"]
    with History(history_path(__import__("os").environ)) as history:
        stored = history.load(run_id)
    assert stored.settings["roles"]["judge"]["model"] == "m-judge"
    retried = invoke("runs", "retry", run_id, "--json")
    assert retried.exit_code == 0, retried.output
    assert [r.model for r in server.requests].count("m-judge") == 2


# -- documents written before verdicts were typed still read ----------------------------------


def _call(name: str, answer: str, stage: str, role: str = "persona") -> dict[str, Any]:
    return {"name": name, "model": f"m-{name}", "status": "ok", "answer": answer,
            "call_id": f"{stage}/{name}", "stage": stage, "role": role, "attempts": 1,
            "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}}  # fmt: skip


def _older(shape: str, stages: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schema_version": 2, "run_id": "0ld", "shape": shape, "prompt": "Capital?",
            "status": "completed", "started_at": "2026-01-01T00:00:00+00:00",
            "finished_at": "2026-01-01T00:00:01+00:00", "duration_s": 1.0,
            "stages": stages}  # fmt: skip


def test_documents_of_the_previous_version_are_read_as_typed_verdicts() -> None:
    from fanout.export import report_document, report_from_document
    from fanout.render import report_text

    vote = {"winner": None, "share": 0.5, "quorum": 0.5, "quorum_met": False,
            "tally": {"Paris": 1, "Lyon": 1},
            "groups": [{"answer": "Paris", "members": ["a"]}, {"answer": "Lyon", "members": ["b"]}],
            "abstained": [], "failed": [], "votes_cast": 2, "method": "exact",
            "warnings": ["no quorum: Paris and Lyon tie with 1 votes each"]}  # fmt: skip
    panel = {"id": "panel", "kind": "panel", "key": "vote", "verdict": vote,
             "calls": [_call("a", "Paris", "panel"), _call("b", "Lyon", "panel")]}  # fmt: skip
    report = report_from_document(_older("vote", [panel]))
    assert report.decided is False and report.answer_stages[0].id == "panel"
    text = report_text(report, "md")
    assert "No decision: Paris and Lyon tie with 1 votes each" in text and "✓" not in text
    assert report_document(report)["stages"][0]["verdict"]["type"] == "vote"

    router = {"id": "router", "kind": "router", "key": "router",
              "verdict": {"selected": ["a"], "reason": "it knows", "fallback": False},
              "calls": [_call("router", '{"personas": ["a"]}', "router", "router")]}  # fmt: skip
    routed = {"id": "panel", "kind": "panel", "calls": [_call("a", "Paris", "panel")]}
    report = report_from_document(_older("route", [router, routed]))
    assert [s.id for s in report.answer_stages] == ["panel"]
    text = report_text(report, "md")
    assert "The router asked a: it knows" in text and "fallback" not in text

    tools = {"id": "tools1", "kind": "tools", "calls": [_call("a", "Paris", "tools1")]}
    turn = {"id": "turn1", "kind": "orchestrator", "key": "orchestrator",
            "verdict": {"turn": 1, "tool_calls": ["ask_a"], "answered": False},
            "calls": [_call("orch", "", "turn1", "orchestrator")]}  # fmt: skip
    answer = {"id": "answer", "kind": "output", "key": "output",
              "verdict": {"orch": "Paris it is."}, "calls": []}  # fmt: skip
    report = report_from_document(_older("orchestrate", [turn, tools, answer]))
    assert [s.id for s in report.answer_stages] == ["tools1"]
    assert "Paris it is." in report_text(report, "md")
    odd = {"id": "x", "kind": "mystery", "key": "mystery", "verdict": {"score": 3},
           "calls": [_call("a", "?", "x")]}  # fmt: skip
    assert "score: 3" in report_text(report_from_document(_older("panel", [odd])), "md")
