"""The results section: the fine-tuned model against each baseline per split, confidence intervals,
each data source's scores, and the confusion matrices.
"""

from __future__ import annotations

from typing import Any

from runner.report.charts import heat_table
from runner.report.run_record import (
    RunRecord,
    arrow,
    baselines,
    compare_better,
    confusion_matrices,
    interval_of,
    interval_text,
    main_splits,
    scores,
    split_order,
    task_labels,
)
from runner.report.sections.pieces import metric_html, missing_note
from runner.report.values import esc, fmt
from runner.storage.rundir import finite


def signed_text(delta: float) -> str:
    """A difference with its sign: +0.6100."""
    return f"{delta:+.4f}" if 1e-4 <= abs(delta) < 1000 else f"{delta:+.3g}"


def section_results(rec: RunRecord) -> str:
    """Fine-tuned against each baseline per split, intervals, per-source scores, confusion matrices."""
    final = rec.final_metrics()
    if not final and rec.evaluation is None:
        return missing_note(
            "not recorded: the run has no final evaluation (metrics.json and evaluation.json are missing)."
        )
    out = []
    rows = baselines(rec)
    if rec.evaluation is None:
        out.append(missing_note("baselines not recorded (no evaluation.json): the fine-tuned model's metrics alone."))
    elif not rows:
        out.append(missing_note("no baselines were evaluated for this run."))
    for split in main_splits(final):
        out.append(f"<h3>{esc(split)}</h3>" + comparison_table(rec, split, final[split], rows))
    notes = [(b.get("name"), b.get("note")) for b in rows if b.get("note")]
    notes += [(f"{key} left out", why) for key, why in ((rec.evaluation or {}).get("left_out") or {}).items()]
    if notes:
        out.append(
            '<ul class="note">' + "".join(f"<li><strong>{esc(n)}</strong>: {esc(t)}</li>" for n, t in notes) + "</ul>"
        )
    out.append("<h3>Confidence intervals</h3>" + _intervals(rec, final))
    parts = [s for s in split_order(final) if "/" in s]
    if parts:
        out.append("<h3>Each data source on its own</h3>" + _source_table(parts, final))
    matrices = confusion_matrices(rec)
    if matrices or (rec.model_meta or {}).get("head") == "sequence_classification":
        out.append("<h3>Confusion matrix</h3>" + _confusion(rec, matrices))
    return "".join(out)


def comparison_table(
    rec: RunRecord,
    split: str,
    finetuned: dict[str, Any],
    rows: list[dict[str, Any]],
    keys: list[str] | None = None,
    note: bool = True,
) -> str:
    """The fine-tuned model's metrics on `split` (with their intervals) above each baseline's, each
    baseline value with fine-tuned minus baseline under it; `keys` picks and orders the metrics."""
    ours = scores(finetuned)
    present = [b for b in rows if isinstance(b.get(split), dict)]
    if keys is None:
        keys = list(dict.fromkeys([*ours, *(k for b in present for k in scores(b[split]))]))
    if not keys:
        return missing_note("no metrics recorded for this split.")
    head = "".join(
        f'<th class="num" title="{"higher" if rec.greater_is_better(k) else "lower"} is better">{esc(k)} '
        f'<span class="arrow">{arrow(rec.greater_is_better(k))}</span></th>'
        for k in keys
    )
    body = ['<tr class="ours"><th scope="row">fine-tuned</th>']
    for k in keys:
        interval = interval_of(rec, split, k)
        extra = f'<span class="interval">{esc(interval_text(interval))}</span>' if interval else ""
        body.append(f'<td class="num">{metric_html(ours.get(k))}{extra}</td>')
    body.append("</tr>")
    for b in present:
        theirs = scores(b[split])
        body.append(f'<tr><th scope="row">{esc(b.get("name", "baseline"))}</th>')
        for k in keys:
            if k not in theirs:
                body.append('<td class="num">—</td>')
                continue
            compared = compare_better(ours.get(k), theirs[k], rec.greater_is_better(k))
            diff = ""
            if compared is not None:
                delta, better = compared
                cls = "same" if better is None else "better" if better else "worse"
                word = "no difference" if better is None else "fine-tuned better" if better else "fine-tuned worse"
                hover = esc(f"fine-tuned − {b.get('name')}: {word}")
                diff = f'<span class="diff {cls}" title="{hover}">{esc(signed_text(delta))}</span>'
            body.append(f'<td class="num">{metric_html(theirs[k])}{diff}</td>')
        body.append("</tr>")
    table = f'<table class="results"><thead><tr><th>model</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    if not present or not note:
        return table
    return table + (
        '<p class="note">under each baseline value: fine-tuned minus baseline, green where the fine-tuned model '
        "is better.</p>"
    )


def _intervals(rec: RunRecord, final: dict[str, Any]) -> str:
    intervals = (rec.evaluation or {}).get("intervals")
    if not isinstance(intervals, dict) or not any(isinstance(v, dict) and v for v in intervals.values()):
        return missing_note("none recorded in evaluation.json (see evaluation.bootstrap in the recipe).")
    body = []
    for split, table in intervals.items():
        if not isinstance(table, dict):
            continue
        for key, iv in table.items():
            if not isinstance(iv, dict):
                continue
            value = scores(final.get(split)).get(key)
            confidence = finite(iv.get("confidence"))
            body.append(
                f'<tr><td>{esc(split)}</td><td>{esc(key)}</td><td class="num">{metric_html(value)}</td>'
                f'<td class="num">{metric_html(iv.get("low"))} – {metric_html(iv.get("high"))}</td>'
                f'<td class="num">{esc(f"{confidence:.0%}" if confidence is not None else "—")}</td>'
                f'<td class="num">{esc(fmt(iv.get("resamples")))}</td></tr>'
            )
    return (
        '<table><thead><tr><th>split</th><th>metric</th><th class="num">value</th><th class="num">interval</th>'
        '<th class="num">confidence</th><th class="num">resamples</th></tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
        '<p class="note">bootstrap percentile intervals: the rows resampled with replacement, the metric computed '
        "again on each resample.</p>"
    )


def _source_table(splits: list[str], final: dict[str, Any]) -> str:
    keys = list(dict.fromkeys(k for s in splits for k in scores(final[s])))
    head = "".join(f'<th class="num">{esc(k)}</th>' for k in keys)
    body = "".join(
        f"<tr><th>{esc(s)}</th>"
        + "".join(f'<td class="num">{metric_html(scores(final[s]).get(k))}</td>' for k in keys)
        + "</tr>"
        for s in splits
    )
    return f"<table><thead><tr><th>split/source</th>{head}</tr></thead><tbody>{body}</tbody></table>"


def _confusion(rec: RunRecord, matrices: dict[str, dict[str, Any]]) -> str:
    if not matrices:
        return missing_note("not recorded (only classifiers with evaluation.json have one).")
    out = []
    for split in split_order(matrices):
        table = matrices[split]
        labels = table.get("labels") or task_labels(rec.model_meta) or []
        out.append(heat_table(labels, table["matrix"], caption=f"{split}: rows true, columns predicted"))
    return '<div class="row">' + "".join(out) + "</div>"
