"""The Python API: what a script, a notebook or a server gets without the CLI."""

from __future__ import annotations

import json

import anyio
import pytest

import fanout
from fanout.event import CallDelta, CallFinished, Event, RunFinished, RunStarted
from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI, Hang, Reply


def test_run_returns_the_report_whose_dict_is_the_json_document(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, capsys: pytest.CaptureFixture[str]
) -> None:
    config = agents_file("physicist", "chemist", synthesizer={"model": "m-synth"})
    request = fanout.RunRequest(
        "What is heat?", fanout.load_panel(config), options={"synthesize": True}
    )
    report = fanout.run(request)
    document = report.to_dict()
    assert document["output"] == {
        "physicist": "m-physicist says: What is heat?",
        "chemist": "m-chemist says: What is heat?",
    }
    assert [s["id"] for s in document["stages"]] == ["panel", "synthesis"]
    assert document["synthesis"]["call_id"] == "synthesis/synthesizer"
    # the library printed nothing: output is the caller's business
    assert capsys.readouterr() == ("", "")
    # the CLI's --json document has exactly the same shape
    cli = json.loads(invoke("ask", "-c", config, "-s", "--json", "What is heat?").stdout)
    assert set(cli) == set(document)
    assert [set(e) for e in cli["agents"]] == [set(e) for e in document["agents"]]
    assert json.loads(json.dumps(document)) == document


@pytest.mark.anyio
async def test_arun_tells_observers_everything_in_order(
    server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    seen: list[Event] = []

    class Watcher:
        wants_deltas = True

        def handle(self, event: Event) -> None:
            seen.append(event)

    panel = fanout.load_panel(agents_file("physicist"))
    report = await fanout.arun(fanout.RunRequest("Why?", panel), observers=[Watcher()])
    assert isinstance(seen[0], RunStarted) and isinstance(seen[-1], RunFinished)
    assert seen[0].trace_id == report.trace_id
    assert any(isinstance(e, CallDelta) for e in seen)  # an observer that watches gets deltas
    finished = [e for e in seen if isinstance(e, CallFinished)]
    assert [e.result.call_id for e in finished] == ["panel/physicist"]
    assert seen[-1].report is report or seen[-1].report.run_id == report.run_id


@pytest.mark.anyio
async def test_events_stream_the_run_and_leaving_early_stops_it(
    server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    server.script("m-slow", Hang())
    panel = fanout.load_panel(agents_file("quick", "slow"))
    request = fanout.RunRequest("Why?", panel)
    with anyio.fail_after(20):
        async with fanout.events(request) as stream:
            async for event in stream:
                if isinstance(event, CallFinished) and event.result.name == "quick":
                    break  # leave with "slow" still hanging
    # the hanging request was abandoned, not left running
    with anyio.fail_after(20):
        while server.requests[-1].finished is None:  # noqa: ASYNC110 - the server is a thread
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_events_end_with_the_finished_report(
    server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    server.default = Reply(text="fine")
    request = fanout.RunRequest("Why?", fanout.load_panel(agents_file("a", "b")))
    async with fanout.events(request) as stream:
        kinds = [type(event).__name__ async for event in stream]
    assert kinds[0] == "RunStarted" and kinds[-1] == "RunFinished"
    assert kinds.count("CallFinished") == 2


@pytest.mark.anyio
async def test_a_request_that_cannot_run_raises_one_clear_error(
    server: FakeOpenAI, agents_file: AgentsFile
) -> None:
    panel = fanout.load_panel(agents_file("physicist"))
    with pytest.raises(fanout.ConfigError, match=r"unknown agent 'physicsit'.*physicist"):
        await fanout.arun(fanout.RunRequest("Why?", panel, agents=["physicsit"]))
    with pytest.raises(fanout.ConfigError, match="unknown agent"):
        async with fanout.events(fanout.RunRequest("Why?", panel, agents=["nobody"])):
            pass
    assert server.count() == 0


def test_the_public_surface_is_declared_once() -> None:
    for name in fanout.__all__:
        assert getattr(fanout, name) is not None, name
    assert callable(fanout.events) and callable(fanout.run) and callable(fanout.arun)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"settings": fanout.RunSettings(concurrency=0)}, "settings.concurrency"),
        ({"settings": fanout.RunSettings(timeout=-1)}, "settings.timeout"),
        ({"agents": "ab"}, "list of persona names"),
        ({"panel": "agents.yaml"}, "give a Panel"),
        ({"trace_id": "zz"}, "trace_id"),
        ({"prompt": "\ud800"}, "not valid text"),
        ({"prompt": "  "}, "non-empty"),
        (
            {"shape": "vote", "options": {"quorom": 0.6}},
            r"vote shape takes no option 'quorom' \(did you mean 'quorum'\?\)",
        ),
        ({"shape": "route", "options": {"route_max": "two"}}, "route_max: 'two' is not a whole"),
        ({"shape": "judge", "options": {"repeat": {"a": 0}}}, "repeat: .* is not persona"),
        ({"options": {"synthesize": "yes"}}, "synthesize: 'yes' is not true or false"),
        ({"shape": "orchestrate", "options": {"best_of": 2}}, "orchestrate shape takes no"),
        ({"shape": "orchestrate", "options": {"synthesize": True}}, "takes no option 'synth"),
        ({"options": None}, "options: give a mapping"),
        ({"shape": "flow", "options": {}}, "options: flow: "),
        ({"shape": "flow", "options": {"flow": {"stages": []}}}, "options: flow: stages"),
        ({"options": {"repeat": {"zzz": 3}}}, "repeat: 'zzz' is not one of the personas asked"),
        (
            {
                "shape": "flow",
                "options": {"flow": {"stages": [{"id": "s", "agent": "x", "prompt": "p"}]}},
            },
            "flow: persona 'x' is not one of the personas asked",
        ),
    ],
)
def test_a_bad_request_is_one_config_error_before_any_call(
    server: FakeOpenAI, agents_file: AgentsFile, change: dict[str, object], message: str
) -> None:
    import dataclasses

    request = fanout.RunRequest("Why?", fanout.load_panel(agents_file("a")))
    with pytest.raises(fanout.ConfigError, match=message):
        fanout.run(dataclasses.replace(request, **change))  # type: ignore[arg-type]
    assert server.count() == 0


def test_a_stored_run_is_carried_on_with_the_options_its_shape_still_takes() -> None:
    from fanout.shapes import stored_options

    # An orchestration recorded by an earlier version with -s (it ignored it): carried on
    # without it, rather than refused for a flag nobody typed this time.
    assert stored_options("orchestrate", {"synthesize": True, "max_turns": 2, "seed": 1}) == {
        "max_turns": 2,
        "seed": 1,
    }
    assert stored_options("panel", {"synthesize": True, "map": False}) == {
        "synthesize": True,
        "map": False,
    }
