// The fanout dashboard: one page, no build step, nothing loaded from elsewhere.
// It uses the same routes as any client: /api/agents, /api/runs, and each run's SSE events
// (read with fetch rather than EventSource, so a server token can go in a header).
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("fanout-token") || "";
let shapes = []; // every shape and its options, as the server's registry describes them
let flowFiles = []; // the flow files the server offers (fanout serve --flows DIR)
let current = null; // {id, controller, calls: Map(call_id -> state)}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const response = await fetch(path, opts);
  if (response.status === 401) {
    $("token-form").hidden = false;
    $("connection").textContent = "this server needs a token";
    throw new Error("unauthorized");
  }
  return response;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

async function loadPanel() {
  const panel = await (await api("/api/agents")).json();
  const box = $("personas");
  box.querySelectorAll("label").forEach((n) => n.remove());
  for (const agent of panel.agents) {
    const input = el("input", { type: "checkbox", name: "persona", value: agent.name });
    input.checked = true;
    box.append(el("label", { title: agent.description || agent.model }, input, " " + agent.name));
  }
  $("connection").textContent = panel.agents.length + " personas ready";
}

// -- the shape form: every shape and its options, drawn from /api/shapes --------------------------

async function loadShapes() {
  const data = await (await api("/api/shapes")).json();
  shapes = data.shapes;
  flowFiles = data.flows || [];
  const select = $("shape");
  select.replaceChildren(...shapes.map((s) => el("option", { value: s.name, title: s.help }, s.name)));
  drawOptions();
}

function drawOptions() {
  const shape = shapes.find((s) => s.name === $("shape").value) || shapes[0];
  const box = $("shape-options");
  box.replaceChildren(el("legend", {}, "Options of " + shape.name));
  $("shape-help").textContent = shape.help;
  for (const option of shape.options) box.append(optionInput(option));
}

function optionInput(o) {
  const id = "opt-" + o.name;
  const start = o.suggested ?? o.default;
  let input;
  if (o.kind === "switch") {
    input = el("input", { type: "checkbox", id, name: o.name });
    input.checked = start === true;
    return el("label", { title: o.help }, input, " " + o.name);
  }
  if (o.kind === "choice") {
    input = el("select", { id, name: o.name });
    for (const word of o.schema.enum) input.append(el("option", { value: word }, word));
    if (start !== null && start !== undefined) input.value = String(start);
    return el("label", { title: o.help }, o.name + " ", input);
  }
  if (o.kind === "document") {
    input = el("select", { id, name: o.name });
    input.append(el("option", { value: "" }, "inline (below)"));
    for (const file of flowFiles) input.append(el("option", { value: file }, file));
    const inline = el("textarea", { id: id + "-inline", rows: "4",
      placeholder: o.help + " As JSON: {\"stages\": [...]}" });
    return el("div", { class: "document", title: o.help }, el("span", {}, o.name + " "), input, inline);
  }
  const attrs = { id, name: o.name, placeholder: o.wanted };
  if (o.kind === "whole" || o.kind === "share") {
    Object.assign(attrs, { type: "number", step: o.kind === "share" ? "0.05" : "1" });
    if (o.schema.minimum !== undefined) attrs.min = String(o.schema.minimum);
    if (o.schema.maximum !== undefined) attrs.max = String(o.schema.maximum);
  }
  input = el("input", attrs);
  if (start !== null && start !== undefined && typeof start !== "object") input.value = String(start);
  return el("label", { title: o.help }, o.name + " ", input);
}

function pairs(text, number) {
  const out = {};
  for (const part of text.split(",")) {
    const cut = part.indexOf("=");
    if (cut < 0) throw new Error("write it as name=value, name=value");
    const value = part.slice(cut + 1).trim();
    out[part.slice(0, cut).trim()] = number ? Number(value) : value;
  }
  return out;
}

// The options set in the form, typed as the shape declares them (the server checks them).
function readOptions(shape) {
  const options = {};
  for (const o of shape.options) {
    const input = document.getElementById("opt-" + o.name);
    if (!input) continue;
    if (o.kind === "switch") {
      if (input.checked !== (o.default === true)) options[o.name] = input.checked;
      continue;
    }
    if (o.kind === "document") {
      const inline = document.getElementById("opt-" + o.name + "-inline").value.trim();
      if (input.value) options[o.name] = input.value;
      else if (inline) options[o.name] = JSON.parse(inline);
      continue;
    }
    const text = input.value.trim();
    if (!text || (o.default !== null && text === String(o.default))) continue;
    if (o.kind === "whole" || o.kind === "share") options[o.name] = Number(text);
    else if (o.kind === "list") options[o.name] = text.split(",").map((t) => t.trim()).filter(Boolean);
    else if (o.kind === "counts") options[o.name] = pairs(text, true);
    else if (o.kind === "texts") options[o.name] = pairs(text, false);
    else options[o.name] = text;
  }
  return options;
}

// A prompt's first line: what a run is called (the whole prompt is under it, when longer).
function titleOf(prompt) {
  const first = (prompt || "").trim().split("\n", 1)[0];
  return first.length > 120 ? first.slice(0, 119) + "…" : first;
}

const LIVE = new Set(["Pending", "Running"]);
let listTimer = null;

// The past runs, each row linking to its run (#run=ID); while any of them is still going,
// the list is asked for again every two seconds, so each row shows how its run stands now.
async function loadRuns() {
  clearTimeout(listTimer);
  const { runs } = await (await api("/api/runs?limit=30")).json();
  const body = $("runs").querySelector("tbody");
  body.replaceChildren();
  for (const run of runs) {
    const link = el("a", { href: "#run=" + encodeURIComponent(run.instanceId) }, titleOf(run.prompt));
    const row = el("tr", { "data-id": run.instanceId, "data-status": run.runtimeStatus },
      el("td", {}, (run.createdTime || "").replace("T", " ").slice(0, 19)),
      el("td", { class: "prompt", title: run.prompt }, link),
      el("td", { class: "status" }, run.runtimeStatus + (run.status === "partial" ? " (partial)" : "")),
      el("td", { class: "answered" }, run.answered + "/" + run.agents));
    row.addEventListener("click", (event) => {
      if (event.target.tagName !== "A") location.hash = "run=" + encodeURIComponent(run.instanceId);
    });
    body.append(row);
  }
  if (runs.some((run) => LIVE.has(run.runtimeStatus))) {
    listTimer = setTimeout(() => loadRuns().catch(() => {}), 2000);
  }
}

function runInLink() {
  const match = /^#run=([^&]+)/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : null;
}

// -- one run: panes, verdict, timeline ---------------------------------------------------------

function pane(call) {
  let node = document.querySelector(`.pane[data-call="${CSS.escape(call.call_id)}"]`);
  if (!node) {
    node = el("div", { class: "pane", "data-call": call.call_id, "data-name": call.agent },
      el("header", {}, el("span", { class: "name" }, call.agent),
        el("span", { class: "state" }, "queued")),
      el("div", { class: "model" }, (call.model || "") + (call.role !== "persona" ? " · " + call.role : "")),
      el("div", { class: "text" }, ""),
      el("div", { class: "meta" }, ""));
    $("panes").append(node);
  }
  return node;
}

// An answer is drawn as Markdown (markdown.js: DOM nodes only, an answer's HTML stays text),
// at most once an animation frame while it streams; an error message as plain text.
const answerText = new WeakMap();
const toDraw = new Set();
let drawing = 0;

function drawAnswer(node) {
  const box = node.querySelector(".text");
  const { text, plain } = answerText.get(node) || { text: "", plain: true };
  box.classList.toggle("plain", plain);
  if (plain) box.textContent = text; else box.replaceChildren(renderMarkdown(text));
}

function showAnswer(node, text, { plain = false, now = false } = {}) {
  answerText.set(node, { text, plain });
  if (now) { toDraw.delete(node); drawAnswer(node); return; }
  toDraw.add(node);
  drawing = drawing || requestAnimationFrame(() => {
    drawing = 0;
    for (const n of toDraw) drawAnswer(n);
    toDraw.clear();
  });
}

function setState(node, state) {
  const badge = node.querySelector(".state");
  badge.textContent = state;
  badge.className = "state " + state;
  node.dataset.state = state;
}

const ms = (ts) => Date.parse(ts);

function onLine(run, line) {
  const t = ms(line.ts);
  if (line.type === "run_started") {
    run.start = t;
    showPrompt(line.prompt);
  } else if (line.type === "stage_started") {
    for (const call of line.calls) {
      pane(call);
      run.calls.set(call.call_id, { name: call.agent, queued: t, spans: [] });
    }
  } else if (line.call_id) {
    const node = pane(line);
    const c = run.calls.get(line.call_id) || { name: line.agent, queued: t, spans: [] };
    run.calls.set(line.call_id, c);
    if (line.type === "agent_started" || line.type === "synthesis_started") {
      c.sent = t; setState(node, "running");
    } else if (line.type === "delta") {
      if (c.firstDelta === undefined) c.firstDelta = t;
      showAnswer(node, ((answerText.get(node) || {}).text || "") + line.text);
      setState(node, "streaming");
    } else if (line.type === "retry") {
      c.spans.push(["waiting", t, t + line.wait_s * 1000]);
      showAnswer(node, "", { now: true });
      c.firstDelta = undefined;
      setState(node, "waiting");
    } else if (line.type === "agent_finished" || line.type === "synthesis_finished") {
      const r = line.result;
      c.end = t;
      if (c.sent === undefined && r.latency_s != null) c.sent = t - r.latency_s * 1000;
      if (r.answer) showAnswer(node, r.answer, { now: true });
      else showAnswer(node, r.error ? r.error.message : "", { plain: true, now: true });
      const meta = [];
      if (r.latency_s != null) meta.push(r.latency_s.toFixed(2) + " s");
      if (r.usage) meta.push(r.usage.total_tokens + " tokens");
      if (r.cost_usd != null) meta.push("$" + r.cost_usd.toFixed(6));
      node.querySelector(".meta").textContent = meta.join(" · ");
      setState(node, r.status);
    }
  }
  if (line.type === "stage_finished" && line.summary) showSummary(line, line.summary);
  if (line.type === "run_finished") {
    run.end = t;
    const doc = line.document;
    const undecided = doc.decided === false ? " · undecided" : "";
    $("run-status").textContent = `${doc.status}${undecided} · ${doc.duration_s ?? "?"} s · ` +
      `${doc.usage.total_tokens} tokens`;
    $("current").dataset.status = doc.status;
    $("current").dataset.decided = String(doc.decided);
  }
  drawTimeline(run);
}

function showPrompt(prompt) {
  const title = titleOf(prompt);
  $("run-title").textContent = title;
  $("run-prompt").textContent = prompt || "";
  $("run-prompt-box").hidden = (prompt || "").trim() === title;
}

// What a stage decided, as the server's summary says it (the same for every shape): its
// headline, warnings, rows (a tally, a ranking, points), notes and the decided answer.
function showSummary(line, s) {
  $("verdict-box").hidden = false;
  const state = s.decided === true ? " decided" : s.decided === false ? " undecided" : "";
  const title = line.stage === line.kind || line.stage === s.title.toLowerCase()
    ? s.title : `${s.title} · ${line.stage}`;
  const by = [s.author, s.model].filter(Boolean).join(" · ");
  const box = el("div", { class: "summary" + state, "data-stage": line.stage },
    el("div", { class: "title" }, title + (by && s.answer ? " · " + by : "")));
  for (const w of s.warnings) box.append(el("div", { class: "warning" }, "⚠ " + w));
  if (s.headline) box.append(el("div", { class: "headline" }, s.headline));
  const decided = s.decided !== false;
  for (const rows of s.rows) box.append(rowsView(rows, decided));
  for (const note of s.notes) box.append(el("div", { class: "note" }, note));
  if (s.answer && !s.headline.includes(s.answer.trim())) {
    box.append(el("div", { class: "answer" }, s.answer));
  }
  const old = $("verdict").querySelector(`.summary[data-stage="${CSS.escape(line.stage)}"]`);
  if (old) old.replaceWith(box); else $("verdict").append(box);
}

function rowsView(rows, decided) {
  const mark = (r) => (r.marked && decided ? "✓ " : "");
  if (rows.kind === "points") {
    const list = el("ul", {});
    for (const r of rows.rows) {
      const item = el("li", { class: r.marked && decided ? "marked" : "" }, mark(r) + r.label);
      item.style.marginLeft = r.depth * 1.2 + "em";
      list.append(item);
    }
    return el("div", { class: "rows" }, rows.title ? el("b", {}, rows.title) : "", list);
  }
  const table = el("table", { class: "rows " + rows.kind });
  if (rows.columns.length) {
    table.append(el("tr", {}, el("th", {}, ""), ...rows.columns.map((c) => el("th", {}, c))));
  }
  for (const r of rows.rows) {
    const cells = [el("td", {}, mark(r) + r.label)];
    if (r.share !== null) {
      const bar = el("span", { class: "share" });
      bar.style.width = (r.share * 12).toFixed(2) + "em";
      cells.push(el("td", {}, bar));
    }
    cells.push(...r.cells.map((c) => el("td", {}, c)));
    table.append(el("tr", { class: r.marked && decided ? "marked" : "" }, ...cells));
  }
  return el("div", {}, rows.title ? el("b", {}, rows.title) : "", table);
}

function drawTimeline(run) {
  if (run.start === undefined) return;
  const now = run.end ?? Date.now();
  let end = now;
  for (const c of run.calls.values()) end = Math.max(end, c.end ?? now);
  const span = Math.max(end - run.start, 1);
  const pct = (t) => ((t - run.start) / span) * 100;
  const rows = [];
  for (const c of run.calls.values()) {
    const track = el("div", { class: "track" });
    const bar = (kind, a, b) => {
      if (a === undefined || b === undefined || b < a) return;
      const node = el("span", { class: "bar " + kind, title: `${kind} ${((b - a) / 1000).toFixed(2)} s` });
      node.style.left = pct(a) + "%";
      node.style.width = Math.max(pct(b) - pct(a), 0.3) + "%";
      track.append(node);
    };
    const stop = c.end ?? now;
    bar("queued", c.queued, c.sent ?? stop);
    bar("sending", c.sent, c.firstDelta ?? stop);
    bar("streaming", c.firstDelta, stop);
    for (const [kind, a, b] of c.spans) bar(kind, a, Math.min(b, stop));
    const took = c.end !== undefined && c.queued !== undefined ? ((c.end - c.queued) / 1000).toFixed(2) + " s" : "…";
    rows.push(el("div", { class: "tl-row" }, el("span", { class: "who" }, c.name), track,
      el("span", { class: "when" }, took)));
  }
  $("timeline").replaceChildren(...rows);
}

// Server-Sent Events over fetch: "id:", "event:", "data:" lines, frames split by a blank line.
async function follow(run) {
  const response = await api(`/api/runs/${run.id}/events`, { signal: run.controller.signal });
  if (!response.ok) throw new Error((await response.json()).error);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5)).join("\n");
      if (data) onLine(run, JSON.parse(data));
    }
  }
}

async function watch(id) {
  if (current && current.id === id && !current.over) return;
  if (current) current.controller.abort();
  if (runInLink() !== id) history.replaceState(null, "", "#run=" + encodeURIComponent(id));
  const run = { id, controller: new AbortController(), calls: new Map() };
  current = run;
  $("current").hidden = false;
  $("current").dataset.run = id;
  $("current").dataset.status = "running";
  $("panes").replaceChildren();
  $("timeline").replaceChildren();
  $("verdict-box").hidden = true;
  $("verdict").replaceChildren();
  $("run-status").textContent = "running…";
  $("run-title").textContent = "";
  $("run-prompt-box").hidden = true;
  $("terminate").disabled = false;
  try {
    await follow(run);
  } catch (err) {
    if (err.name !== "AbortError") showError(err.message);
  }
  run.over = true;
  if (current === run) $("terminate").disabled = true;
  loadRuns().catch(() => {});
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function submit(event) {
  event.preventDefault();
  showError("");
  const agents = [...document.querySelectorAll("input[name=persona]:checked")].map((i) => i.value);
  const shape = shapes.find((s) => s.name === $("shape").value) || shapes[0];
  const body = { prompt: $("prompt").value, agents, shape: shape.name, options: readOptions(shape) };
  const response = await api("/api/runs", {
    method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" },
  });
  const answer = await response.json();
  if (!response.ok) return showError(answer.error);
  watch(answer.id || answer.instanceId);
  loadRuns().catch(() => {});
}

async function terminate() {
  if (!current) return;
  await api(`/api/runs/${current.id}/terminate`, { method: "POST" });
}

async function start() {
  try {
    await loadPanel();
    await loadShapes();
    await loadRuns();
    const linked = runInLink();
    if (linked) watch(linked);
  } catch (err) {
    if (err.message !== "unauthorized") $("connection").textContent = "cannot reach the server";
  }
}

window.addEventListener("hashchange", () => {
  const linked = runInLink();
  if (linked) watch(linked);
});
$("shape").addEventListener("change", drawOptions);
$("run-form").addEventListener("submit", (e) => submit(e).catch((err) => showError(err.message)));
$("terminate").addEventListener("click", () => terminate().catch((err) => showError(err.message)));
$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("fanout-token", token);
  $("token-form").hidden = true;
  start();
});
start();
