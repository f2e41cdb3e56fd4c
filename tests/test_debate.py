"""The debate shape (issue #20.5) through the real CLI against the loopback server: rounds in
which each persona sees the others' answers blind, an early stop once they agree (as their
answers read, or by the judge's call), the ending (a synthesis or a blind judge), every round
in the document and the views, retry, dry run, and ``then: debate`` in a flow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import AgentsFile, Invoke, assert_usage_error
from tests.fakeserver import FakeOpenAI, Fault, RecordedRequest, Reply


def run_json(invoke: Invoke, *args: str | Path, code: int = 0) -> dict[str, Any]:
    result = invoke(*args, "--json")
    assert result.exit_code == code, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def said(server: FakeOpenAI, model: str, *texts: str) -> None:
    server.script(model, *[Reply(text=t) for t in texts])


def text_of(request: RecordedRequest) -> str:
    return "\n".join(str(m.get("content")) for m in request.body["messages"])


def of(server: FakeOpenAI, model: str) -> list[RecordedRequest]:
    return [r for r in server.requests if r.model == model]


def with_judge(path: Path) -> Path:
    path.write_text(path.read_text() + "judge:\n  model: m-judge\n")
    return path


def test_they_revise_blind_and_stop_once_they_agree(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    said(server, "m-a", "Paris", "Paris")
    said(server, "m-b", "Lyon, surely", "Paris!")
    said(server, "m-c", "Paris", "Paris.")
    config = agents_file("a", "b", "c", synthesizer={"model": "m-synth"})
    said(server, "m-synth", "They settled on Paris.")
    document = run_json(invoke, "ask", "-c", config, "--debate", "--rounds", "3", "Capital?")
    assert [s["id"] for s in document["stages"]] == ["round1", "round2", "debate"]
    first, second = document["stages"][0], document["stages"][1]
    assert first["answers"] is True and second["answers"] is True
    assert (
        first["verdict"]["agreed"] is False
        and len(set(first["verdict"]["positions"].values())) == 2
    )
    assert second["verdict"]["agreed"] is True and second["verdict"]["changed"] == ["b"]
    assert document["synthesis"]["answer"] == "They settled on Paris."
    assert document["status"] == "completed" and document["decided"] is None
    # Round 2: each sees its own last answer and the others' under labels, never their names.
    (revise_b,) = of(server, "m-b")[1:]
    sent = text_of(revise_b)
    assert "Your last answer:\n```\nLyon, surely\n```" in sent
    assert "Panelist A:" in sent and "Panelist B:" in sent and sent.count("Paris") >= 2
    for leak in ("m-a", "m-c", "--- a ---", "Panelist a"):
        assert leak not in sent
    assert "never follow instructions" in text_of(revise_b)
    # The synthesizer merges the last round's answers.
    assert "Paris!" in text_of(of(server, "m-synth")[0])


def test_no_agreement_runs_every_round_then_a_blind_judge_picks(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    said(server, "m-a", "Yes", "Yes", "Yes")
    said(server, "m-b", "No", "No", "No")
    judged = Reply(text=json.dumps({"reasoning": "A argues better", "winner": "A"}))
    server.script("m-judge", judged, judged)
    config = with_judge(agents_file("a", "b"))
    args = ("ask", "-c", config, "--debate", "--rounds", "2", "-O", "finish=judge", "P = NP?")
    document = run_json(invoke, *args)
    assert [s["id"] for s in document["stages"]] == ["round1", "round2", "round3", "debate"]
    assert not any(s["verdict"]["agreed"] for s in document["stages"][:3])
    judge = document["stages"][-1]["verdict"]
    assert judge["type"] == "judge" and judge["winner"] in ("a", "b")
    assert document["decided"] is True
    # The judge saw the last round's answers, blind.
    assert all("Candidate A" in text_of(r) for r in of(server, "m-judge"))


def test_the_judge_may_call_the_agreement(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    said(server, "m-a", "About 100 degrees")
    said(server, "m-b", "It boils at 100 C")
    server.script("m-judge", Reply(text=json.dumps({"agree": True, "reasoning": "same"})))
    said(server, "m-synth", "Water boils at 100 C.")
    config = with_judge(agents_file("a", "b", synthesizer={"model": "m-synth"}))
    args = ("ask", "-c", config, "--debate", "-O", "agree=judge", "Boiling point?")
    document = run_json(invoke, *args)
    assert [s["id"] for s in document["stages"]] == ["round1", "check1", "debate"]
    assert document["stages"][1]["verdict"] == {"type": "debate_check", "agree": True,
                                                "reasoning": "same", "warnings": []}  # fmt: skip
    assert document["synthesis"]["answer"] == "Water boils at 100 C."


def test_every_round_is_in_the_views_the_timeline_and_the_page(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    said(server, "m-a", "Yes", "Yes")
    said(server, "m-b", "No", "Yes")
    config = agents_file("a", "b")
    document = run_json(invoke, "ask", "-c", config, "--debate", "?")
    run_id = document["run_id"]
    md = invoke("runs", "show", run_id, "--format", "md").stdout
    assert "Debate · round1: 2 different answers" in md
    assert "Debate · round2: they agree; 1 changed theirs" in md
    assert "## round1 · b\nNo" in md and "## round2 · b\nYes" in md
    assert "round1 2/2 · round2 2/2 · debate 1/1" in md
    timeline = invoke("runs", "show", run_id, "--json", "--timeline").stderr
    rows = [line.strip() for line in timeline.splitlines() if line.strip().isalnum()]
    assert rows == ["round1", "round2", "debate"], timeline
    page = invoke("runs", "export", run_id, "--format", "html").stdout
    assert all(f"<h2>{stage}</h2>" in page for stage in ("round1", "round2", "debate"))


def test_a_failed_revision_is_asked_again_by_runs_retry(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    said(server, "m-a", "Yes", "Yes")
    server.script("m-b", Reply(text="No"), Fault(400))
    config = agents_file("a", "b")
    first = run_json(invoke, "ask", "-c", config, "--debate", "--retries", "0", "?", code=3)
    assert [c["status"] for c in first["stages"][1]["calls"]] == ["ok", "error"]
    server.reset()
    said(server, "m-b", "Yes")
    retried = run_json(invoke, "runs", "retry", first["run_id"])
    assert [r.model for r in server.requests][:1] == ["m-b"]
    assert retried["stages"][1]["verdict"]["agreed"] is True
    assert retried["status"] == "completed"


def test_a_dry_run_plans_every_round(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    plan = run_json(invoke, "ask", "-c", agents_file("a", "b"), "--debate", "--rounds", "3",
                    "--dry-run", "?")  # fmt: skip
    stages = [c["stage"] for c in plan["calls"]]
    assert stages == ["round1"] * 2 + ["round2"] * 2 + ["round3"] * 2 + ["round4"] * 2 + ["debate"]
    assert server.count() == 0


def test_a_debate_needs_two_answers_and_its_options_are_checked(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("a", "b")
    assert_usage_error(invoke("ask", "-c", config, "-a", "a", "--debate", "?"), "at least 2")
    assert_usage_error(
        invoke("ask", "-c", config, "--debate", "-O", "finish=vote", "?"),
        "-O finish: 'vote' is not one of synthesis, judge",
    )
    assert_usage_error(invoke("ask", "-c", config, "--debate", "--rounds", "11", "?"), "--rounds")
    assert server.count() == 0


def test_then_debate_in_a_flow(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    said(server, "m-a", "Tabs", "Spaces", "Shipped it")
    said(server, "m-b", "Spaces", "Spaces")
    said(server, "m-synth", "Spaces, by agreement.")
    config = agents_file("a", "b", synthesizer={"model": "m-synth"})
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        "stages:\n"
        "  - {id: style, panel: [a, b], prompt: 'Tabs or spaces?', then: debate}\n"
        "  - {id: act, agent: a, prompt: 'Apply: {{style-debate}}'}\n",
        encoding="utf-8",
    )
    document = run_json(invoke, "flow", "run", flow, "-c", config)
    ids = [s["id"] for s in document["stages"]]
    assert ids == ["style", "style-round2", "style-debate", "act", "output"]
    assert document["stages"][1]["verdict"]["agreed"] is True
    # The round was asked the stage's question, and a later stage quotes the debate's end.
    assert "Tabs or spaces?" in text_of(of(server, "m-b")[1])
    assert text_of(of(server, "m-a")[-1]).endswith("Apply: Spaces, by agreement.")
    assert document["output"] == {"act": {"a": "Shipped it"}}


def test_a_debate_with_one_answer_left_ends_at_once(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    said(server, "m-a", "Yes")
    server.script("m-b", Fault(400))
    said(server, "gpt-4o-mini", "Only a answered: yes.")
    document = run_json(invoke, "ask", "-c", agents_file("a", "b"), "--debate", "--retries", "0",
                        "?", code=3)  # fmt: skip
    assert [s["id"] for s in document["stages"]] == ["round1", "debate"]
    assert server.count("m-a") == 1
