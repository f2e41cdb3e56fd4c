"""A run as one self-contained HTML page (``fanout runs export RUN --format html``): a section
per stage, under its id, with what it decided (its verdict's summary, as every front end shows
it) and its calls side by side, then the timeline. Styles are inline and there is no script,
font or image to fetch: the page opens with no network.

Every piece of text from the run (prompt, names, errors) is escaped, and answers are rendered
as Markdown by ``markdown.answer_html``, which turns none of their text into markup: answers
are untrusted model output.
"""

from __future__ import annotations

from html import escape

from fanout.markdown import answer_html
from fanout.models import CallResult, RunReport, StageResult
from fanout.summary import Rows, Summary
from fanout.timing import PHASE_KINDS, PHASE_NAMES, axis_end, phases

_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem; color: #1d1d1f; background: #fafafa; }
h1 { font-size: 1.25rem; margin: 0 0 .25rem; }
.meta { color: #666; font-size: .85rem; margin-bottom: 1.5rem; }
.meta code { font-size: .8rem; }
.prompt { white-space: pre-wrap; background: #fff; border: 1px solid #ddd; border-radius: 6px;
  padding: .75rem 1rem; margin-bottom: 1.5rem; }
.answers { display: grid; gap: 1rem; grid-template-columns: repeat(auto-fit, minmax(18rem, 1fr)); }
.card { background: #fff; border: 1px solid #ddd; border-top: 4px solid #2e7d32;
  border-radius: 6px; padding: .75rem 1rem; }
.card.error { border-top-color: #c62828; }
.card.cancelled, .card.skipped { border-top-color: #f9a825; }
.card h3 { margin: 0; font-size: 1rem; } .card .model { color: #666; font-size: .8rem; }
.card .text { margin: .5rem 0; overflow-wrap: anywhere; }
.card .text > :first-child { margin-top: 0; } .card .text > :last-child { margin-bottom: 0; }
.card .text pre { background: #f4f4f4; padding: .5rem; overflow-x: auto; }
.card .text table { border-collapse: collapse; } .card .text :is(th, td) {
  border: 1px solid #ddd; padding: .2rem .5rem; }
.card .figures { color: #666; font-size: .8rem; }
.failure { color: #c62828; }
.summary { background: #fff; border: 1px solid #ddd; border-left: 4px solid #0277bd;
  border-radius: 6px; padding: .75rem 1rem; margin-bottom: 1rem; }
.summary.decided { border-left-color: #2e7d32; } .summary.undecided { border-left-color: #f9a825; }
.summary .headline { font-weight: 600; } .summary .warning { color: #b26a00; }
.summary .answer { white-space: pre-wrap; margin-top: .5rem; } .summary .note { color: #666; }
.summary table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
.summary td, .summary th { padding: .1rem .6rem .1rem 0; text-align: left; }
.summary .tally { display: inline-block; height: .7rem; background: #90caf9; }
.summary .marked .tally { background: #2e7d32; } .summary .marked { font-weight: 600; }
h2 { font-size: 1.05rem; margin: 2rem 0 .75rem; }
.timeline { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .75rem 1rem; }
.row { display: grid; grid-template-columns: 10rem 1fr 11rem; gap: .5rem; align-items: center;
  font-size: .85rem; margin: .2rem 0; }
.row .label { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; font-weight: 600; }
.row .figures { color: #555; text-align: right; font-variant-numeric: tabular-nums; }
.stage { font-size: .8rem; color: #888; margin-top: .5rem; text-transform: uppercase; }
.bar { position: relative; height: 1rem; background: #f1f1f1; border-radius: 2px; }
.bar span { position: absolute; top: 0; bottom: 0; min-width: 1px; }
.waiting { background: #cfd8dc; } .backoff { background: repeating-linear-gradient(45deg,
  #ffb300 0 3px, #fff3c4 3px 6px); } .first_token { background: #4fc3f7; }
.streaming { background: #2e7d32; } .failed { background: #c62828; width: 2px; }
.legend { font-size: .8rem; color: #555; margin-top: .5rem; }
.legend i { display: inline-block; width: .9rem; height: .6rem; margin: 0 .3rem 0 .9rem; }
"""


def html_page(report: RunReport) -> str:
    """The page, as one string of HTML."""
    title = f"fanout run {report.run_id}"
    usage = report.usage
    cost = f"${report.cost_usd:.6f}" if report.cost_usd is not None else "cost unknown"
    status = report.status + (", undecided" if report.decided is False else "")
    meta = (
        f"{escape(status)} · {report.duration_s:.2f} s · {usage.total_tokens:,} tokens · "
        f"{cost} · started {escape(report.started_at)} · trace "
        f"<code>{escape(report.trace_id or '-')}</code>"
    )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<div class="meta">{meta}</div>',
        f'<div class="prompt">{escape(report.prompt)}</div>',
    ]
    if report.stages:
        for stage in report.stages:
            parts.extend(_section(stage))
        parts.append("<h2>Timeline</h2>")
        parts.append(_timeline(report))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _section(stage: StageResult) -> list[str]:
    """A stage under its id: what it decided, then its calls (of a stage that decided, only
    those that failed: its summary says the rest)."""
    if not stage.calls and stage.verdict is None:
        return []
    parts = [f"<h2>{escape(stage.id)}</h2>"]
    if stage.verdict is not None:
        parts.append(_summary(stage.verdict.summary()))
    shown = [r for r in stage.calls if stage.holds_answers or stage.verdict is None]
    shown += [r for r in stage.calls if r not in shown and r.status == "error"]
    if shown:
        parts.append(f'<div class="answers">{"".join(_card(r) for r in shown)}</div>')
    return parts


def _summary(summary: Summary) -> str:
    """A verdict's summary: headline, warnings, rows, notes and the decided answer."""
    state = {True: " decided", False: " undecided", None: ""}[summary.decided]
    parts = [f'<div class="headline">{escape(summary.title)}: {escape(summary.headline)}</div>']
    parts += [f'<div class="warning">⚠ {escape(w)}</div>' for w in summary.warnings]
    parts += [_rows(rows, summary.decided is not False) for rows in summary.rows]
    parts += [f'<div class="note">{escape(note)}</div>' for note in summary.notes]
    if summary.answer is not None:
        by = " · ".join(p for p in (summary.author, summary.model) if p)
        heading = f'<div class="note">by {escape(by)}</div>' if by else ""
        parts.append(f'{heading}<div class="answer">{escape(summary.answer)}</div>')
    return f'<div class="summary{state}">{"".join(parts)}</div>'


def _rows(rows: Rows, decided: bool) -> str:
    title = f"<div><b>{escape(rows.title)}</b></div>" if rows.title else ""
    if rows.kind == "points":
        items = "".join(
            f'<li class="{"marked" if r.marked and decided else ""}" '
            f'style="margin-left:{r.depth * 1.2}rem">{escape(r.label)}</li>'
            for r in rows.rows
        )
        return f"{title}<ul>{items}</ul>"
    head = "".join(f"<th>{escape(c)}</th>" for c in ("", *rows.columns)) if rows.columns else ""
    lines = []
    for row in rows.rows:
        mark = "✓ " if row.marked and decided else ""
        cells = "".join(f"<td>{escape(c)}</td>" for c in row.cells)
        bar = ""
        if row.share is not None:
            bar = f'<td><span class="tally" style="width:{row.share * 12:.2f}rem"></span></td>'
        marked = ' class="marked"' if row.marked and decided else ""
        lines.append(f"<tr{marked}><td>{mark}{escape(row.label)}</td>{bar}{cells}</tr>")
    return f"{title}<table><tr>{head}</tr>{''.join(lines)}</table>"


def _card(result: CallResult) -> str:
    body = ""
    if result.error is not None:
        body += f'<div class="failure">✗ {escape(result.error.type)}: '
        body += f"{escape(result.error.message)}</div>"
    if result.answer:  # rendered as the terminal renders it: Markdown, sanitised
        body += f'<div class="text">{answer_html(result.answer)}</div>'
    elif result.error is None:
        body += f'<div class="failure">{escape(result.status)}</div>'
    figures = [
        f"{result.latency_s:.2f} s" if result.latency_s is not None else "",
        f"ttft {result.ttft_s:.2f} s" if result.ttft_s is not None else "",
        f"{result.attempts} attempts" if result.attempts > 1 else "",
        f"{result.usage.total_tokens:,} tokens" if result.usage.total_tokens else "",
        "truncated" if result.truncated else "",
    ]
    return (
        f'<div class="card {escape(result.status)}"><h3>{escape(result.name)}</h3>'
        f'<div class="model">{escape(result.model)}</div>{body}'
        f'<div class="figures">{escape(" · ".join(f for f in figures if f))}</div></div>'
    )


def _timeline(report: RunReport) -> str:
    end = axis_end(report) or 1.0
    rows: list[str] = []
    for stage in report.stages:
        if len([s for s in report.stages if s.calls]) > 1 and stage.calls:
            rows.append(f'<div class="stage">{escape(stage.id)}</div>')
        for result in stage.calls:
            rows.append(_timeline_row(result, end))
    legend = (
        "".join(f'<i class="{kind}"></i>{escape(PHASE_NAMES[kind])}' for kind in PHASE_KINDS)
        + '<i class="failed"></i>failed attempt'
    )
    return (
        f'<div class="timeline"><div class="row"><span></span><span class="figures" '
        f'style="text-align:left">0 s … {end:.2f} s</span><span class="figures">ttft · total'
        f' · tries</span></div>{"".join(rows)}<div class="legend">{legend}</div></div>'
    )


def _timeline_row(result: CallResult, end: float) -> str:
    spans: list[str] = []
    if result.timing is not None:
        for phase in phases(result.timing):
            left, width = 100 * phase.start_s / end, 100 * phase.duration_s / end
            title = f"{PHASE_NAMES[phase.kind]} (attempt {phase.attempt}): {phase.duration_s:.3f} s"
            spans.append(
                f'<span class="{phase.kind}" style="left:{left:.3f}%;width:{width:.3f}%" '
                f'title="{escape(title)}"></span>'
            )
        for attempt in result.timing.attempts:
            if attempt.error is not None and attempt.end_s is not None:
                left = 100 * attempt.end_s / end
                spans.append(
                    f'<span class="failed" style="left:{left:.3f}%" '
                    f'title="attempt {attempt.attempt}: {escape(attempt.error)}"></span>'
                )
    ttft = f"{result.ttft_s:.2f}s" if result.ttft_s is not None else "-"
    total = f"{result.latency_s:.2f}s" if result.latency_s is not None else "-"
    return (
        f'<div class="row"><span class="label" title="{escape(result.call_id)}">'
        f'{escape(result.name)}</span><div class="bar">{"".join(spans)}</div>'
        f'<span class="figures">{ttft} · {total} · {result.attempts}</span></div>'
    )
