"""The shapes' contract (issue #20): every shape the registry holds, whichever it is, goes
through every front end the same way: ``--dry-run``, a run, ``runs retry``, the document's JSON
Schema, ``runs show``, the HTML export, ``/api/runs``, ``/v1`` and the dashboard in a real
browser. Nothing here names a shape: a shape added to ``fanout.shapes`` is tested by adding it.
Each front end must show what the shape decided as its summary says it (the headline, the
decided answer), never a verdict's raw JSON, and agree on the exit code."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from fanout.serve.runs import document_summaries, final_answer, shape_names
from fanout.shapes import SHAPES
from fanout.summary import Summary
from tests.conftest import AgentsFile, Invoke
from tests.fakeserver import FakeOpenAI, Fault, Reply
from tests.servehelp import Served, serve_in_thread
from tests.test_dashboard import CHROMEDRIVER, CHROMIUM, browser  # noqa: F401  (a fixture)

PERSONAS = ("a", "b", "c")
ROLES = {"synthesizer": "m-synth", "judge": "m-judge", "router": "m-router",
         "orchestrator": "m-orch"}  # fmt: skip
EVERY_SHAPE = list(SHAPES)
RAW_JSON = re.compile(r'\{\s*"(?:type|winner|selected|tally|reviews|labels|choice)"')


def config_of(agents_file: AgentsFile) -> Path:
    """Three personas and every role on the loopback server, each on a model of its own."""
    path = agents_file(*PERSONAS)
    sections = "".join(f"{role}:\n  model: {model}\n" for role, model in ROLES.items())
    path.write_text(path.read_text() + sections)
    return path


def sample(name: str) -> dict[str, object]:
    """The options a demonstration of the shape needs with these personas (a flow's stages)."""
    return SHAPES[name].sample(PERSONAS)


def sample_args(name: str) -> list[str]:
    """``--shape NAME`` and ``-O key=value`` for each option of the shape's sample."""
    args = ["--shape", name]
    for key, value in sample(name).items():
        args += ["-O", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return args


def fitting(schema: dict[str, Any], name: str = "text") -> Any:
    """The smallest value that fits a schema of the kind structured output takes: each enum's
    first value, an array of every value its items allow (up to ``maxItems``)."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {key: fitting(value, key) for key, value in (schema.get("properties") or {}).items()}
    if kind == "array":
        items = schema.get("items") or {}
        if "enum" in items:
            return list(items["enum"])[: schema.get("maxItems", len(items["enum"]))]
        return [fitting(items, name)]
    return f"the {name}"


def reply_fitting(body: dict[str, Any]) -> str:
    """What a server with structured output answers: JSON that fits the schema asked for,
    else ``<model> says: <question>``."""
    wanted = (body.get("response_format") or {}).get("json_schema") or {}
    if isinstance(wanted.get("schema"), dict):
        return json.dumps(fitting(wanted["schema"]))
    users = [m for m in body["messages"] if m.get("role") == "user"]
    return f"{body['model']} says: {str(users[-1]['content'])[:80] if users else ''}"


@pytest.fixture
def structured(server: FakeOpenAI) -> FakeOpenAI:
    """A loopback server with structured output: every reply fits the schema asked for."""
    server.default = Reply(respond=reply_fitting)
    return server


@pytest.fixture
def schema(invoke: Invoke) -> dict[str, Any]:
    result = invoke("schema")
    assert result.exit_code == 0, result.output
    loaded: dict[str, Any] = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


def summaries_of(document: dict[str, Any]) -> list[Summary]:
    return document_summaries(document)


def said_once(text: str, summary: Summary) -> None:
    """What a summary says is in ``text``: its headline once, its warnings, its answer."""
    if summary.headline:
        assert summary.headline in text, (summary.headline, text)
    for warning in summary.warnings:
        assert warning in text, (warning, text)


def flat(text: str) -> str:
    """A terminal view's text as words: boxes and wrapping gone."""
    return " ".join(re.sub(r"[│╭╮╰╯─┃━┏┓┗┛┡┩╇┳┻╈┼├┤└┘┌┐]", " ", text).split())


@pytest.mark.parametrize("name", EVERY_SHAPE)
def test_every_shape_through_the_cli(
    name: str,
    structured: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    schema: dict[str, Any],
    tmp_path: Path,
) -> None:
    config = config_of(agents_file)
    args = ["-c", config, *sample_args(name)]
    planned = invoke("ask", *args, "--dry-run", "--json", "Why is ice slippery?")
    assert planned.exit_code == 0, planned.output
    assert json.loads(planned.stdout)["calls"] and structured.count() == 0

    # Every model fails once: nothing is decided, then runs retry carries the run on.
    for model in (*(f"m-{p}" for p in PERSONAS), *ROLES.values()):
        structured.script(model, Fault(500))
    first = invoke("ask", *args, "--json", "--retries", "0", "Why is ice slippery?")
    assert first.exit_code in (1, 3), first.output
    failed = json.loads(first.stdout)
    jsonschema.validate(failed, schema)
    structured.reset()  # the faults of models not reached are forgotten too
    structured.default = Reply(respond=reply_fitting)
    retried = invoke("runs", "retry", failed["run_id"], "--json")
    assert retried.exit_code in (0, 5), retried.output
    document = json.loads(retried.stdout)
    jsonschema.validate(document, schema)
    assert document["status"] == "completed", document["status"]
    assert retried.exit_code == (5 if document["decided"] is False else 0)
    summaries = summaries_of(document)

    for view in ("md", "text", "table", "columns"):
        shown = invoke("runs", "show", document["run_id"], "--format", view)
        assert shown.exit_code == 0, shown.output
        text = shown.stdout if view in ("md", "text") else flat(shown.stdout)
        for summary in summaries:
            said_once(text if view in ("md", "text") else flat(text), summary)
        assert not RAW_JSON.search(shown.stdout), (view, shown.stdout)
        if document["decided"] is False:
            assert "✓" not in shown.stdout
        made = [stage["id"] for stage in document["stages"] if stage["calls"]]
        for stage_id in made if len(made) > 1 else []:  # several: each by its id
            assert stage_id in shown.stdout, (view, stage_id)
    status = invoke("runs", "show", document["run_id"], "--exit-status")
    assert status.exit_code == retried.exit_code

    page = invoke("runs", "export", document["run_id"], "--format", "html")
    assert page.exit_code == 0, page.output
    for stage in document["stages"]:
        if stage["calls"] or "verdict" in stage:
            assert f"<h2>{stage['id']}</h2>" in page.stdout
    for summary in summaries:
        from html import escape

        assert escape(summary.headline) in page.stdout
    assert not RAW_JSON.search(page.stdout.replace("&quot;", '"'))


@pytest.fixture
def served(structured: FakeOpenAI, agents_file: AgentsFile) -> Iterator[Served]:
    one = serve_in_thread(config_of(agents_file))
    yield one
    one.stop()


@pytest.mark.parametrize("name", EVERY_SHAPE)
def test_every_shape_over_http(name: str, served: Served, schema: dict[str, Any]) -> None:
    options = sample(name)
    with served.client() as client:
        shapes = client.get("/api/shapes").json()["shapes"]
        assert name in [s["name"] for s in shapes]
        body = {"prompt": "Why is ice slippery?", "agents": list(PERSONAS), "shape": name,
                "options": options}  # fmt: skip
        status = client.post("/api/runs?wait=60", json=body)
        assert status.status_code == 200, status.text
        run_id = status.json()["instanceId"]
        document = client.get(f"/api/runs/{run_id}/document").json()
    jsonschema.validate(document, schema)
    assert status.json()["customStatus"].get("final") == final_answer(document)
    extra: dict[str, Any] = {"agents": list(PERSONAS)}
    model = f"fanout/{name}"
    if name not in shape_names():
        model, extra = "fanout", {**extra, "shape": name}
    if options:
        extra["options"] = options
    client_v1 = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    reply = client_v1.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Why is ice slippery?"}],
        extra_body={"fanout": extra},
    )
    content = reply.choices[0].message.content or ""
    carried = (reply.model_extra or {})["fanout"]
    jsonschema.validate(carried, schema)
    expected = final_answer(carried)
    if expected is not None:
        assert content == expected
    assert not RAW_JSON.search(content), content


@pytest.mark.parametrize("name", EVERY_SHAPE)
def test_every_shape_in_the_dashboard(
    name: str,
    served: Served,
    browser: object,  # noqa: F811
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import Select, WebDriverWait

    assert isinstance(browser, WebDriver)
    browser.get(served.url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: len(d.find_elements(By.NAME, "persona")) == len(PERSONAS))
    Select(browser.find_element(By.ID, "shape")).select_by_value(name)
    for key, value in sample(name).items():
        field = browser.find_element(By.ID, f"opt-{key}")
        if field.tag_name == "select":
            inline = browser.find_element(By.ID, f"opt-{key}-inline")
            inline.send_keys(json.dumps(value))
        else:
            field.send_keys(value if isinstance(value, str) else json.dumps(value))
    browser.find_element(By.ID, "prompt").send_keys("Why is ice slippery?")
    browser.find_element(By.ID, "run").click()
    current = browser.find_element(By.ID, "current")
    wait.until(lambda d: current.get_attribute("data-status") not in (None, "", "running"))
    assert browser.find_element(By.ID, "error").text == ""
    run_id = current.get_attribute("data-run")
    with served.client() as client:
        document = client.get(f"/api/runs/{run_id}/document").json()
    summaries = summaries_of(document)
    verdict = browser.find_element(By.ID, "verdict").text
    for summary in summaries:
        if summary.headline:
            assert summary.headline in verdict, (summary.headline, verdict)
    assert not RAW_JSON.search(verdict), verdict
    assert browser.find_element(By.ID, "verdict-box").is_displayed() == bool(summaries)


def test_no_front_end_names_a_shape() -> None:
    """Outside ``shapes/``, no module compares a shape, a stage or a verdict to a shape's
    name (``shape == "vote"``, ``stage.kind in ("flow", ...)``), and the dashboard's script
    holds none of them. (The agents file's ``judge:`` section is a key, not a shape.)"""
    root = Path(__file__).resolve().parents[1] / "src" / "fanout"
    names = "|".join(re.escape(n) for n in SHAPES)
    compared = re.compile(
        rf"""(?:shape|kind|\.key|name|stage|\.id)\w*\)?\s*(?:==|!=|\bin\b)\s*\(?\s*["']"""
        rf"""(?:{names})["']"""
    )
    for path in root.rglob("*.py"):
        if "shapes" in path.relative_to(root).parts:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert not compared.search(line), f"{path}:{number}: {line.strip()}"
    script = (root / "serve" / "static" / "dashboard.js").read_text(encoding="utf-8")
    quoted = re.compile(rf"""["'](?:{names})["']""")
    assert not quoted.search(script), quoted.findall(script)
