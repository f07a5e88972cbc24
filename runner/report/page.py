"""The run report: one self-contained report.html per run directory.

The answer first: under the title, a summary card (what was trained, the fine-tuned model against its
baselines on the test split with confidence intervals, the audits' verdicts, the diagnosis, where the
model is). Then the details, results before provenance: how much to trust the result (baselines,
intervals, the confusion matrix, samples), how training went (loss, validation-metric and learning-rate
curves, the diagnosis), on what data (split sizes, labels, token lengths), the audits, and what ran (the
resolved recipe, its hash, the data fingerprints, the environment).

The page has inline CSS and SVG only: no script, no font or image from elsewhere, so it opens from
disk and prints. Every file is optional: an older, failed or running run gets a report saying
"not recorded" where a file is missing. All recorded text is escaped: recipes and data rows are
user content.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from runner import __version__
from runner.evaluation.majority import majority_warning
from runner.report.run_record import (
    RunRecord,
    read_run,
)
from runner.report.sections.audits import section_audits
from runner.report.sections.data import section_data
from runner.report.sections.pieces import badge, duration, missing_note
from runner.report.sections.provenance import section_environment, section_recipe
from runner.report.sections.results import section_results
from runner.report.sections.samples import section_rewarded, section_samples, shows_rewarded, shows_samples
from runner.report.sections.summary import section_summary
from runner.report.sections.training import section_training
from runner.report.values import esc, fmt
from runner.storage.rundir import atomic_write

REPORT = "report.html"
STATE_BADGE = {"completed": "pass", "running": "run", "interrupted": "warn", "failed": "fail"}


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _header(rec: RunRecord) -> str:
    status = rec.status or {}
    description = rec.section("run").get("description")
    started, finished = _parse_time(status.get("started")), _parse_time(status.get("finished"))
    took = f" ({duration((finished - started).total_seconds())})" if started and finished else ""
    rows = [
        ("status", badge(rec.state, STATE_BADGE.get(rec.state, "info"))),
        ("started", esc(status.get("started") or "not recorded")),
        ("finished", esc(status.get("finished") or "—") + esc(took)),
        ("global step", esc(fmt(rec.global_step))),
        ("run directory", f"<code>{esc(rec.path)}</code>"),
    ]
    if status.get("checkpoint"):
        rows.append(("last checkpoint", f"<code>{esc(status['checkpoint'])}</code>"))
    out = [f"<h1>{esc(rec.name)}</h1>"]
    if description:
        out.append(f'<p class="lead">{esc(description)}</p>')
    # one line, so that the summary card below starts on the first screen
    out.append('<p class="status">' + "".join(f'<span><span class="label">{esc(k)}</span> {v}</span>' for k, v in rows))
    out.append("</p>")
    if status.get("error"):
        out.append(f'<div class="error"><strong>error:</strong> {esc(status["error"])}</div>')
    warning = majority_warning((rec.evaluation or {}).get("against_majority"))
    if warning:
        out.append(f'<div class="error"><strong>no better than guessing:</strong> {esc(warning)}</div>')
    if rec.status is None:
        out.append(missing_note("status.json not recorded: the run may not have started."))
    for problem in rec.problems:
        out.append(f'<div class="error">{esc(problem)}</div>')
    return "".join(out)


# The answer first, then the details: results before provenance.
SECTIONS: list[tuple[str, str, Callable[[RunRecord], str]]] = [
    ("summary", "Summary", section_summary),
    ("results", "Results", section_results),
    ("samples", "Generated samples", section_samples),
    ("rewarded", "Rewarded answers", section_rewarded),
    ("training", "Training", section_training),
    ("data", "Data", section_data),
    ("audits", "Audits", section_audits),
    ("recipe", "Recipe and provenance", section_recipe),
    ("environment", "Environment", section_environment),
]
# Sections shown only for some runs: no "Generated samples" for a task that generates none (a classifier).
SHOWN: dict[str, Callable[[RunRecord], bool]] = {"samples": shows_samples, "rewarded": shows_rewarded}


def sections_of(rec: RunRecord) -> list[tuple[str, str, Callable[[RunRecord], str]]]:
    """The sections of this run's report, in order."""
    return [(key, title, render) for key, title, render in SECTIONS if SHOWN.get(key, lambda _: True)(rec)]


def render_section(key: str, title: str, render: Callable[[Any], str], record: Any, css_class: str = "") -> str:
    """One section of a page; a section that fails to render says so and the rest still shows."""
    try:
        body = render(record)
    except Exception as exc:  # a record in a shape this version does not know: say so, show the rest
        body = f'<div class="error">this section could not be shown: {esc(type(exc).__name__)}: {esc(exc)}</div>'
    css = f' class="{css_class}"' if css_class else ""
    return f'<section id="{key}"{css}><h2>{esc(title)}</h2>{body}</section>'


def page_html(
    title: str, header: str, nav: list[tuple[str, str]], sections: str, footer: str, extra_css: str = ""
) -> str:
    """A whole self-contained page (run report, sweep report): header and navigation, sections, footer.
    `header`, `sections` and `footer` are HTML already escaped; `nav` is (anchor, title) pairs."""
    links = "".join(f'<a href="#{key}">{esc(text)}</a>' for key, text in nav)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        # No script and nothing fetched from elsewhere, even if recorded text slipped past escaping.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}{extra_css}</style></head><body>"
        f'<header class="top">{header}<nav>{links}</nav></header><main>{sections}</main>'
        f"<footer>{footer}</footer></body></html>\n"
    )


def render_report(rec: RunRecord) -> str:
    """The whole report page for one run."""
    shown = sections_of(rec)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    footer = (
        f"report written by finetune-runner {esc(__version__)} on {esc(stamp)} from the files of "
        f"<code>{esc(rec.path)}</code>; rebuild it with <code>finetune report {esc(rec.path)}</code>"
    )
    return page_html(
        f"{rec.name}: finetune-runner report",
        _header(rec),
        [(key, title) for key, title, _ in shown],
        "".join(render_section(key, title, render, rec) for key, title, render in shown),
        footer,
    )


def build_report(run_dir: Path) -> Path:
    """Write `run_dir/report.html` (atomically) from the run directory's records; returns its path."""
    run_dir = Path(run_dir)
    out = run_dir / REPORT
    atomic_write(out, render_report(read_run(run_dir)))
    return out


CSS = """
:root { --ink: #111827; --muted: #6b7280; --line: #e5e7eb; --good: #047857; --bad: #b91c1c; --warn: #b45309;
  --accent: #2563eb; }
* { box-sizing: border-box; }
body { margin: 0; background: #f3f4f6; color: var(--ink); line-height: 1.45; font-size: 14px;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
header.top, main, footer { max-width: 1180px; margin: 0 auto; padding: 0 24px; }
header.top { padding-top: 20px; }
h1 { font-size: 26px; margin: 0 0 4px; }
.lead { font-size: 15px; color: #374151; margin: 0 0 6px; }
p.status { display: flex; flex-wrap: wrap; gap: 2px 20px; margin: 4px 0; }
.label { color: var(--muted); font-size: 12px; }
nav { display: flex; flex-wrap: wrap; gap: 6px 16px; padding: 4px 0 0; }
nav a { color: var(--accent); text-decoration: none; font-weight: 500; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 22px;
  margin: 16px auto; }
h2 { font-size: 19px; margin: 0 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 8px; }
h4 { font-size: 13px; margin: 10px 0 4px; color: #374151; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { border-bottom: 2px solid #d1d5db; white-space: nowrap; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.kv th { color: var(--muted); font-weight: 500; white-space: nowrap; }
code, .mono, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
.mono { word-break: break-all; }
pre { background: #f9fafb; border: 1px solid var(--line); padding: 10px; border-radius: 6px; margin: 0;
  white-space: pre-wrap; word-break: break-word; }
details { margin: 8px 0; } summary { cursor: pointer; color: var(--accent); font-weight: 500; }
details pre { margin-top: 6px; max-height: 640px; overflow: auto; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12px; font-weight: 700;
  letter-spacing: .03em; color: #fff; background: var(--muted); vertical-align: 1px; }
.badge.pass { background: var(--good); } .badge.fail { background: var(--bad); }
.badge.warn { background: var(--warn); } .badge.run { background: var(--accent); }
.better { color: var(--good); } .worse { color: var(--bad); } .same { color: var(--muted); }
.diff { display: block; font-size: 11px; font-weight: 600; }
.interval { display: block; font-size: 11px; color: var(--muted); white-space: nowrap; }
.arrow { color: var(--muted); font-weight: 400; }
tr.ours th, tr.ours td { background: #eff6ff; font-weight: 600; }
.missing { color: var(--muted); font-style: italic; }
.note { color: var(--muted); font-size: 12px; }
ul.note { padding-left: 18px; }
.error { background: #fef2f2; border: 1px solid #fecaca; color: var(--bad); padding: 8px 12px; border-radius: 6px;
  margin: 8px 0; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 10px 18px;
  align-items: start; }
.charts > .wide { grid-column: 1 / -1; }
.row { display: flex; flex-wrap: wrap; gap: 10px 28px; align-items: flex-start; }
.row > table { margin-top: 0; }
.side { display: grid; grid-template-columns: minmax(0, 2fr) minmax(0, 1fr); gap: 10px 24px; align-items: start; }
svg.chart { max-width: 100%; height: auto; }
section#summary { border: 2px solid var(--accent); margin-top: 10px; }
section#summary h3 { margin-top: 12px; }
section#summary .kv { margin-bottom: 0; }
.facts { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 6px 20px; }
.fact { overflow-wrap: anywhere; }
.fact .label { display: block; }
.audit-verdict { margin-right: 12px; white-space: nowrap; }
.heat td { text-align: center; min-width: 52px; font-variant-numeric: tabular-nums; }
.heat td.diag { box-shadow: inset 0 0 0 2px #1e3a8a; font-weight: 700; }
.heat .total { color: var(--muted); background: #f9fafb; }
.heat caption { caption-side: top; text-align: left; font-size: 12px; color: var(--muted); padding-bottom: 4px; }
.heat th.corner { font-weight: 500; color: var(--muted); font-size: 11px; }
.audit { border: 1px solid var(--line); border-radius: 6px; padding: 4px 14px 8px; margin: 10px 0; }
.audit h3 { margin: 8px 0 4px; }
.examples td, .samples td { max-width: 520px; overflow-wrap: break-word; }
.samples pre { background: none; border: none; padding: 0; }
footer { color: var(--muted); font-size: 12px; padding-bottom: 32px; }
@media print {
  body { background: #fff; font-size: 11px; }
  nav { display: none; }
  section { border: none; padding: 0; margin: 12px 0; }
  h2 { break-after: avoid; }
  svg.chart, table, .audit { break-inside: avoid; }
  details::details-content { content-visibility: visible; display: block; }
  details pre { max-height: none; }
  * { print-color-adjust: exact; -webkit-print-color-adjust: exact; }
}
"""
