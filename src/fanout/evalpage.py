"""An eval as one self-contained HTML report: the scorecard, the leaderboard, and the case x
persona matrix (pass/fail and score in each cell, failing cases first, filters, the answer
on click). Styles and script are inline; a Content-Security-Policy forbids every fetch, so
the page opens with no network.

No text from the eval ever becomes markup: the document travels as JSON in a
``<script type="application/json">`` (every ``<``, ``>`` and ``&`` escaped, so an answer
cannot close it), and the script puts every string on the page as text (``textContent``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from html import escape

_POLICY = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; background: #fafafa; }
h1 { font-size: 1.25rem; margin: 0 0 .25rem; } h2 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; }
.meta { color: #666; font-size: .85rem; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #ddd; padding: .3rem .55rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.best { font-weight: 700; color: #1b5e20; } .noise { color: #8d6e00; }
.filters { margin: .75rem 0; display: flex; gap: 1rem; flex-wrap: wrap; align-items: center; }
.matrix td.cell { cursor: pointer; text-align: center; min-width: 5rem; }
.matrix td.pass { background: #e8f5e9; } .matrix td.fail { background: #ffebee; }
.matrix td.error { background: #fff8e1; } .matrix td.selected { outline: 2px solid #1565c0; }
.case { max-width: 28rem; } .case .prompt { color: #555; font-size: .85rem; white-space: pre-wrap; }
#detail { margin-top: 1rem; background: #fff; border: 1px solid #ddd; border-radius: 6px;
  padding: .75rem 1rem; } #detail pre { white-space: pre-wrap; word-break: break-word;
  background: #f7f7f7; padding: .5rem; } .ok { color: #2e7d32; } .bad { color: #c62828; }
.caption { color: #666; font-size: .8rem; margin-top: .3rem; }
"""

_SCRIPT = r"""
"use strict";
const doc = JSON.parse(document.getElementById("eval-data").textContent);
const $ = (id) => document.getElementById(id);
function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}
const pct = (x) => (100 * x).toFixed(1) + " %";
const usd = (x) => (x === null || x === undefined) ? "$?" : "$" + Number(x).toPrecision(3);
const secs = (x) => (x === null || x === undefined) ? "-" : Number(x).toFixed(2) + " s";

function scorecard() {
  const table = $("scorecard");
  const head = el("tr");
  for (const name of ["Persona", "Pass rate [95 % CI]", "Passed", "Score", "Tokens", "Cost",
                      "p50", "p95", "Failures"]) head.appendChild(el("th", name));
  table.appendChild(head);
  doc.scorecard.forEach((row, index) => {
    const tr = el("tr");
    const who = el("td", row.persona);
    if (index && row.within_noise) who.appendChild(el("span", " ≈", "noise"));
    tr.appendChild(who);
    const cells = [
      ["pass_rate", pct(row.pass_rate) + " [" + pct(row.ci_low) + ", " + pct(row.ci_high) + "]"],
      [null, row.passed + "/" + row.total],
      ["mean_score", row.mean_score === null ? "-" : row.mean_score.toFixed(2)],
      ["tokens", row.tokens.toLocaleString()], ["cost_usd", usd(row.cost_usd)],
      ["p50_s", secs(row.p50_s)], ["p95_s", secs(row.p95_s)], ["failures", row.failures]];
    for (const [column, text] of cells) {
      const best = column && row.best.includes(column);
      tr.appendChild(el("td", text + (best ? " ★" : ""), "num" + (best ? " best" : "")));
    }
    table.appendChild(tr);
  });
  $("noise").textContent = "★ best in its column · ≈ " + doc.noise;
}

function leaderboard() {
  if (!doc.leaderboard) { $("pairwise").hidden = true; return; }
  const table = $("leaderboard");
  const head = el("tr");
  for (const name of ["Persona", "Rating", "95 % CI", "Wins", "Games"]) {
    head.appendChild(el("th", name));
  }
  table.appendChild(head);
  for (const row of doc.leaderboard) {
    const tr = el("tr");
    tr.appendChild(el("td", row.persona));
    tr.appendChild(el("td", row.rating.toFixed(0), "num"));
    tr.appendChild(el("td", row.ci_low.toFixed(0) + " to " + row.ci_high.toFixed(0), "num"));
    tr.appendChild(el("td", row.wins, "num"));
    tr.appendChild(el("td", row.games, "num"));
    table.appendChild(tr);
  }
}

const failures = (c) => c.cells.filter((cell) => !cell.passed).length;
const ordered = doc.cases.map((c, i) => [c, i])
  .sort((a, b) => failures(b[0]) - failures(a[0]) || a[1] - b[1]).map((p) => p[0]);

function personaFilters() {
  const box = $("personas");
  for (const name of doc.personas) {
    const label = el("label");
    const input = el("input");
    input.type = "checkbox"; input.checked = true; input.dataset.persona = name;
    input.addEventListener("change", matrix);
    label.appendChild(input); label.appendChild(document.createTextNode(" " + name));
    box.appendChild(label);
  }
}

function matrix() {
  const shown = [...document.querySelectorAll("#personas input")].filter((i) => i.checked)
    .map((i) => i.dataset.persona);
  const query = $("search").value.toLowerCase();
  const failingOnly = $("failing").checked;
  const table = $("matrix");
  table.replaceChildren();
  const head = el("tr");
  head.appendChild(el("th", "Case"));
  for (const name of shown) head.appendChild(el("th", name));
  table.appendChild(head);
  let rows = 0;
  for (const c of ordered) {
    const text = (c.id + " " + c.prompt + " " + Object.values(c.vars).join(" ")).toLowerCase();
    if (query && !text.includes(query)) continue;
    const cells = c.cells.filter((cell) => shown.includes(cell.persona));
    if (failingOnly && cells.every((cell) => cell.passed)) continue;
    const tr = el("tr");
    const label = el("td", null, "case");
    label.appendChild(el("div", c.id));
    label.appendChild(el("div", c.prompt, "prompt"));
    tr.appendChild(label);
    for (const cell of cells) {
      const kind = cell.status !== "ok" ? "error" : cell.passed ? "pass" : "fail";
      const mark = kind === "pass" ? "✓ pass" : kind === "fail" ? "✗ fail" : "! " + cell.status;
      const td = el("td", mark + (cell.score === null ? "" : " · " + cell.score.toFixed(2)),
                    "cell " + kind);
      td.dataset.persona = cell.persona;
      td.addEventListener("click", () => detail(c, cell, td));
      tr.appendChild(td);
    }
    table.appendChild(tr);
    rows += 1;
  }
  $("count").textContent = rows + " of " + doc.cases.length + " cases";
}

function detail(c, cell, td) {
  document.querySelectorAll("td.selected").forEach((n) => n.classList.remove("selected"));
  td.classList.add("selected");
  const box = $("detail");
  box.replaceChildren();
  box.hidden = false;
  box.appendChild(el("h2", "Case " + c.id + " · " + cell.persona + " (" + cell.model + ")"));
  box.appendChild(el("div", "Prompt", "meta"));
  box.appendChild(el("pre", c.prompt));
  box.appendChild(el("div", "Answer", "meta"));
  box.appendChild(el("pre", cell.answer === null ? "(no answer)" : cell.answer, "answer"));
  if (cell.error) box.appendChild(el("div", "Error: " + cell.error, "bad"));
  const list = el("ul");
  for (const a of cell.assertions) {
    const item = el("li", (a.passed ? "✓ " : "✗ ") + a.assertion, a.passed ? "ok" : "bad");
    if (a.score !== null) item.appendChild(document.createTextNode(" · score " + a.score));
    if (a.reason) item.appendChild(el("div", a.reason, "meta"));
    list.appendChild(item);
  }
  box.appendChild(list);
}

scorecard();
leaderboard();
personaFilters();
$("search").addEventListener("input", matrix);
$("failing").addEventListener("change", matrix);
matrix();
"""


def _data(document: Mapping[str, object]) -> str:
    """The document as JSON that no text inside can end early: ``<``, ``>`` and ``&`` are
    written as escapes, which JSON reads back as themselves."""
    text = json.dumps(document, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def html_report(document: Mapping[str, object]) -> str:
    """The report, as one string of HTML."""
    title = f"fanout eval {document.get('id', '')}"
    source = str(document.get("file", ""))
    meta = f"{source} · started {document.get('started_at', '')}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_POLICY}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{escape(title)}</h1>
<div class="meta">{escape(meta)}</div>
<h2>Scorecard</h2><table id="scorecard"></table><div class="caption" id="noise"></div>
<section id="pairwise"><h2>Pairwise leaderboard (Bradley-Terry)</h2>
<table id="leaderboard"></table>
<div class="caption">Each pair judged blind in both orders; an inconsistent pair is a tie.
Intervals: bootstrap over cases.</div></section>
<h2>Cases</h2>
<div class="filters"><input id="search" type="search" placeholder="filter cases">
<label><input id="failing" type="checkbox"> failing only</label>
<span id="personas"></span><span class="meta" id="count"></span></div>
<table class="matrix" id="matrix"></table>
<div id="detail" hidden></div>
<script type="application/json" id="eval-data">{_data(document)}</script>
<script>{_SCRIPT}</script>
</body></html>
"""
