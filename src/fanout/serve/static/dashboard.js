// The fanout dashboard: one page, no build step, nothing loaded from elsewhere.
// It uses the same routes as any client: /api/agents, /api/runs, and each run's SSE events
// (read with fetch rather than EventSource, so a server token can go in a header).
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("fanout-token") || "";
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
  const shape = $("shape");
  for (const name of panel.shapes) shape.append(el("option", { value: name }, name));
  $("connection").textContent = panel.agents.length + " personas ready";
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
      if (line.type === "synthesis_finished" && r.answer) showVerdict(r.answer);
    }
  }
  if (line.type === "stage_finished" && line.verdict) {
    showVerdict(line.verdict.answer || JSON.stringify(line.verdict, null, 2));
  }
  if (line.type === "run_finished") {
    run.end = t;
    const doc = line.document;
    $("run-status").textContent = `${doc.status} · ${doc.duration_s ?? "?"} s · ` +
      `${doc.usage.total_tokens} tokens`;
    $("current").dataset.status = doc.status;
  }
  drawTimeline(run);
}

function showPrompt(prompt) {
  const title = titleOf(prompt);
  $("run-title").textContent = title;
  $("run-prompt").textContent = prompt || "";
  $("run-prompt-box").hidden = (prompt || "").trim() === title;
}

function showVerdict(text) {
  $("verdict-box").hidden = false;
  $("verdict").textContent = text;
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
  const body = { prompt: $("prompt").value, agents };
  if ($("synthesize").checked) body.synthesize = true;
  if ($("shape").value) body[$("shape").value] = true;
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
