"""The training section: the training summary, the diagnosis, and the loss, validation-metric,
learning-rate and gradient-norm curves.
"""

from __future__ import annotations

from typing import Any

from runner.report.chart_frame import PALETTE
from runner.report.charts import Marker, Series, VLine, line_chart
from runner.report.run_record import RunRecord, as_number, is_number, scores
from runner.report.sections.pieces import badge, duration, kv_table, missing_note, number_html
from runner.report.values import esc, fmt
from runner.storage.rundir import finite

VERDICT_BADGE = {"good fit": "pass", "over-fitting": "fail", "under-fitting": "warn"}
MAX_METRIC_CHARTS = 9
SMALL = {"width": 360, "height": 220}  # the small charts, three to a row


def _curve(records: list[dict[str, Any]], key: str, name: str) -> list[tuple[float, Any, str]]:
    points = []
    for r in records:
        value = r.get(key)
        if finite(r.get("step")) is None or not is_number(value):
            continue
        epoch = finite(r.get("epoch"))
        epoch = f" · epoch {fmt(epoch, 3)}" if epoch is not None else ""
        points.append((r["step"], value, f"step {r['step']}{epoch} · {name} {fmt(as_number(value))}"))
    return sorted(points, key=lambda p: p[0])


def section_training(rec: RunRecord) -> str:
    """Training summary, the diagnosis, and the loss, validation-metric and learning-rate curves."""
    log = [r for r in rec.log if not r.get("final")]
    train = [r for r in log if r.get("split") == "train" and "loss" in r]
    valid = [r for r in log if r.get("split") == "validation"]
    out = []
    summary = (rec.metrics or {}).get("train")
    if isinstance(summary, dict):
        rows = [
            ("steps", esc(fmt(summary.get("global_step")))),
            ("epochs", esc(fmt(finite(summary.get("epoch")), 3))),
            ("mean training loss", number_html(summary.get("train_loss"))),
            ("training time", esc(duration(finite(summary.get("train_runtime"))))),
            ("samples / second", number_html(summary.get("train_samples_per_second"))),
        ]
        out.append(kv_table(rows))
    out.append("<h3>Diagnosis</h3>" + _diagnosis(rec))
    if not train and not valid:
        out.append(missing_note("curves not recorded: metrics.jsonl is missing or has no training logs."))
        return "".join(out)
    diagnosis = rec.diagnosis or {}
    best = diagnosis.get("best") if isinstance(diagnosis.get("best"), dict) else None
    val_loss = _curve(valid, "loss", "validation loss")
    vlines = []
    over = diagnosis.get("overfitting_from")
    if isinstance(over, dict) and finite(over.get("step")) is not None:
        vlines.append(VLine(over["step"], f"over-fitting from step {over['step']}"))
    loss_chart = line_chart(
        [Series("training loss", _curve(train, "loss", "training loss")), Series("validation loss", val_loss)],
        title="Loss",
        y_label="loss",
        markers=_best_marker(best, "validation_loss", val_loss),
        vlines=vlines,
        width=1060,
        height=320,
    )
    out.append(f'<div class="charts"><div class="wide">{loss_chart}</div>')
    # One small chart per validation metric: on shared axes their lines (often within 0.01 of each
    # other, as accuracy and the F1s are) would lie on top of one another.
    metric_keys = [k for k in dict.fromkeys(k for r in valid for k in scores(r)) if k != "loss"]
    metric = best.get("metric") if best else None
    for i, key in enumerate(metric_keys[:MAX_METRIC_CHARTS]):
        curve = _curve(valid, key, f"validation {key}")
        out.append(
            line_chart(
                [Series(f"validation {key}", curve, PALETTE[(i + 2) % len(PALETTE)])],
                title=f"validation {key}",
                markers=_best_marker(best, metric, curve) if key == metric else (),
                **SMALL,
            )
        )
    lr = _curve(train, "learning_rate", "learning rate")
    out.append(line_chart([Series("learning rate", lr)], title="Learning rate", **SMALL))
    norms = _curve(train, "grad_norm", "gradient norm")
    out.append(line_chart([Series("gradient norm", norms, "#6b7280")], title="Gradient norm", **SMALL))
    out.append("</div>")
    if len(metric_keys) > MAX_METRIC_CHARTS:
        out.append(f'<p class="note">charts of the first {MAX_METRIC_CHARTS} of {len(metric_keys)} metrics</p>')
    if not val_loss:
        out.append('<p class="note">no validation loss was logged during training.</p>')
    return "".join(out)


def _best_marker(best: dict[str, Any] | None, key: str | None, curve: list[tuple[float, Any, str]]) -> list[Marker]:
    """The diagnosis's best point on a curve (its value from the diagnosis, else from the curve)."""
    if not best or not key or finite(best.get("step")) is None:
        return []
    step = best["step"]
    y = finite(best.get(key))
    if y is None:
        y = next((finite(v) for x, v, _ in curve if x == step), None)
    if y is None:
        return []
    epoch = f", epoch {fmt(finite(best.get('epoch')), 3)}" if finite(best.get("epoch")) is not None else ""
    name = key.replace("_", " ")
    return [Marker(step, y, "best", f"best point: step {step}{epoch}, {name} {fmt(y)}")]


def _diagnosis(rec: RunRecord) -> str:
    diagnosis = rec.diagnosis
    if diagnosis is None:
        return missing_note("not recorded (no diagnosis in evaluation.json).")
    verdict = str(diagnosis.get("verdict") or "unknown")
    text = f"<p>{badge(verdict, VERDICT_BADGE.get(verdict, 'info'))} {esc(diagnosis.get('summary') or '')}</p>"
    best = diagnosis.get("best")
    if isinstance(best, dict):
        metric = best.get("metric")
        by = f" by {metric} ({fmt(as_number(best.get(metric)))})" if metric and metric != "loss" else ""
        epoch = f", epoch {fmt(finite(best.get('epoch')), 3)}" if finite(best.get("epoch")) is not None else ""
        loss = fmt(as_number(best.get("validation_loss")))
        text += f'<p class="note">best point{esc(by)}: step {esc(fmt(best.get("step")))}{esc(epoch)}, '
        text += f"validation loss {esc(loss)}; marked on the curves below.</p>"
    return text
