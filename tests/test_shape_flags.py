"""Any shape from anywhere (issue #20.2): ``--shape NAME`` and ``-O key=value`` on the command
line, ``fanout shapes`` and ``fanout schema``, and ``{"shape", "options"}`` (flows by name or
inline, personas for the run) over HTTP; every mistake one line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from fanout.shapes import SHAPES, verdict_types
from tests.conftest import AgentsFile, Invoke, assert_usage_error
from tests.fakeserver import FakeOpenAI, Reply
from tests.servehelp import Served, serve_in_thread


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["-O", "quorom=0.6"], ["-O quorom: no shape takes an option 'quorom'", "'quorum'"]),
        (["--shape", "vote", "-O", "quorum=2"], ["-O quorum: '2' is not a share between 0 and 1"]),
        (["--shape", "vote", "-O", "choices=Paris"], ["-O choices: 'Paris' is not at least two"]),
        (["--shape", "vot"], ["unknown shape 'vot'", "did you mean 'vote'"]),
        (["--vote", "--shape", "judge"], ["--shape judge and --vote: choose one"]),
        (["--vote", "-O", "max_turns=3"], ["-O max_turns: the vote shape takes no option"]),
        (["-O", "quorum"], ["-O 'quorum': write it as key=value"]),
        (["--judge", "-O", "best_of=51"], ["-O best_of: '51' is not a whole number from 1 to 50"]),
        (["--orchestrate", "-a", "physicist:2"], ["does not go with the orchestrate shape"]),
    ],
)
def test_a_bad_shape_or_option_is_one_line(
    args: list[str], fragments: list[str], agents_file: AgentsFile, invoke: Invoke,
    server: FakeOpenAI,
) -> None:  # fmt: skip
    result = invoke("ask", "-c", agents_file(), *args, "Why?")
    assert_usage_error(result, *fragments)
    assert server.count() == 0


def test_shape_and_options_by_name_are_the_flags_they_alias(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke
) -> None:
    config = agents_file("a", "b", "c")
    for model, answer in (("m-a", "yes"), ("m-b", "yes"), ("m-c", "no")):
        server.script(model, Reply(text=answer), Reply(text=answer))
    named = invoke("ask", "-c", config, "--shape", "vote", "-O", "quorum=0.6", "--json", "?")
    flagged = invoke("ask", "-c", config, "--vote", "--quorum", "0.6", "--json", "?")
    for result in (named, flagged):
        assert result.exit_code == 0, result.output
        vote = json.loads(result.stdout)["vote"]
        assert (vote["winner"], vote["quorum"], vote["quorum_met"]) == ("yes", 0.6, True)


def test_fanout_shapes_lists_every_shape_and_its_options(invoke: Invoke) -> None:
    listed = invoke("shapes", "--json")
    assert listed.exit_code == 0, listed.output
    shapes = {s["name"]: s for s in json.loads(listed.stdout)["shapes"]}
    assert list(shapes) == list(SHAPES)
    for name, shape in SHAPES.items():
        assert [o["name"] for o in shapes[name]["options"]] == list(shape.option_names)
    quorum = next(o for o in shapes["vote"]["options"] if o["name"] == "quorum")
    assert quorum["flag"] == "--quorum" and quorum["wanted"] == "a share between 0 and 1"
    table = invoke("shapes")
    assert table.exit_code == 0 and all(name in table.stdout for name in SHAPES)


def test_fanout_schema_describes_every_verdict(invoke: Invoke) -> None:
    result = invoke("schema")
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    titles = " ".join(str(v.get("title")) for v in schema["$defs"]["verdict"]["anyOf"])
    for kind in verdict_types():
        if kind != "unknown":
            assert f"({kind})" in titles or kind in ("vote", "judge", "review"), kind


# -- over HTTP ---------------------------------------------------------------------------------

FLOW = {
    "name": "two",
    "inputs": {"topic": {"required": True}},
    "stages": [
        {"id": "draft", "panel": ["physicist", "chemist"], "prompt": "Explain {{topic}}."},
        {"id": "polish", "agent": "biologist", "prompt": "Polish:\n{{draft}}"},
    ],
}


@pytest.fixture
def served(agents_file: AgentsFile, tmp_path: Path) -> Iterator[Served]:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "two.yaml").write_text(json.dumps(FLOW), encoding="utf-8")
    (tmp_path / "secret.yaml").write_text(json.dumps(FLOW), encoding="utf-8")
    one = serve_in_thread(agents_file(), flows=flows)
    yield one
    one.stop()


def test_any_shape_and_its_options_over_http(server: FakeOpenAI, served: Served) -> None:
    with served.client() as client:
        offered = client.get("/api/shapes").json()
        assert [s["name"] for s in offered["shapes"]] == list(SHAPES)
        assert offered["flows"] == ["two.yaml"]
        body = {"prompt": "Capital?", "shape": "vote", "options": {"quorum": 0.6}}
        done = client.post("/api/runs?wait=30", json=body)
        assert done.status_code == 200, done.text
        document = client.get(f"/api/runs/{done.json()['instanceId']}/document").json()
        assert document["shape"] == "vote" and document["vote"]["quorum"] == 0.6
        legacy = client.post("/api/runs?wait=30", json={"prompt": "?", "vote": {"quorum": 0.6}})
        assert legacy.status_code == 200 and legacy.json()["name"] == "vote"
        typo = client.post("/api/runs", json={"prompt": "?", "shape": "vote",
                                              "options": {"quorom": 1}})  # fmt: skip
        assert typo.status_code == 400 and "did you mean 'quorum'" in typo.json()["error"]
        bad = client.post("/api/runs", json={"prompt": "?", "shape": "vote",
                                             "options": {"quorum": 2}})  # fmt: skip
        assert bad.status_code == 400 and "quorum: 2 is not a share" in bad.json()["error"]


def test_a_flow_over_http_by_name_or_inline_and_never_outside_its_folder(
    server: FakeOpenAI, served: Served
) -> None:
    with served.client() as client:
        for flow in ("two", FLOW):
            body = {"shape": "flow", "options": {"flow": flow, "inputs": {"topic": "ice"}}}
            done = client.post("/api/runs?wait=30", json=body)
            assert done.status_code == 200, done.text
            document = client.get(f"/api/runs/{done.json()['instanceId']}/document").json()
            assert [s["id"] for s in document["stages"]] == ["draft", "polish", "output"]
            assert document["prompt"] == "flow two: topic=ice"
            assert document["status"] == "completed"
        for name in ("../secret.yaml", "/etc/passwd", "missing"):
            body = {"shape": "flow", "options": {"flow": name, "inputs": {"topic": "x"}}}
            refused = client.post("/api/runs", json=body)
            assert refused.status_code == 400, refused.text
        unknown_input = {"shape": "flow", "options": {"flow": "two", "inputs": {"topc": "x"}}}
        refused = client.post("/api/runs", json=unknown_input)
        assert refused.status_code == 400 and "did you mean 'topic'" in refused.json()["error"]


def test_personas_for_one_run_over_http(server: FakeOpenAI, served: Served) -> None:
    with served.client() as client:
        body = {"prompt": "Why?", "personas": {"pirate": "You answer like a pirate."}}
        done = client.post("/api/runs?wait=30", json=body)
        assert done.status_code == 200, done.text
        assert list(done.json()["output"]) == ["pirate"]
        both = {"prompt": "Why?", "agents": ["chemist"], "personas": ["pirate=Arr."]}
        done = client.post("/api/runs?wait=30", json=both)
        assert list(done.json()["output"]) == ["chemist", "pirate"]
        wrong = client.post("/api/runs", json={"prompt": "?", "personas": {"a b": "x"}})
        assert wrong.status_code == 400 and "personas" in wrong.json()["error"]
    assert any(
        "You answer like a pirate." in json.dumps(r.body["messages"]) for r in server.requests
    )
