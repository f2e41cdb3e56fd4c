"""Flows through the real CLI against the loopback server: order, overlap, what each stage
sees, stopping, output, dry run, resume after a crash, and ``flow check``'s one-line errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AgentsFile, Invoke, assert_usage_error
from tests.fakeserver import FakeOpenAI, Fault, Hang, RecordedRequest, Reply
from tests.test_runs import history_text, wait_until

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

THREE_STAGES = """\
name: rwr
inputs: {topic: {required: true}}
stages:
  - id: research
    panel: [physicist, chemist, biologist]
    prompt: "Research {{topic}}."
  - id: draft
    agent: teacher
    prompt: "Draft on {{topic}} from:\\n{{research}}"
  - id: review
    panel: [skeptic, physicist]
    prompt: "Review:\\n{{draft}}"
output: [draft, review]
"""


@pytest.fixture
def config(agents_file: AgentsFile) -> Path:
    return agents_file("physicist", "chemist", "biologist", "teacher", "skeptic")


def write_flow(tmp_path: Path, text: str, name: str = "flow.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def run_json(invoke: Invoke, *args: str | Path, code: int = 0) -> dict[str, Any]:
    result = invoke("flow", "run", "--json", *args)
    assert result.exit_code == code, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def of(server: FakeOpenAI, model: str) -> list[RecordedRequest]:
    return [r for r in server.requests if r.model == model]


def user_text(request: RecordedRequest) -> str:
    return str(request.body["messages"][-1]["content"])


def test_stage_two_starts_after_stage_one_ended_and_stage_one_overlapped(
    server: FakeOpenAI, config: Path, invoke: Invoke, tmp_path: Path
) -> None:
    # gate=3: each research reply waits until all three are in flight, so overlap is forced
    # and a serial run would fail (the gate gives up with a 400).
    for name in ("physicist", "chemist", "biologist"):
        server.script(f"m-{name}", Reply(gate=3))
    flow = write_flow(tmp_path, THREE_STAGES)
    document = run_json(invoke, flow, "-c", config, "-i", "topic=ice", "--retries", "0")
    research = [r for r in server.requests if user_text(r) == "Research ice."]
    draft = of(server, "m-teacher")
    assert len(research) == 3 and len(draft) == 1
    assert max(r.started for r in research) < min(r.finished or 0 for r in research)
    assert draft[0].started >= max(r.finished or 0 for r in research)
    reviews = [r for r in server.requests if user_text(r).startswith("Review:")]
    assert min(r.started for r in reviews) >= draft[0].finished  # type: ignore[operator]
    assert [s["id"] for s in document["stages"]] == ["research", "draft", "review", "output"]
    assert document["shape"] == "flow" and document["status"] == "completed"


def test_stage_two_prompt_holds_stage_one_answers_and_output_picks_stages(
    server: FakeOpenAI, config: Path, invoke: Invoke, tmp_path: Path
) -> None:
    server.script("m-physicist", Reply(text="energy view"))
    server.script("m-chemist", Reply(text="bond view"))
    server.script("m-biologist", Reply(text="cell view"))
    server.script("m-teacher", Reply(text="THE DRAFT"))
    document = run_json(invoke, write_flow(tmp_path, THREE_STAGES), "-c", config, "-i", "topic=x")
    prompt = user_text(of(server, "m-teacher")[0])
    for name, answer in (("physicist", "energy"), ("chemist", "bond"), ("biologist", "cell")):
        assert f"--- {name} ---\n{answer} view" in prompt
    assert all(user_text(r) == "Review:\nTHE DRAFT" for r in of(server, "m-skeptic"))
    assert set(document["output"]) == {"draft", "review"}
    assert document["output"]["draft"] == {"teacher": "THE DRAFT"}
    assert set(document["output"]["review"]) == {"skeptic", "physicist"}


def test_a_failed_persona_appears_as_missing(
    server: FakeOpenAI, config: Path, invoke: Invoke, tmp_path: Path
) -> None:
    server.script("m-chemist", Fault(500))
    flow = write_flow(tmp_path, THREE_STAGES)
    document = run_json(invoke, flow, "-c", config, "-i", "topic=x", "--retries", "0", code=3)
    prompt = user_text(of(server, "m-teacher")[0])
    assert "[missing: no answer from chemist]" in prompt
    assert "--- physicist ---" in prompt and "--- chemist ---" not in prompt
    draft = document["stages"][1]["calls"][0]
    assert draft["status"] == "ok" and draft["missing"] == ["research/chemist"]


def test_a_stage_with_no_answer_stops_the_flow(
    server: FakeOpenAI, config: Path, invoke: Invoke, tmp_path: Path
) -> None:
    server.default = Fault(500)
    flow = write_flow(tmp_path, THREE_STAGES)
    document = run_json(invoke, flow, "-c", config, "-i", "topic=x", "--retries", "0", code=1)
    assert server.count() == 3  # only the research stage was asked
    later = [c for s in document["stages"][1:] for c in s["calls"]]
    assert [c["status"] for c in later] == ["skipped"] * 3
    assert all(c["error"]["type"] == "flow_stopped" for c in later)
    assert "stage 'research' got 0 of 3 answers" in later[0]["error"]["message"]


def test_min_success_and_on_error_continue(
    server: FakeOpenAI, config: Path, invoke: Invoke, tmp_path: Path
) -> None:
    server.script("m-chemist", Fault(500))
    strict = THREE_STAGES.replace(
        '    prompt: "Research', '    min_success: 3\n    prompt: "Research'
    )
    document = run_json(
        invoke, write_flow(tmp_path, strict), "-c", config, "-i", "topic=x", "--retries", "0",
        code=3,
    )  # fmt: skip
    assert document["stages"][1]["calls"][0]["status"] == "skipped"
    server.reset()
    server.default = Fault(500)
    lenient = THREE_STAGES.replace(
        '    prompt: "Research', '    on_error: continue\n    prompt: "Research'
    )
    run_json(
        invoke, write_flow(tmp_path, lenient), "-c", config, "-i", "topic=x", "--retries", "0",
        code=1,
    )  # fmt: skip
    assert len(of(server, "m-teacher")) == 1  # asked, with every research answer missing
    assert "[missing: no answer from physicist, chemist, biologist]" in user_text(
        of(server, "m-teacher")[0]
    )


def test_then_synthesize_merges_a_stage_and_one_answer_by_name(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    config = agents_file("a", "b", synthesizer={"model": "m-synth"})
    server.script("m-a", Reply(text="from a"))
    server.script("m-synth", Reply(text="merged"))
    flow = write_flow(
        tmp_path,
        """\
stages:
  - id: ask
    panel: [a, b]
    prompt: "Question?"
    then: synthesize
  - id: polish
    agent: a
    prompt: "Polish {{ask-synthesis}}; a said {{ask.a}}"
""",
    )
    document = run_json(invoke, flow, "-c", config)
    assert [s["id"] for s in document["stages"]] == ["ask", "ask-synthesis", "polish", "output"]
    synth = of(server, "m-synth")[0]
    assert "Question?" in user_text(synth) and "from a" in user_text(synth)
    assert user_text(of(server, "m-a")[-1]) == "Polish merged; a said from a"
    assert document["output"] == {"polish": {"a": "m-a says: Polish merged; a said from a"}}


def test_inputs_are_checked_and_defaults_apply(
    server: FakeOpenAI, config: Path, invoke: Invoke, tmp_path: Path
) -> None:
    flow = write_flow(tmp_path, THREE_STAGES)
    missing = invoke("flow", "run", flow, "-c", config)
    assert missing.exit_code == 2
    assert "input 'topic' is required: give -i topic=..." in missing.stderr
    unknown = invoke("flow", "run", flow, "-c", config, "-i", "topci=x")
    assert unknown.exit_code == 2 and "did you mean 'topic'" in unknown.stderr
    defaulted = write_flow(
        tmp_path,
        "inputs: {who: {default: world}}\n"
        "stages:\n  - {id: s, agent: teacher, prompt: 'hi {{who}}'}\n",
    )
    run_json(invoke, defaulted, "-c", config)
    assert user_text(server.requests[0]) == "hi world"
    assert server.count() == 1


def test_the_flow_may_bring_its_own_agents(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    config = agents_file("a")
    flow = write_flow(
        tmp_path,
        f"""\
defaults: {{base_url: "{server.base_url}"}}
agents:
  - {{name: poet, model: m-poet, instructions: You rhyme.}}
stages:
  - {{id: s, panel: [a, poet], prompt: "Sing"}}
""",
    )
    document = run_json(invoke, flow, "-c", config)
    assert {c["name"] for c in document["stages"][0]["calls"]} == {"a", "poet"}
    poet = of(server, "m-poet")[0]
    assert poet.body["messages"][0] == {"role": "system", "content": "You rhyme."}


@pytest.mark.parametrize(
    ("section", "url"),
    [
        ("defaults", "http://user:sk-SECRET-0123456789@127.0.0.1:9/v1"),
        ("defaults", "http://h/v1?api-key=sk-SECRET-0123456789"),
        ("agents", "http://user:sk-SECRET-0123456789@h h/v1"),
    ],
)
def test_a_key_in_a_flow_s_own_base_url_is_masked_as_the_agents_file_masks_it(
    section: str, url: str, invoke: Invoke, tmp_path: Path
) -> None:
    own = (
        f'defaults: {{base_url: "{url}"}}\n'
        if section == "defaults"
        else f'agents:\n  - {{name: a, base_url: "{url}"}}\n'
    )
    flow = write_flow(tmp_path, own + 'stages:\n  - {id: s, panel: [a], prompt: "Sing"}\n')
    agents = tmp_path / "agents.yaml"
    agents.write_text(
        own.replace("stages", "") + "agents:\n  - {name: a}\n" * (section != "agents")
    )
    for result in (invoke("flow", "check", flow), invoke("flow", "run", flow)):
        line = assert_usage_error(result, f"{flow}:", "base_url", "***")
        assert "SECRET" not in line
    # The same URL in an agents file reads the same way.
    line = assert_usage_error(invoke("agents", "-c", agents), "base_url", "***")
    assert "SECRET" not in line


def test_dry_run_lists_every_stage_with_worst_cases(
    server: FakeOpenAI, config: Path, invoke: Invoke, tmp_path: Path
) -> None:
    flow = write_flow(tmp_path, THREE_STAGES)
    result = invoke(
        "flow", "run", flow, "-c", config, "-i", "topic=x", "--dry-run", "--json", "-m", "gpt-4o"
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    names = [c["name"] for c in plan["calls"]]
    assert names == [
        "research/physicist", "research/chemist", "research/biologist", "draft/teacher",
        "review/skeptic", "review/physicist",
    ]  # fmt: skip
    tokens = {c["name"]: c["prompt_tokens_estimate"] for c in plan["calls"]}
    # the draft quotes three answers of at most 1,024 tokens each
    assert tokens["draft/teacher"] > 3 * 1024 > tokens["research/physicist"]
    assert plan["worst_case_usd"] > 0
    assert server.count() == 0


def test_max_cost_covers_the_whole_flow(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    config = agents_file(
        "a", "b", "c", defaults={"max_tokens": 100}, extra={"c": {"max_tokens": 1000}}
    )
    flow = write_flow(
        tmp_path,
        "stages:\n  - {id: one, panel: [a, b], prompt: go}\n"
        "  - {id: two, agent: c, prompt: 'again {{one}}'}\n",
    )
    # gpt-4o: $10 per million answer tokens. The first stage's two calls fit in the budget
    # (about $0.001 each at worst); what they leave cannot hold the second stage's $0.01.
    document = run_json(invoke, flow, "-c", config, "-m", "gpt-4o", "--max-cost", "0.005", code=3)
    two = document["stages"][1]["calls"][0]
    assert two["status"] == "skipped" and two["error"]["type"] == "budget"
    assert [r.model for r in server.requests] == ["gpt-4o", "gpt-4o"]


def test_resume_after_a_crash_in_stage_two_asks_nothing_from_stage_one(
    server: FakeOpenAI, config: Path, invoke: Invoke, tmp_path: Path
) -> None:
    server.script("m-teacher", Hang())
    flow = write_flow(tmp_path, THREE_STAGES)
    command = ["flow", "run", str(flow), "-c", str(config), "-i", "topic=ice", "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fanout", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        server.wait_for_requests(4)  # three research answers, then the draft that hangs
        wait_until(lambda: history_text().count("m-biologist says") == 1, "stage 1 is stored")
        wait_until(lambda: "m-chemist says" in history_text(), "stage 1 is stored")
        wait_until(lambda: "m-physicist says" in history_text(), "stage 1 is stored")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    flow.unlink()  # the run is carried on from its record, not from the file
    runs = json.loads(invoke("runs", "list", "--json").stdout)["runs"]
    server.reset()
    retried = invoke("runs", "retry", runs[0]["run_id"], "--json")
    assert retried.exit_code == 0, retried.output
    asked = sorted(r.model for r in server.requests)
    assert asked == ["m-physicist", "m-skeptic", "m-teacher"]  # the draft, then the review
    document = json.loads(retried.stdout)
    assert document["status"] == "completed"
    research = document["stages"][0]["calls"]
    assert [c["answer"] for c in research] == [
        "m-physicist says: Research ice.", "m-chemist says: Research ice.",
        "m-biologist says: Research ice.",
    ]  # fmt: skip
    assert "m-chemist says: Research ice." in user_text(of(server, "m-teacher")[0])


def test_jsonl_streams_every_stage(
    server: FakeOpenAI, config: Path, invoke: Invoke, tmp_path: Path
) -> None:
    flow = write_flow(tmp_path, THREE_STAGES)
    result = invoke("flow", "run", flow, "-c", config, "-i", "topic=x", "--jsonl")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    started = [line["stage"] for line in lines if line["type"] == "stage_started"]
    assert started == ["research", "draft", "review", "output"]
    assert lines[-1]["type"] == "run_finished"


def test_the_human_view_shows_every_stage(
    server: FakeOpenAI, config: Path, invoke: Invoke, tmp_path: Path
) -> None:
    flow = write_flow(tmp_path, THREE_STAGES)
    result = invoke("flow", "run", flow, "-c", config, "-i", "topic=x")
    assert result.exit_code == 0, result.output
    assert "teacher" in result.stdout and "skeptic" in result.stdout


# -- flow check --------------------------------------------------------------------------------


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_flow_check_accepts_the_examples(example: Path, invoke: Invoke) -> None:
    result = invoke("flow", "check", example)  # against the panel shipped with fanout
    assert result.exit_code == 0, result.output
    assert ": ok:" in result.stdout


BROKEN = [
    (
        "stages:\n  - id: a\n    agent: teacher\n    promt: hi\n",
        ":4: stages[0].promt: unknown key 'promt' (did you mean 'prompt'?)",
    ),
    (
        "stages:\n  - id: a\n    agent: nobody\n    prompt: hi\n",
        ":3: stage 'a': unknown persona 'nobody'",
    ),
    (
        "stages:\n  - id: a\n    panel: [teacher, skeptc]\n    prompt: hi\n",
        ":3: stage 'a': unknown persona 'skeptc' (did you mean 'skeptic'?)",
    ),
    (
        "stages:\n  - {id: a, agent: teacher, prompt: '{{b}}'}\n"
        "  - {id: b, agent: teacher, prompt: hi}\n",
        ":2: stage 'a': refers to stage 'b', which comes later (stages run in order)",
    ),
    (
        "stages:\n  - {id: a, agent: teacher, prompt: 'x {{nope}}'}\n",
        ":2: {{nope}} is neither an input nor a stage",
    ),
    (
        "stages:\n  - {id: a, agent: teacher, prompt: '{{b}}'}\n"
        "  - {id: b, agent: teacher, prompt: '{{a}}'}\n",
        ":2: stage 'a': a cycle: a -> b -> a",
    ),
    (
        "stages:\n  - {id: a, agent: teacher, prompt: '{{a}}'}\n",
        ":2: stage 'a': refers to stage 'a', which is this one",
    ),
    (
        "stages:\n  - {id: a, panel: [teacher, skeptic], min_success: 3, prompt: hi}\n",
        ":2: stage 'a': min_success 3 is more than its 2 persona(s) can give",
    ),
    (
        "stages:\n  - {id: a, agent: teacher, prompt: hi, then: council}\n",
        "then: council needs at least 3 personas (each ranks the others' answers); it has 1",
    ),
    ("stages:\n  - {id: a, agent: teacher, prompt: hi}\noutput: [b]\n", ":3: output: no stage 'b'"),
    (
        "stages:\n  - {id: a, agent: teacher, panel: [skeptic], prompt: hi}\n",
        "give either panel: [personas] or agent: persona",
    ),
    (
        "stages:\n  - {id: a, panel: [teacher], prompt: hi}\n"
        "  - {id: b, agent: teacher, prompt: '{{a.skeptic}}'}\n",
        ":3: {{a.skeptic}}: stage 'a' does not ask 'skeptic'",
    ),
    (
        "stages:\n  - {id: a, agent: teacher, prompt: hi}\n"
        "  - {id: a, agent: teacher, prompt: hi}\n",
        ":3: stage id 'a' appears twice",
    ),
    ("stages: []\n", "the flow needs at least one stage"),
    ("name: x\n", "stages: required key is missing"),
]


@pytest.mark.parametrize(("text", "problem"), BROKEN)
def test_flow_check_names_file_line_and_problem(
    text: str, problem: str, invoke: Invoke, tmp_path: Path
) -> None:
    flow = write_flow(tmp_path, text)
    result = invoke("flow", "check", flow)
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "\n" not in line
    assert line.startswith(f"fanout: error: {flow}:"), line
    assert problem in line, line


def test_flow_check_reports_every_problem_and_flow_run_the_first(
    server: FakeOpenAI, invoke: Invoke, tmp_path: Path
) -> None:
    # It stopped at the first: a user fixed one problem a run.
    flow = write_flow(
        tmp_path,
        "stages:\n"
        "  - {id: a, agent: nobody, prompt: hi}\n"
        "  - {id: b, panel: [teacher, skeptc], prompt: '{{missing}}'}\n"
        "  - {id: c, agent: teacher, prompt: '{{d}}'}\n"
        "  - {id: d, agent: teacher, prompt: hi, min_success: 2}\n"
        "output: [e]\n",
    )
    result = invoke("flow", "check", flow)
    assert result.exit_code == 2 and result.stdout == "", result.output
    lines = result.stderr.splitlines()
    expected = [
        ":2: stage 'a': unknown persona 'nobody'",
        ":3: stage 'b': unknown persona 'skeptc' (did you mean 'skeptic'?)",
        ":3: {{missing}} is neither an input nor a stage",
        ":4: stage 'c': refers to stage 'd', which comes later",
        ":5: stage 'd': min_success 2 is more than its 1 persona(s) can give",
        ":6: output: no stage 'e'",
    ]
    assert len(lines) == len(expected), lines
    for line, problem in zip(lines, expected, strict=True):
        assert line.startswith(f"fanout: error: {flow}:") and problem in line, line
    run = invoke("flow", "run", flow)
    message = assert_usage_error(run, ":2: stage 'a': unknown persona 'nobody'")
    assert "(and 5 more: fanout flow check)" in message
    assert server.count() == 0


def test_flow_check_lists_problems_in_file_order_whatever_order_they_are_checked(
    invoke: Invoke, tmp_path: Path
) -> None:
    # A stage's then: is checked before its prompt; written after it, it was listed first.
    flow = write_flow(
        tmp_path,
        "stages:\n  - id: a\n    agent: teacher\n    prompt: '{{missing}}'\n    then: jugde\n",
    )
    result = invoke("flow", "check", flow)
    assert result.exit_code == 2 and result.stdout == "", result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 2, lines
    assert f"{flow}:4:" in lines[0] and "{{missing}}" in lines[0]
    assert f"{flow}:5:" in lines[1] and "jugde" in lines[1]


def test_then_judge_and_then_vote_follow_a_flow_stage(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    config = agents_file("a", "b", "c")
    server.script("m-a", Reply(text="Paris"))
    server.script("m-b", Reply(text="paris."))
    server.script("m-c", Reply(text="Lyon"))
    server.script("m-a", Reply(text="draft one"))
    server.script("m-b", Reply(text="draft two"))
    judge = json.dumps({"reasoning": "B is clearer", "winner": "B"})
    server.script("gpt-4o-mini", Reply(text=judge), Reply(text=judge))
    flow = write_flow(
        tmp_path,
        """\
stages:
  - id: capital
    panel: [a, b, c]
    prompt: "Capital of France?"
    then: vote
  - id: drafts
    panel: [a, b]
    prompt: "Draft a line about {{capital.a}}"
    then: judge
""",
    )
    document = run_json(invoke, flow, "-c", config)
    ids = [s["id"] for s in document["stages"]]
    assert ids == ["capital", "capital-vote", "drafts", "drafts-judge", "output"]
    vote = document["stages"][1]["verdict"]
    assert (vote["winner"], vote["tally"][vote["winner"]]) == ("Paris", 2)
    verdict = document["stages"][3]["verdict"]
    assert verdict["winner"] in ("a", "b") and verdict["tie"] is False
    judged = [r for r in server.requests if r.model == "gpt-4o-mini"]
    # Blind: candidates by label, never by persona or model (the question itself may say "a").
    assert judged and all("Candidate A" in user_text(r) for r in judged)
    assert all("m-a" not in user_text(r) and "--- a ---" not in user_text(r) for r in judged)
    assert all("Draft a line about Paris" in user_text(r) for r in judged)


def test_a_later_stage_quotes_the_vote_s_winner_and_the_judge_s_pick(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    # {{capital-vote}} used to render as nothing (a tally has no calls to quote) and
    # {{drafts-judge}} as the judge's JSON about labels.
    config = agents_file("a", "b", "c")
    server.script("m-a", Reply(text="Paris"), Reply(text="draft one"))
    server.script("m-b", Reply(text="paris."), Reply(text="draft two"))
    server.script("m-c", Reply(text="Lyon"), Reply(text="OK"))
    judge = json.dumps({"reasoning": "clearer", "winner": "tie"})
    server.script("gpt-4o-mini", Reply(text=judge), Reply(text=judge))
    flow = write_flow(
        tmp_path,
        """\
stages:
  - id: capital
    panel: [a, b, c]
    prompt: "Capital of France?"
    then: vote
  - id: drafts
    panel: [a, b]
    prompt: "Draft a line about {{capital-vote}}"
    then: judge
  - id: final
    agent: c
    prompt: "Polish: {{drafts-judge}}"
""",
    )
    document = run_json(invoke, flow, "-c", config, code=5)  # the judge called a tie
    drafts = [user_text(r) for r in of(server, "m-a")][1]
    assert drafts == "Draft a line about Paris"
    final = user_text(of(server, "m-c")[-1])
    # The judge called a tie: no pick to quote, and the prompt says why instead of nothing.
    assert final.startswith("Polish: [no decision: ") and "tie" in final, final
    final_call = document["stages"][-2]["calls"][0]
    assert final_call["missing"] == ["drafts-judge"] and final_call["partial"] is True


def test_then_council_ranks_blind_and_a_later_stage_quotes_its_answer(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    config = agents_file("a", "b", "c", synthesizer={"model": "m-synth"})
    ranking = Reply(text=json.dumps({"reasoning": "r", "ranking": ["A", "B"]}))
    for name in ("a", "b", "c"):
        server.script(f"m-{name}", Reply(text=f"idea from {name}"), ranking)
    server.script("m-synth", Reply(text="the council's plan"))
    server.script("m-a", Reply(text="done"))
    flow = write_flow(
        tmp_path,
        """\
inputs: {topic: {required: true}}
stages:
  - id: ideas
    panel: [a, b, c]
    prompt: "Ideas on {{topic}}?"
    then: council
  - id: act
    agent: a
    prompt: "Carry out: {{ideas-council}}"
""",
    )
    document = run_json(invoke, flow, "-c", config, "-i", "topic=ice")
    ids = [s["id"] for s in document["stages"]]
    assert ids == ["ideas", "ideas-review", "ideas-council", "act", "output"]
    review = document["stages"][1]["verdict"]
    assert sum(r["votes"] for r in review["aggregate"]) == 6  # 3 reviewers x 2 candidates
    # The reviewers and the synthesizer were asked the stage's question, not "flow flow: ...".
    reviews = [r for r in server.requests if "Rank every candidate" in user_text(r)]
    assert len(reviews) == 3 and all("Ideas on ice?" in user_text(r) for r in reviews)
    synth = of(server, "m-synth")[0]
    assert "Ideas on ice?" in json.dumps(synth.body["messages"])
    assert "Borda" in json.dumps(synth.body["messages"])
    assert user_text(of(server, "m-a")[-1]) == "Carry out: the council's plan"
    assert document["output"] == {"act": {"a": "done"}}


def test_then_judge_in_a_flow_shows_the_judge_the_stage_s_question(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    # The judge was shown the run's prompt ("flow flow: topic=ice"), not what was asked.
    config = agents_file("a", "b")
    judge = json.dumps({"reasoning": "r", "winner": "A"})
    server.script("gpt-4o-mini", Reply(text=judge), Reply(text=judge))
    flow = write_flow(
        tmp_path,
        "inputs: {topic: {}}\nstages:\n"
        "  - {id: s, panel: [a, b], prompt: 'Explain {{topic}}', then: judge}\n",
    )
    run_json(invoke, flow, "-c", config, "-i", "topic=ice")
    judged = of(server, "gpt-4o-mini")
    assert judged and all("Explain ice" in user_text(r) for r in judged)
    assert not any("flow flow" in user_text(r) for r in judged)


def test_dry_run_lists_the_calls_a_then_step_adds(
    server: FakeOpenAI, config: Path, invoke: Invoke, tmp_path: Path
) -> None:
    # The flow's own dry run knew stages and syntheses only: a judge's and a council's calls
    # were left out of the worst case.
    flow = write_flow(
        tmp_path,
        "stages:\n"
        "  - {id: r, panel: [physicist, chemist, biologist], prompt: go, then: council}\n"
        "  - {id: d, panel: [teacher, skeptic], prompt: 'use {{r-council}}', then: judge}\n",
    )
    result = invoke("flow", "run", flow, "-c", config, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    names = [c["name"] for c in json.loads(result.stdout)["calls"]]
    assert names == [
        "r/physicist", "r/chemist", "r/biologist",
        "r-review/physicist", "r-review/chemist", "r-review/biologist",
        "r-council/synthesizer", "d/teacher", "d/skeptic", "d-judge/judge#1", "d-judge/judge#2",
    ]  # fmt: skip
    assert server.count() == 0


def test_a_flow_ending_in_a_vote_is_completed_with_the_winners_as_its_output(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    # The output quoted the vote stage's calls (it has none): {"cap-vote": {}}, and the run
    # then counted as partial (exit 3).
    config = agents_file("a", "b", "c")
    server.script("m-a", Reply(text="Paris"))
    server.script("m-b", Reply(text="paris."))
    server.script("m-c", Reply(text="Lyon"))
    flow = write_flow(
        tmp_path, "stages:\n  - {id: cap, panel: [a, b, c], prompt: 'Capital?', then: vote}\n"
    )
    document = run_json(invoke, flow, "-c", config)
    assert document["status"] == "completed"
    assert document["output"] == {"cap-vote": {"a": "Paris", "b": "paris."}}


def test_a_judge_in_the_output_gives_the_picked_answer(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    config = agents_file("a", "b")
    server.script("m-a", Reply(text="draft one"))
    server.script("m-b", Reply(text="draft two"))
    judge = json.dumps({"reasoning": "r", "winner": "A"})
    server.script("gpt-4o-mini", Reply(text=judge), Reply(text=judge))
    flow = write_flow(
        tmp_path,
        "stages:\n  - {id: d, panel: [a, b], prompt: 'Draft', then: judge}\noutput: [d-judge]\n",
    )
    document = run_json(invoke, flow, "-c", config)
    (picked,) = document["output"]["d-judge"].items()
    assert picked in {("a", "draft one"), ("b", "draft two")}
    assert document["stages"][1]["verdict"]["winner"] == picked[0]


def test_retry_of_a_flow_with_a_vote_asks_only_what_failed(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, tmp_path: Path
) -> None:
    # The retry stopped at the vote stage (no calls, by design) and asked everything after it
    # again; a complete flow was even run again.
    config = agents_file("a", "b", "c")
    server.script("m-a", Reply(text="Paris"), Reply(text="a draft"))
    server.script("m-b", Reply(text="Paris"), Reply(text="fine"))
    server.script("m-c", Reply(text="Lyon"), Fault(400))
    flow = write_flow(
        tmp_path,
        """\
stages:
  - {id: cap, panel: [a, b, c], prompt: 'Capital?', then: vote}
  - {id: draft, agent: a, prompt: 'About {{cap-vote}}'}
  - {id: review, panel: [b, c], prompt: 'Review {{draft}}', on_error: continue}
""",
    )
    first = run_json(invoke, flow, "-c", config, "--retries", "0", code=3)
    server.reset()
    server.script("m-c", Reply(text="good"))
    result = invoke("runs", "retry", first["run_id"], "--json")
    assert result.exit_code == 0, result.output
    assert [r.model for r in server.requests] == ["m-c"]
    again = invoke("runs", "retry", first["run_id"])
    assert again.exit_code == 2 and "nothing to retry" in again.stderr
    assert server.count() == 1


def test_runs_synth_of_a_flow_says_what_to_do_instead(
    server: FakeOpenAI, config: Path, invoke: Invoke, tmp_path: Path
) -> None:
    # It exited 0 having synthesized nothing.
    flow = write_flow(tmp_path, THREE_STAGES)
    document = run_json(invoke, flow, "-c", config, "-i", "topic=ice")
    before = server.count()
    result = invoke("runs", "synth", document["run_id"])
    assert result.exit_code == 2 and "a flow run takes no synthesis of its own" in result.stderr
    assert server.count() == before


def test_flow_run_takes_format_like_ask(
    server: FakeOpenAI, config: Path, invoke: Invoke, tmp_path: Path
) -> None:
    flow = write_flow(tmp_path, THREE_STAGES)
    result = invoke("flow", "run", flow, "-c", config, "-i", "topic=ice", "--format", "text")
    assert result.exit_code == 0, result.output
    assert "draft · teacher (m-teacher)\nm-teacher says: Draft on ice" in result.stdout
    assert "## " not in result.stdout  # text, not the Markdown a pipe gets by default


def test_flow_check_reads_each_file_once_however_many_stages(
    agents_file: AgentsFile, invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each stage's line was found by parsing the whole file again: 500 stages took a minute.
    from tests.test_config import counted_parses

    config = agents_file("a", "b")
    parses = counted_parses(monkeypatch)
    counts = []
    for stages in (3, 150):
        chain = "".join(
            f"  - {{id: s{i}, panel: [a, b], prompt: 'Improve {{{{s{i - 1}}}}}'}}\n"
            for i in range(1, stages)
        )
        flow = write_flow(tmp_path, "stages:\n  - {id: s0, agent: a, prompt: Go}\n" + chain)
        parses.clear()
        result = invoke("flow", "check", flow, "-c", config)
        assert result.exit_code == 0, result.output
        counts.append(len(parses))
    assert counts == [2, 2]  # the agents file and the flow file
    # A problem's line is still found, in the same one parse.
    broken = write_flow(
        tmp_path,
        "stages:\n  - {id: s0, agent: a, prompt: Go}\n"
        + chain
        + "  - {id: x, agent: zz, prompt: Go}\n",
    )
    parses.clear()
    result = invoke("flow", "check", broken, "-c", config)
    assert_usage_error(result, f"{broken}:{stages + 2}:", "unknown persona 'zz'")
    assert len(parses) == 2
