"""sweep.html: what a hyperparameter study found, for a person, in the look of the run report.

The answer comes first: the best trial, its value and settings, how to run it again and how much the
result moves with the seed. Then why: which parameters mattered (importances), how the settings and
the objective go together (parallel coordinates, one slice per parameter), what the pruner saw
(intermediate values), and every trial with its error and a link to its own report.

Like report.html the page is one file with inline CSS and SVG only (no script, nothing fetched from
elsewhere), and every recorded string is escaped: parameter values, errors and names are user
content. The input is the dict `runner.sweep.summary.summarize` returns; every key is read
defensively, so a study with no trials, only failed ones, or settings of an older shape still gets a
page, and a section that cannot be drawn says so while the rest is shown.
"""

from __future__ import annotations

import shlex
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from runner import __version__
from runner.report.charts import Series, line_chart
from runner.report.page import page_html, render_section
from runner.report.sections.pieces import badge, clip, duration, kv_table, missing_note
from runner.report.values import esc, fmt
from runner.storage.rundir import atomic_write, finite
from runner.sweep.report_charts import (
    Axis,
    importance_bars,
    intermediate_chart,
    make_axis,
    parallel_coordinates,
    show,
    slice_plot,
)

STATES = ("complete", "pruned", "failed", "running", "waiting")
STATE_BADGE = {"complete": "pass", "pruned": "warn", "failed": "fail", "running": "run", "waiting": "info"}
SWEEP_CSS = """
section.summary { border: 2px solid #bfdbfe; }
.answer { font-size: 22px; font-weight: 700; margin: 0 0 8px; }
.answer .metric { font-size: 14px; font-weight: 500; color: var(--muted); }
.counts .badge { margin-right: 4px; } .counts .zero { color: var(--muted); font-size: 12px; margin-right: 8px; }
ul.settings { margin: 0; padding-left: 0; list-style: none; }
td.err { max-width: 360px; overflow-wrap: anywhere; color: var(--bad); font-size: 12px; }
td.absent { color: var(--muted); }
"""


def _trials(sweep: dict) -> list[dict]:
    return [t for t in sweep.get("trials") or [] if isinstance(t, dict)]


def _param_keys(sweep: dict) -> list[str]:
    """The searched keys: the space's order first, then keys only trials name (older studies)."""
    keys = [str(k) for k in sweep.get("space") or {}]
    for t in _trials(sweep):
        keys += [str(k) for k in t.get("params") or {} if str(k) not in keys]
    return keys


def _axes(sweep: dict) -> list[Axis]:
    space = sweep.get("space") or {}
    out = []
    for key in _param_keys(sweep):
        tried = [t["params"][key] for t in _trials(sweep) if key in (t.get("params") or {})]
        out.append(make_axis(key, space.get(key), tried))
    return out


def _maximize(sweep: dict) -> bool:
    return sweep.get("direction") != "minimize"


def _best_number(sweep: dict) -> int | None:
    best = sweep.get("best")
    return best.get("number") if isinstance(best, dict) else None


def _settings(params: dict) -> str:
    """A trial's settings as a list of `key = value`, escaped."""
    rows = "".join(
        f"<li><code>{esc(k)}</code> = <strong>{esc(clip(show(v), 200))}</strong></li>" for k, v in params.items()
    )
    return f'<ul class="settings">{rows}</ul>' if rows else '<span class="missing">no searched settings</span>'


def _report_link(report: object, directory: object) -> str:
    """A link relative to sweep.html when the trial's report lies under the sweep directory (the
    page keeps working when the directory is moved or copied); else the path as text."""
    if not report:
        return "—"
    rel = None
    if directory:
        try:
            rel = Path(str(report)).relative_to(Path(str(directory)))
        except ValueError:
            rel = None
    if rel is None or ".." in rel.parts:
        return f'<code class="mono">{esc(report)}</code>'
    return f'<a href="{esc(quote(rel.as_posix()))}">{esc(rel.as_posix())}</a>'


def _counts(sweep: dict) -> str:
    counts = Counter(str(t.get("state")) for t in _trials(sweep))
    finished = sum(counts[s] for s in ("complete", "pruned", "failed"))
    target = sweep.get("target_trials")
    done = f"{finished} of {fmt(target)} done" if target else f"{finished} done"
    parts = [
        badge(f"{counts[s]} {s}", STATE_BADGE[s]) if counts[s] else f'<span class="zero">0 {esc(s)}</span>'
        for s in STATES
    ]
    parts += [badge(f"{n} {s}", "info") for s, n in counts.items() if s not in STATES]
    return f'{esc(done)} <span class="counts">{"".join(parts)}</span>'


def _seed_rows(seeds: dict) -> list[tuple[str, str]]:
    values = seeds.get("values") or []
    listed = ", ".join(str(s) for s in seeds.get("seeds") or [])
    of = f" (settings of trial {fmt(seeds['best_trial'])})" if seeds.get("best_trial") is not None else ""
    rows = [
        (
            "seed repeats",
            f"<code>{esc(seeds.get('metric') or '')}</code> = <strong>{esc(fmt(seeds.get('mean')))} ± "
            f"{esc(fmt(seeds.get('std')))}</strong> over {len(values)} seeds ({esc(listed)}){esc(of)}",
        )
    ]
    for metric, spread in (seeds.get("test") or {}).items():
        if isinstance(spread, dict):
            n = len(spread.get("values") or [])
            text = f"{fmt(spread.get('mean'))} ± {fmt(spread.get('std'))} over {n} seeds"
            rows.append((f"test.{metric}", esc(text)))
    return rows


def section_summary(sweep: dict) -> str:
    """The answer: the best trial, its settings, how to run it again, and the seed spread."""
    metric, direction = sweep.get("metric") or "objective", sweep.get("direction") or "?"
    best = sweep.get("best") if isinstance(sweep.get("best"), dict) else None
    rows = [("objective", f"<code>{esc(metric)}</code> ({esc(direction)})"), ("trials", _counts(sweep))]
    if best is None:
        trials = _trials(sweep)
        why = (
            "no trials yet: the study has not started."
            if not trials
            else "every trial failed: see the errors in the trials table."
            if all(t.get("state") == "failed" for t in trials)
            else "no trial has completed yet."
        )
        return f'<p class="answer">no best trial</p>{missing_note(why)}{kv_table(rows)}'
    number = best.get("number")
    trial = next((t for t in _trials(sweep) if t.get("number") == number), {})
    answer = (
        f'<p class="answer">best: trial {esc(fmt(number))} — {esc(fmt(best.get("value")))} '
        f'<span class="metric">{esc(metric)}</span></p>'
    )
    rows += [
        ("best trial", f"<strong>{esc(fmt(number))}</strong>"),
        ("best value", f"<strong>{esc(fmt(best.get('value')))}</strong>"),
        ("settings", _settings(best.get("params") or {})),
        ("its report", _report_link(trial.get("report"), sweep.get("directory"))),
    ]
    if best.get("run_dir"):
        rows.append(("its run", f'<code class="mono">{esc(best["run_dir"])}</code>'))
    recipe = sweep.get("best_recipe")
    if recipe:
        path, directory = Path(str(recipe)), sweep.get("directory")
        if directory and path.parent == Path(str(directory)):
            command = f"<code>finetune run {esc(path.name)}</code> in <code>{esc(directory)}</code>"
        else:
            command = f"<code>finetune run {esc(shlex.quote(str(recipe)))}</code>"
        rows.append(("run it again", command))
    if isinstance(sweep.get("seeds"), dict):
        rows += _seed_rows(sweep["seeds"])
    return answer + kv_table(rows)


def section_importance(sweep: dict) -> str:
    importances = sweep.get("importances")
    chart = importance_bars(importances, title="Parameter importance") if isinstance(importances, dict) else ""
    if not chart:
        return missing_note(f"no importances: {sweep.get('importances_note') or 'not computed'}")
    note = "<p class=\"note\">the share of the objective's variation each parameter explains (Optuna's fANOVA)</p>"
    return chart + note


def section_parallel(sweep: dict) -> str:
    trials = _trials(sweep)
    values = [t.get("value") for t in trials if t.get("state") == "complete" and finite(t.get("value")) is not None]
    objective = make_axis(str(sweep.get("metric") or "objective"), {}, values) if values else None
    chart = parallel_coordinates(
        _axes(sweep),
        objective,
        trials,
        maximize=_maximize(sweep),
        best=_best_number(sweep),
        title="Settings and objective of each trial",
    )
    if not chart:
        return missing_note("no complete or pruned trial with settings yet.")
    return f'<div class="charts">{chart}</div>'


def section_slices(sweep: dict) -> str:
    trials, metric = _trials(sweep), str(sweep.get("metric") or "objective")
    complete = sorted(
        (t for t in trials if t.get("state") == "complete" and finite(t.get("value")) is not None),
        key=lambda t: finite(t.get("number")) or 0,
    )
    pick = max if _maximize(sweep) else min
    so_far: list[float] = []
    for t in complete:
        value = finite(t["value"])
        so_far.append(value if not so_far else pick(so_far[-1], value))
    history = line_chart(
        [
            Series(
                "trial value", [(t["number"], t["value"], f"trial {t['number']}: {fmt(t['value'])}") for t in complete]
            ),
            Series(
                "best so far",
                [
                    (t["number"], v, f"best after trial {t['number']}: {fmt(v)}")
                    for t, v in zip(complete, so_far, strict=True)
                ],
                dashed=True,
            ),
        ],
        title="Objective by trial",
        x_label="trial",
        y_label=metric,
    )
    best, maximize = _best_number(sweep), _maximize(sweep)
    slices = [slice_plot(axis, trials, maximize=maximize, best=best, y_label=metric) for axis in _axes(sweep)]
    slices = [s for s in slices if s]
    if not history and not slices:
        return missing_note("no complete trial with a value yet.")
    return f'<div class="charts">{history}</div><div class="charts">{"".join(slices)}</div>'


def section_intermediate(sweep: dict) -> str:
    chart = intermediate_chart(
        _trials(sweep), title="Reported value per step (what the pruner saw)", y_label=str(sweep.get("metric") or "")
    )
    if not chart:
        return missing_note("no trial reported intermediate values.")
    pruner = sweep.get("pruner") or "none"
    return (
        f'<div class="charts">{chart}</div><p class="note">pruner: {esc(pruner)}; × marks where a trial was pruned</p>'
    )


def section_trials(sweep: dict) -> str:
    trials = sorted(_trials(sweep), key=lambda t: finite(t.get("number")) or 0)
    if not trials:
        return missing_note("no trials yet.")
    keys, best = _param_keys(sweep), _best_number(sweep)
    head = ["#", "state", *keys, "value", "duration", "host", "report", "error"]
    out = [
        '<table class="trials"><thead><tr>',
        *(f'<th scope="col">{esc(h)}</th>' for h in head),
        "</tr></thead><tbody>",
    ]
    for t in trials:
        params = t.get("params") or {}
        mine = best is not None and t.get("number") == best
        out.append('<tr class="ours">' if mine else "<tr>")
        out.append(f'<td class="num">{esc(fmt(t.get("number")))}</td>')
        state = str(t.get("state"))
        out.append(f"<td>{badge(state, STATE_BADGE.get(state, 'info'))}</td>")
        for key in keys:
            if key in params:
                value = params[key]
                css = ' class="num"' if isinstance(value, int | float) and not isinstance(value, bool) else ""
                out.append(f"<td{css}>{esc(clip(show(value), 80))}</td>")
            else:  # a conditional key this trial's components do not take
                out.append('<td class="absent" title="not searched in this trial">—</td>')
        out.append(f'<td class="num">{esc(fmt(t.get("value")))}</td>')
        seconds = finite(t.get("duration_s"))
        out.append(f'<td class="num">{esc(duration(seconds))}</td>')
        out.append(f"<td>{esc(t.get('host') or '—')}</td>")
        out.append(f"<td>{_report_link(t.get('report'), sweep.get('directory'))}</td>")
        error = t.get("error")
        out.append(
            f'<td class="err" title="{esc(clip(error, 2000))}">{esc(clip(error, 160))}</td>' if error else "<td></td>"
        )
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _range(entry: object) -> tuple[str, str]:
    """A space entry as (kind, what it searches)."""
    if not isinstance(entry, dict):
        return "?", clip(entry, 200)
    for kind in ("choice", "uniform", "log_uniform", "int", "log_int"):
        if kind in entry:
            values = entry[kind] if isinstance(entry[kind], list) else [entry[kind]]
            if kind == "choice":
                return kind, clip(", ".join(show(v) for v in values), 300)
            step = f", step {fmt(entry['step'])}" if entry.get("step") is not None else ""
            return kind, f"[{', '.join(fmt(v) for v in values)}]{step}"
    return "?", clip(entry, 200)


def section_space(sweep: dict) -> str:
    space = sweep.get("space") or {}
    rows = "".join(
        f"<tr><td><code>{esc(k)}</code></td><td>{esc(kind)}</td><td>{esc(text)}</td></tr>"
        for k, (kind, text) in ((k, _range(entry)) for k, entry in space.items())
    )
    table = (
        f'<table><thead><tr><th scope="col">key</th><th scope="col">kind</th><th scope="col">values</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
        if rows
        else missing_note("the search space is empty.")
    )
    settings = [
        ("sampler", esc(sweep.get("sampler") or "—")),
        ("pruner", esc(sweep.get("pruner") or "—")),
        ("storage", f"<code>{esc(sweep.get('storage') or '—')}</code>"),
        ("recipe", f'<code class="mono">{esc(sweep.get("recipe") or "—")}</code>'),
        ("directory", f'<code class="mono">{esc(sweep.get("directory") or "—")}</code>'),
        ("target trials", esc(fmt(sweep.get("target_trials")))),
    ]
    return f"<h3>Search space</h3>{table}<h3>Study settings</h3>{kv_table(settings)}"


SECTIONS: list[tuple[str, str, Callable[[dict], str]]] = [
    ("summary", "Best result", section_summary),
    ("importance", "Parameter importance", section_importance),
    ("parallel", "Parallel coordinates", section_parallel),
    ("slices", "Objective by parameter", section_slices),
    ("intermediate", "Intermediate values", section_intermediate),
    ("trials", "Trials", section_trials),
    ("space", "Search space and study settings", section_space),
]


def render_sweep_report(sweep: dict[str, Any]) -> str:
    """The whole sweep.html page for one study summary."""
    name = str(sweep.get("name") or "study")
    lead = f"hyperparameter sweep: {sweep.get('direction') or '?'} {sweep.get('metric') or 'objective'}"
    sections = "".join(
        render_section(key, title, render, sweep, "summary" if key == "summary" else "")
        for key, title, render in SECTIONS
    )
    stamp = time.strftime("%Y-%m-%d %H:%M")
    directory = str(sweep.get("directory") or ".")
    footer = (
        f"sweep report written by finetune-runner {esc(__version__)} on {esc(stamp)} from the study's "
        f"storage; rebuild it with <code>finetune sweep report {esc(shlex.quote(directory))}</code>"
    )
    return page_html(
        f"{name}: finetune-runner sweep",
        f'<h1>{esc(name)}</h1><p class="lead">{esc(lead)}</p>',
        [(key, title) for key, title, _ in SECTIONS],
        sections,
        footer,
        extra_css=SWEEP_CSS,
    )


def write_sweep_report(path: Path, sweep: dict[str, Any]) -> Path:
    """Write the page to `path` (sweep.html, atomically: a reader never sees half a page); returns it."""
    path = Path(path)
    atomic_write(path, render_sweep_report(sweep))
    return path
