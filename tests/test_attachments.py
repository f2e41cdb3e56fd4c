"""Attachments (issue 25.5): -f/--file on ask, batch, flows and /api/runs. Images arrive as
image_url data parts, text files as fenced blocks with their names, PDFs as their text; by hash
in the document and the history; a model that takes no images is told so once."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AgentsFile, Invoke, assert_usage_error
from tests.fakeserver import FakeOpenAI, Fault
from tests.servehelp import serve_in_thread, until

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(40))


def a_pdf(text: str) -> bytes:
    """A one-page PDF whose page shows ``text`` (Helvetica), with a correct xref table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    made = {
        "png": tmp_path / "chart.png",
        "txt": tmp_path / "notes.md",
        "pdf": tmp_path / "report.pdf",
    }
    made["png"].write_bytes(PNG)
    made["txt"].write_text("# Notes\nUse ``` fences, and `code`.\n", encoding="utf-8")
    made["pdf"].write_bytes(a_pdf("Quarterly revenue grew 12 percent"))
    return made


def user_content(server: FakeOpenAI, model: str) -> list[Any]:
    return [r.body["messages"][-1]["content"] for r in server.requests if r.model == model]


def test_an_image_arrives_as_an_image_url_data_part_to_every_persona(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, files: dict[str, Path]
) -> None:
    result = invoke("ask", "-c", agents_file("a", "b"), "-f", files["png"], "-s", "--json", "Q")
    assert result.exit_code == 0, result.output
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    for model in ("m-a", "m-b"):
        (content,) = user_content(server, model)
        assert content == [
            {"type": "text", "text": "Q"},
            {"type": "image_url", "image_url": {"url": url}},
        ]
    synthesis = [r for r in server.requests if r.model not in ("m-a", "m-b")]
    assert isinstance(synthesis[0].body["messages"][-1]["content"], str)  # the answers only
    document = json.loads(result.stdout)
    assert document["attachments"] == [
        {
            "name": "chart.png",
            "kind": "image",
            "media_type": "image/png",
            "bytes": len(PNG),
            "sha256": hashlib.sha256(PNG).hexdigest(),
        }
    ]
    assert base64.b64encode(PNG).decode() not in result.stdout  # by hash, not copied


def test_a_text_file_arrives_fenced_with_its_name(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, files: dict[str, Path]
) -> None:
    result = invoke("ask", "-c", agents_file("a"), "--file", files["txt"], "Summarize")
    assert result.exit_code == 0, result.output
    (content,) = user_content(server, "m-a")
    assert content == "Summarize\n\nnotes.md:\n````\n# Notes\nUse ``` fences, and `code`.\n````"


def test_a_pdf_arrives_as_its_text(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, files: dict[str, Path]
) -> None:
    result = invoke("ask", "-c", agents_file("a"), "-f", files["pdf"], "-f", files["png"], "Q")
    assert result.exit_code == 0, result.output
    (content,) = user_content(server, "m-a")
    text = content[0]["text"]
    assert text.startswith("Q\n\nreport.pdf:\n```\n")
    assert "Quarterly revenue grew 12 percent" in text
    assert content[1]["type"] == "image_url"


def test_a_pdf_without_pypdf_is_one_line(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pypdf", None)  # as if fanout[pdf] were not installed
    result = invoke("ask", "-c", agents_file("a"), "-f", files["pdf"], "Q")
    assert_usage_error(result, "report.pdf", "pip install 'fanout[pdf]'")
    assert server.count() == 0


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda p: p / "missing.png", ("--file", "missing.png", "no such file")),
        (lambda p: p, ("--file", "is a directory")),
        (lambda p: _write(p / "blob.bin", b"\x01\x02\x00\x03"), ("blob.bin", "binary data")),
        (lambda p: _write(p / "latin.txt", b"caf\xe9"), ("latin.txt", "UTF-8 text")),
        (lambda p: _write(p / "scan.pdf", a_pdf("")), ("scan.pdf", "no text")),
        (lambda p: _write(p / "bad.pdf", b"%PDF-1.4\nnonsense"), ("bad.pdf", "not a PDF")),
    ],
    ids=["missing", "directory", "binary", "not-utf8", "pdf-without-text", "broken-pdf"],
)
def test_a_file_that_cannot_be_sent_is_one_line(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    tmp_path: Path,
    make: Any,
    fragments: tuple[str, ...],
) -> None:
    path = make(tmp_path)
    assert_usage_error(invoke("ask", "-c", agents_file("a"), "-f", path, "Q"), *fragments)
    assert server.count() == 0


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def test_a_model_that_takes_no_images_says_so_once(
    server: FakeOpenAI, agents_file: AgentsFile, invoke: Invoke, files: dict[str, Path]
) -> None:
    refusal = "Invalid content type. image_url is only supported by certain models."
    server.script("m-a", Fault(400, body={"error": {"message": refusal}}))
    config = agents_file("a", "b")
    result = invoke("ask", "-c", config, "-a", "a:3,b", "-f", files["png"], "--json", "Q")
    assert result.exit_code == 3, result.output
    assert server.count("m-a") == 1  # not three times
    calls = {c["name"]: c for c in json.loads(result.stdout)["agents"]}
    for name in ("a#1", "a#2", "a#3"):
        assert calls[name]["error"]["type"] == "no_images"
        assert "m-a on 127.0.0.1 takes no images" in calls[name]["error"]["message"]
    assert calls["b"]["status"] == "ok"
    assert result.stderr.count("takes no images") == 1


def test_batch_sends_the_files_with_every_prompt(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    files: dict[str, Path],
    tmp_path: Path,
) -> None:
    prompts = tmp_path / "q.txt"
    prompts.write_text("one\ntwo\n", encoding="utf-8")
    result = invoke("batch", prompts, "-c", agents_file("a"), "-f", files["txt"])
    assert result.exit_code == 0, result.output
    contents = sorted(user_content(server, "m-a"))
    assert [c.split("\n\n")[0] for c in contents] == ["one", "two"]
    assert all("notes.md:\n````" in c for c in contents)


def test_flows_send_the_files_to_every_stage(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    files: dict[str, Path],
    tmp_path: Path,
) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        "name: f\nstages:\n  - id: one\n    agent: a\n    prompt: Read it\n"
        "  - id: two\n    agent: a\n    prompt: 'Check: {{one}}'\n",
        encoding="utf-8",
    )
    result = invoke("flow", "run", flow, "-c", agents_file("a"), "-f", files["txt"], "--json")
    assert result.exit_code == 0, result.output
    contents = user_content(server, "m-a")
    assert [c.split(" ")[0] for c in contents] == ["Read", "Check:"]  # the stages in turn
    fenced = "\n\nnotes.md:\n````\n# Notes\nUse ``` fences, and `code`.\n````"
    assert all(c.endswith(fenced) for c in contents)


def test_attachments_are_kept_by_hash_and_runs_retry_sends_them_again(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    files: dict[str, Path],
    tmp_path: Path,
) -> None:
    server.script("m-a", Fault(500))
    config = agents_file("a")
    first = invoke("ask", "-c", config, "--retries", "0", "-f", files["png"], "--json", "Q")
    assert first.exit_code == 1, first.output
    data = tmp_path / "xdg-data" / "fanout"
    with sqlite3.connect(data / "history.db") as db:
        dump = "\n".join(db.iterdump())
    assert base64.b64encode(PNG).decode()[:40] not in dump
    assert hashlib.sha256(PNG).hexdigest() in dump
    assert (data / "attachments" / hashlib.sha256(PNG).hexdigest()).read_bytes() == PNG
    server.reset()
    again = invoke("runs", "retry", json.loads(first.stdout)["run_id"], "--json")
    assert again.exit_code == 0, again.output
    (content,) = user_content(server, "m-a")
    assert content[1]["image_url"]["url"].endswith(base64.b64encode(PNG).decode())
    assert json.loads(again.stdout)["attachments"][0]["name"] == "chart.png"


def test_dry_run_counts_the_files_in_the_prompt(
    agents_file: AgentsFile, invoke: Invoke, files: dict[str, Path]
) -> None:
    config = agents_file("a")
    bare = invoke("ask", "-c", config, "--dry-run", "--json", "Q")
    attached = invoke("ask", "-c", config, "--dry-run", "--json", "-f", files["txt"], "Q")
    tokens = [json.loads(r.stdout)["calls"][0]["prompt_tokens_estimate"] for r in (bare, attached)]
    assert tokens[1] > tokens[0] + len(files["txt"].read_bytes())


@pytest.fixture
def served(agents_file: AgentsFile) -> Iterator[Any]:
    server = serve_in_thread(agents_file("a"))
    yield server
    server.stop()


def test_api_runs_takes_files(server: FakeOpenAI, served: Any) -> None:
    encoded = base64.b64encode(PNG).decode()
    with served.client() as client:
        bad = client.post("/api/runs", json={"prompt": "Q", "files": [{"name": "x"}]})
        assert bad.status_code == 400 and "files[0]" in bad.json()["error"]
        response = client.post(
            "/api/runs",
            json={"prompt": "Q", "files": [{"name": "chart.png", "content_base64": encoded}]},
        )
        assert response.status_code == 202, response.text
        run_id = response.json()["id"]
        until(lambda: client.get(f"/api/runs/{run_id}").status_code == 200, what="the run")
    (content,) = user_content(server, "m-a")
    assert content[1]["image_url"]["url"] == f"data:image/png;base64,{encoded}"


def test_a_batch_through_the_batch_api_sends_the_files_with_every_request(
    server: FakeOpenAI,
    agents_file: AgentsFile,
    invoke: Invoke,
    files: dict[str, Path],
    tmp_path: Path,
) -> None:
    prompts = tmp_path / "q.txt"
    prompts.write_text("one\ntwo\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = invoke(
        "batch", prompts, "-c", agents_file("a"), "-f", files["txt"], "-f", files["png"],
        "-o", out, "--via", "openai-batch", "--poll-interval", "0.01",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    uploaded = [json.loads(line) for f in server.files.values() for line in f.splitlines()]
    requests = [line["body"] for line in uploaded if "body" in line]
    assert len(requests) == 2
    for body in requests:
        content = body["messages"][-1]["content"]
        assert content[0]["type"] == "text" and "notes.md:\n````" in content[0]["text"]
        assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")
