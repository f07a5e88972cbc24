"""The data section: split sizes, the label distribution (chart and table) and token-length histograms."""

from __future__ import annotations

from typing import Any

from runner.report.charts import bar_chart, histogram
from runner.report.run_record import RunRecord, split_sizes, task_labels
from runner.report.sections.pieces import cell, missing_note
from runner.report.values import esc, fmt
from runner.storage.rundir import finite

MAX_LABELS = 40


def _label_order(rec: RunRecord, labels: dict[str, dict[str, Any]]) -> list[str]:
    seen = [str(x) for x in task_labels(rec.model_meta) or []]
    for counts in labels.values():
        seen += [str(k) for k in counts]
    return list(dict.fromkeys(seen))


def section_data(rec: RunRecord) -> str:
    """Split sizes, label distribution and token-length histograms: data_stats.json."""
    sizes = split_sizes(rec)
    stats = rec.data_stats or {}
    out = []
    if sizes:
        total = sum(sizes.values())
        head = "".join(f'<th class="num">{esc(s)}</th>' for s in sizes)
        cells = "".join(f'<td class="num">{v:,}</td>' for v in sizes.values())
        shares = "".join(f'<td class="num">{v / total:.1%}</td>' for v in sizes.values()) if total else ""
        out.append(f"<table><thead><tr><th></th>{head}</tr></thead><tbody><tr><th>rows</th>{cells}</tr>")
        out.append(f"<tr><th>share</th>{shares}</tr></tbody></table>" if shares else "</tbody></table>")
    else:
        out.append(missing_note("split sizes not recorded."))
    if rec.data_stats is None:
        out.append(missing_note("label and token-length statistics not recorded (no data_stats.json)."))
        return "".join(out)
    labels = stats.get("labels")
    if isinstance(labels, dict) and labels:
        out.append("<h3>Label distribution</h3>")
        out.append(_label_chart(rec, {s: c for s, c in labels.items() if isinstance(c, dict)}))
    lengths = stats.get("lengths")
    max_length = finite(stats.get("max_length"))
    if isinstance(lengths, dict) and lengths:
        title = "Token lengths" + (f" (max_length {fmt(int(max_length))})" if max_length is not None else "")
        out.append(f"<h3>{esc(title)}</h3>")
        charts, rows = [], []
        for split, info in lengths.items():
            if not isinstance(info, dict):
                continue
            truncated = info.get("truncated")
            size = sizes.get(split)
            share = f" ({truncated / size:.1%})" if isinstance(truncated, int) and size else ""
            charts.append(
                histogram(
                    info.get("bins") or [],
                    info.get("counts") or [],
                    title=f"{split}: {fmt(truncated)} truncated",
                    x_label="tokens",
                    marker=max_length,
                    marker_label=f"max_length {fmt(int(max_length))}" if max_length is not None else "",
                )
            )
            rows.append(
                f"<tr><th>{esc(split)}</th>"
                + "".join(cell(info.get(k)) for k in ("mean", "median", "p95", "max"))
                + f'<td class="num">{esc(fmt(truncated))}{esc(share)}</td></tr>'
            )
        # the histograms and their table share one row, so that a lone histogram does not take a row
        out.append('<div class="row">' + "".join(c for c in charts if c))
        out.append(
            '<table><thead><tr><th>split</th><th class="num">mean</th><th class="num">median</th>'
            '<th class="num">p95</th><th class="num">max</th><th class="num">truncated</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>"
        )
    elif not labels:
        out.append(missing_note("no label or length statistics in data_stats.json."))
    return "".join(out)


def _label_chart(rec: RunRecord, labels: dict[str, dict[str, Any]]) -> str:
    order = _label_order(rec, labels)
    splits = list(labels)
    totals = {s: sum(v for v in labels[s].values() if isinstance(v, int | float)) for s in splits}
    shown = order[:MAX_LABELS]

    def share(split: str, label: str) -> float | None:
        count = finite(labels[split].get(label))
        return count / totals[split] if count is not None and totals[split] else None

    def hover(g: int, s: int) -> str:
        split, label = splits[s], shown[g]
        count = labels[split].get(label, 0)
        return f"{split} · {label}: {fmt(count)} rows ({(share(split, label) or 0):.1%})"

    chart = bar_chart(
        shown,
        [(s, [share(s, label) for label in shown]) for s in splits],
        title="share of each split's rows",
        y_label="share of rows",
        hover=hover,
        as_percent=True,
    )
    head = "".join(f'<th class="num">{esc(s)}</th>' for s in splits)
    body = []
    for label in order:
        cells = "".join(
            f'<td class="num">{esc(fmt(labels[s].get(label, 0)))} <span class="note">'
            f"{(share(s, label) or 0):.1%}</span></td>"
            for s in splits
        )
        body.append(f"<tr><th>{esc(label)}</th>{cells}</tr>")
    more = (
        f'<p class="note">the chart shows the first {MAX_LABELS} of {len(order)} labels</p>'
        if len(order) > MAX_LABELS
        else ""
    )
    table = f"<table><thead><tr><th>label</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f'<div class="side"><div>{chart}{more}</div>{table}</div>'
