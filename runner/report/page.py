"""The run report: one self-contained report.html per run directory.

Everything the run directory records, for a person: what ran (the resolved recipe, its hash, the data
fingerprints, the environment), on what data (split sizes, labels, token lengths), how training went
(loss, validation and learning-rate curves, the diagnosis), and how much to trust the result (the
fine-tuned model next to its baselines, confidence intervals, the confusion matrix, audits, samples).

The page has inline CSS and SVG only: no script, no font or image from elsewhere, so it opens from
disk and prints. Every file is optional: an older, failed or running run gets a report saying
"not recorded" where a file is missing. All recorded text is escaped: recipes and data rows are
user content.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from runner import __version__
from runner.evaluation.evaluator import majority_warning
from runner.report.charts import (
    Marker,
    Series,
    VLine,
    bar_chart,
    esc,
    finite,
    fmt,
    heat_table,
    histogram,
    line_chart,
)
from runner.report.run_record import (
    RunRecord,
    arrow,
    as_number,
    audit_entries,
    audit_verdict,
    baselines,
    compare_better,
    confusion_matrices,
    describe_source,
    flatten,
    interval_of,
    interval_text,
    is_number,
    main_splits,
    metric_text,
    parameters,
    read_run,
    scores,
    source_fingerprints,
    split_order,
    split_sizes,
    task_labels,
)
from runner.storage.rundir import atomic_write

REPORT = "report.html"
MAX_EXAMPLES = 10
MAX_SAMPLES = 50
MAX_LABELS = 40


# -- HTML pieces ---------------------------------------------------------------------------------
def _missing(what: str) -> str:
    return f'<p class="missing">{esc(what)}</p>'


def _kv(rows: Iterable[tuple[str, str]]) -> str:
    """A two-column table; values are HTML already (escape them first)."""
    body = "".join(f'<tr><th scope="row">{esc(k)}</th><td>{v}</td></tr>' for k, v in rows)
    return f'<table class="kv">{body}</table>' if body else ""


def _num(value: Any) -> str:
    number = as_number(value)
    return esc(fmt(number)) if number is not None else esc(value) if value is not None else "—"


def signed_text(delta: float) -> str:
    """A difference with its sign: +0.6100."""
    return f"{delta:+.4f}" if 1e-4 <= abs(delta) < 1000 else f"{delta:+.3g}"


def _metric(value: Any) -> str:
    return esc(metric_text(value)) if as_number(value) is not None else _num(value)


def _badge(text: str, kind: str) -> str:
    return f'<span class="badge {kind}">{esc(text)}</span>'


STATE_BADGE = {"completed": "pass", "running": "run", "interrupted": "warn", "failed": "fail"}
VERDICT_BADGE = {"good fit": "pass", "over-fitting": "fail", "under-fitting": "warn"}


def _audit_badge(passed: Any) -> str:
    verdict = audit_verdict(passed)
    return _badge(verdict, verdict.lower())


def _clip(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cell(value: Any) -> str:
    if is_number(value):
        return f'<td class="num">{_num(value)}</td>'
    return f"<td>{esc(_clip(value))}</td>"


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def duration(seconds: float | None) -> str:
    """Seconds as '1 min 42 s' or '2 h 05 min'."""
    if seconds is None or seconds < 0:
        return "—"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


# -- sections ------------------------------------------------------------------------------------
def _header(rec: RunRecord) -> str:
    status = rec.status or {}
    description = rec.section("run").get("description")
    started, finished = _parse_time(status.get("started")), _parse_time(status.get("finished"))
    took = f" ({duration((finished - started).total_seconds())})" if started and finished else ""
    rows = [
        ("status", _badge(rec.state, STATE_BADGE.get(rec.state, "info"))),
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
    out.append(_kv(rows))
    if status.get("error"):
        out.append(f'<div class="error"><strong>error:</strong> {esc(status["error"])}</div>')
    warning = majority_warning((rec.evaluation or {}).get("against_majority"))
    if warning:
        out.append(f'<div class="error"><strong>no better than guessing:</strong> {esc(warning)}</div>')
    if rec.status is None:
        out.append(_missing("status.json not recorded: the run may not have started."))
    for problem in rec.problems:
        out.append(f'<div class="error">{esc(problem)}</div>')
    return '<header class="top">' + "".join(out) + "</header>"


def _component(table: dict[str, Any], *keys: str) -> str:
    kind = table.get("type", "—")
    details = [f"{k}={_clip(table[k], 60)}" for k in keys if table.get(k) not in (None, "", [], {})]
    return esc(kind) + (f' <span class="note">{esc(", ".join(details))}</span>' if details else "")


def section_recipe(rec: RunRecord) -> str:
    """The resolved recipe, its hash, the components, the data sources and their fingerprints."""
    if rec.recipe_text is None:
        return _missing("not recorded: recipe.resolved.toml is missing.")
    env = rec.environment or {}
    actual = rec.recipe_sha256  # set with recipe_text
    recorded = env.get("recipe_sha256")
    sha = f"<code>{esc(recorded or actual)}</code>"
    if recorded and recorded != actual:
        sha += (
            f' <span class="worse">the file changed since the run started (now <code>{esc(actual[:12])}…</code>)</span>'
        )
    elif not recorded:
        sha += ' <span class="note">(of the file now; the run recorded none)</span>'
    model = rec.section("model")
    rows = [
        ("recipe sha256", sha),
        ("task", _component(rec.section("task"))),
        ("model", _component(model, "path", "architecture", "revision")),
        ("strategy", _component(rec.section("strategy"), "r", "alpha", "target_modules")),
        ("trainer", _component(rec.section("training"), "learning_rate", "batch_size", "epochs", "max_steps")),
        ("seed", esc(fmt(rec.seed))),
    ]
    out = [_kv(rows), "<h3>Data sources and fingerprints</h3>"]
    pairs = source_fingerprints(rec)
    if not pairs:
        out.append(_missing("not recorded"))
    else:
        out.append("<table><thead><tr><th>#</th><th>source</th><th>fingerprint</th></tr></thead><tbody>")
        for i, (src, fp) in enumerate(pairs):
            if fp is None:
                shown = '<span class="missing">not recorded</span>'
            else:
                flat = flatten({k: v for k, v in fp.items() if k != "source"})
                leaves = [(k, v) for k, v in flat if v not in (None, {}, [], "")]
                shown = "<br>".join(
                    f'<code>{esc(k)}</code>: <span class="mono">{esc(_clip(v, 90))}</span>' for k, v in leaves
                )
            name = describe_source(src) if src else (fp or {}).get("source")
            out.append(f"<tr><td>{i}</td><td>{esc(name)}</td><td>{shown}</td></tr>")
        out.append("</tbody></table>")
    out.append(
        '<details class="recipe"><summary>the resolved recipe (recipe.resolved.toml)</summary>'
        f"<pre>{esc(rec.recipe_text)}</pre></details>"
    )
    return "".join(out)


def _device(device: Any) -> str:
    if not isinstance(device, dict):
        return str(device) if device else "not recorded"
    if device.get("gpus"):
        gpus = device["gpus"]
        names = {g: gpus.count(g) for g in gpus}
        text = ", ".join(f"{n} × {g}" for g, n in names.items())
        return f"CUDA: {text}" + (" (bf16)" if device.get("bf16") else "")
    return "CPU" if device.get("cuda") is False else json.dumps(device)


def section_environment(rec: RunRecord) -> str:
    """Versions, device, threads, world size, git commit: environment.json."""
    env = rec.environment
    if env is None:
        return _missing("not recorded: environment.json is missing (the run stopped before training began).")
    packages = env.get("packages") if isinstance(env.get("packages"), dict) else {}
    device = env.get("device")
    threads = env.get("torch_threads", device.get("threads") if isinstance(device, dict) else None)
    git = env.get("git")
    if isinstance(git, dict) and git.get("commit"):
        git_text = f"<code>{esc(git['commit'])}</code>" + (" (with uncommitted changes)" if git.get("dirty") else "")
    else:
        git_text = '<span class="note">not a git repository</span>'
    distributed = env.get("distributed") if isinstance(env.get("distributed"), dict) else {}
    params = parameters(rec)
    rows = [
        ("python", esc(env.get("python", "—"))),
        *((name, esc(packages.get(name) or "not installed")) for name in ("torch", "transformers", "peft")),
        ("datasets, tokenizers", esc(f"{packages.get('datasets') or '—'}, {packages.get('tokenizers') or '—'}")),
        ("device", esc(_device(device))),
        ("threads", esc(fmt(threads))),
        (
            "world size",
            esc(fmt(env.get("world_size", 1)))
            + (f" ({esc(distributed['engine'])})" if distributed.get("engine") else ""),
        ),
        ("platform", esc(env.get("platform", "—"))),
        ("finetune-runner", esc(env.get("runner", "—"))),
        ("git", git_text),
        ("max length", esc(fmt(env.get("max_length")))),
        ("parameters", esc(_parameter_text(params)) if params else "—"),
    ]
    if env.get("command"):
        rows.append(("command", f"<code>{esc(' '.join(map(str, env['command'])))}</code>"))
    out = [_kv(rows)]
    plugins = env.get("plugins")
    if isinstance(plugins, dict) and plugins:
        body = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in plugins.items())
        out.append(f"<details><summary>plugins ({len(plugins)})</summary><table>{body}</table></details>")
    return "".join(out)


def _parameter_text(params: dict[str, Any]) -> str:
    total, trainable = params.get("total"), params.get("trainable")
    if isinstance(total, int) and isinstance(trainable, int) and total:
        return f"{trainable:,} trainable of {total:,} ({trainable / total:.2%})"
    return ", ".join(f"{k} {fmt(v)}" for k, v in params.items())


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
        out.append(_missing("split sizes not recorded."))
    if rec.data_stats is None:
        out.append(_missing("label and token-length statistics not recorded (no data_stats.json)."))
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
                + "".join(_cell(info.get(k)) for k in ("mean", "median", "p95", "max"))
                + f'<td class="num">{esc(fmt(truncated))}{esc(share)}</td></tr>'
            )
        out.append('<div class="charts">' + "".join(c for c in charts if c) + "</div>")
        out.append(
            '<table><thead><tr><th>split</th><th class="num">mean</th><th class="num">median</th>'
            '<th class="num">p95</th><th class="num">max</th><th class="num">truncated</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
    elif not labels:
        out.append(_missing("no label or length statistics in data_stats.json."))
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
    return f"{chart}{more}<table><thead><tr><th>label</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


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
            ("mean training loss", _num(summary.get("train_loss"))),
            ("training time", esc(duration(finite(summary.get("train_runtime"))))),
            ("samples / second", _num(summary.get("train_samples_per_second"))),
        ]
        out.append(_kv(rows))
    out.append("<h3>Diagnosis</h3>" + _diagnosis(rec))
    if not train and not valid:
        out.append(_missing("curves not recorded: metrics.jsonl is missing or has no training logs."))
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
    out.append(f'<div class="charts">{loss_chart}')
    metric_keys = [k for k in dict.fromkeys(k for r in valid for k in scores(r)) if k != "loss"]
    if metric_keys:
        curves = {k: _curve(valid, k, k) for k in metric_keys[:8]}
        metric = best.get("metric") if best else None
        out.append(
            line_chart(
                [Series(k, points) for k, points in curves.items()],
                title="Validation metrics",
                markers=_best_marker(best, metric, curves[metric]) if metric in curves else (),
                width=520,
            )
        )
    lr = _curve(train, "learning_rate", "learning rate")
    out.append(line_chart([Series("learning rate", lr)], title="Learning rate", width=520))
    norms = _curve(train, "grad_norm", "gradient norm")
    out.append(line_chart([Series("gradient norm", norms, "#6b7280")], title="Gradient norm", width=520))
    out.append("</div>")
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
        return _missing("not recorded (no diagnosis in evaluation.json).")
    verdict = str(diagnosis.get("verdict") or "unknown")
    text = f"<p>{_badge(verdict, VERDICT_BADGE.get(verdict, 'info'))} {esc(diagnosis.get('summary') or '')}</p>"
    best = diagnosis.get("best")
    if isinstance(best, dict):
        metric = best.get("metric")
        by = f" by {metric} ({fmt(as_number(best.get(metric)))})" if metric and metric != "loss" else ""
        epoch = f", epoch {fmt(finite(best.get('epoch')), 3)}" if finite(best.get("epoch")) is not None else ""
        loss = fmt(as_number(best.get("validation_loss")))
        text += f'<p class="note">best point{esc(by)}: step {esc(fmt(best.get("step")))}{esc(epoch)}, '
        text += f"validation loss {esc(loss)}; marked on the curves below.</p>"
    return text


def section_results(rec: RunRecord) -> str:
    """Fine-tuned against each baseline per split, intervals, per-source scores, confusion matrices."""
    final = rec.final_metrics()
    if not final and rec.evaluation is None:
        return _missing("not recorded: the run has no final evaluation (metrics.json and evaluation.json are missing).")
    out = []
    rows = baselines(rec)
    if rec.evaluation is None:
        out.append(_missing("baselines not recorded (no evaluation.json): the fine-tuned model's metrics alone."))
    elif not rows:
        out.append(_missing("no baselines were evaluated for this run."))
    for split in main_splits(final):
        out.append(f"<h3>{esc(split)}</h3>" + _comparison_table(rec, split, final[split], rows))
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


def _comparison_table(rec: RunRecord, split: str, finetuned: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    ours = scores(finetuned)
    present = [b for b in rows if isinstance(b.get(split), dict)]
    keys = list(dict.fromkeys([*ours, *(k for b in present for k in scores(b[split]))]))
    if not keys:
        return _missing("no metrics recorded for this split.")
    head = "".join(
        f'<th class="num" title="{"higher" if rec.greater_is_better(k) else "lower"} is better">{esc(k)} '
        f'<span class="arrow">{arrow(rec.greater_is_better(k))}</span></th>'
        for k in keys
    )
    body = ['<tr class="ours"><th scope="row">fine-tuned</th>']
    for k in keys:
        interval = interval_of(rec, split, k)
        extra = f'<span class="interval">{esc(interval_text(interval))}</span>' if interval else ""
        body.append(f'<td class="num">{_metric(ours.get(k))}{extra}</td>')
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
            body.append(f'<td class="num">{_metric(theirs[k])}{diff}</td>')
        body.append("</tr>")
    table = f'<table class="results"><thead><tr><th>model</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    if not present:
        return table
    return table + (
        '<p class="note">under each baseline value: fine-tuned minus baseline, green where the fine-tuned model '
        "is better.</p>"
    )


def _intervals(rec: RunRecord, final: dict[str, Any]) -> str:
    intervals = (rec.evaluation or {}).get("intervals")
    if not isinstance(intervals, dict) or not any(isinstance(v, dict) and v for v in intervals.values()):
        return _missing("none recorded in evaluation.json (see evaluation.bootstrap in the recipe).")
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
                f'<tr><td>{esc(split)}</td><td>{esc(key)}</td><td class="num">{_metric(value)}</td>'
                f'<td class="num">{_metric(iv.get("low"))} – {_metric(iv.get("high"))}</td>'
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
        + "".join(f'<td class="num">{_metric(scores(final[s]).get(k))}</td>' for k in keys)
        + "</tr>"
        for s in splits
    )
    return f"<table><thead><tr><th>split/source</th>{head}</tr></thead><tbody>{body}</tbody></table>"


def _confusion(rec: RunRecord, matrices: dict[str, dict[str, Any]]) -> str:
    if not matrices:
        return _missing("not recorded (only classifiers with evaluation.json have one).")
    out = []
    for split in split_order(matrices):
        table = matrices[split]
        labels = table.get("labels") or task_labels(rec.model_meta) or []
        out.append(heat_table(labels, table["matrix"], caption=f"{split}: rows true, columns predicted"))
    return '<div class="charts">' + "".join(out) + "</div>"


def section_audits(rec: RunRecord) -> str:
    """Each audit's verdict, summary, thresholds, figures and examples: audits.json."""
    entries = audit_entries(rec)
    if entries is None:
        return _missing("not recorded: no audits.json (a run from before audits existed, or one that stopped early).")
    if not entries:
        return _missing("no audits were configured for this run.")
    passed = sum(1 for a in entries if a.get("passed") is True)
    failed = sum(1 for a in entries if a.get("passed") is False)
    other = len(entries) - passed - failed
    noun = "audit" if len(entries) == 1 else "audits"
    out = [f"<p>{len(entries)} {noun}: {passed} passed, {failed} failed, {other} informational.</p>"]
    for a in entries:
        kind = (
            f' <span class="note">({esc(a["type"])})</span>' if a.get("type") and a.get("type") != a.get("name") else ""
        )
        out.append(
            f'<div class="audit"><h3>{_audit_badge(a.get("passed"))} {esc(a.get("name", "audit"))}{kind}</h3>'
            f"<p>{esc(a.get('summary') or '')}</p>"
        )
        thresholds = a.get("thresholds")
        if isinstance(thresholds, dict) and thresholds:
            out.append("<h4>thresholds</h4>" + _kv((k, esc(_clip(v, 120))) for k, v in flatten(thresholds)))
        out.append(_figures(a.get("figures")))
        out.append(_examples(a.get("examples")))
        out.append("</div>")
    return "".join(out)


def _figures(figures: Any) -> str:
    if not isinstance(figures, dict) or not figures:
        return ""
    base, tuned = figures.get("base"), figures.get("finetuned")
    if isinstance(tuned, dict) and (base is None or isinstance(base, dict)):
        b, t = dict(flatten(base or {})), dict(flatten(tuned))
        keys = list(dict.fromkeys([*b, *t]))
        body = "".join(f"<tr><th>{esc(k)}</th>{_cell(b.get(k, '—'))}{_cell(t.get(k, '—'))}</tr>" for k in keys)
        return (
            '<h4>figures</h4><table><thead><tr><th></th><th class="num">base model</th>'
            f'<th class="num">fine-tuned</th></tr></thead><tbody>{body}</tbody></table>'
        )
    if all(isinstance(v, dict) and v and not any(isinstance(x, dict) for x in v.values()) for v in figures.values()):
        # one row per part (e.g. per split), one column per figure
        columns = list(dict.fromkeys(k for v in figures.values() for k in v))
        head = "".join(f'<th class="num">{esc(c)}</th>' for c in columns)
        body = "".join(
            f"<tr><th>{esc(k)}</th>" + "".join(_cell(v.get(c, "—")) for c in columns) + "</tr>"
            for k, v in figures.items()
        )
        return f"<h4>figures</h4><table><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>"
    body = "".join(f"<tr><th>{esc(k)}</th>{_cell(v)}</tr>" for k, v in flatten(figures))
    return f'<h4>figures</h4><table class="kv">{body}</table>'


def _examples(examples: Any) -> str:
    if not isinstance(examples, list) or not examples:
        return ""
    rows = [e if isinstance(e, dict) else {"example": e} for e in examples[:MAX_EXAMPLES]]
    columns = list(dict.fromkeys(k for r in rows for k in r))[:8]
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(r.get(c, "")) for c in columns) + "</tr>" for r in rows)
    more = f'<p class="note">and {len(examples) - MAX_EXAMPLES} more</p>' if len(examples) > MAX_EXAMPLES else ""
    return f'<h4>examples</h4><table class="examples"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}'


def section_samples(rec: RunRecord) -> str:
    """Generated samples: samples.jsonl."""
    if rec.samples is None:
        return _missing("not recorded: no samples.jsonl (only generating tasks with sample prompts write one).")
    if not rec.samples:
        return _missing("samples.jsonl is empty.")
    body = []
    for row in rec.samples[:MAX_SAMPLES]:
        answer = row.get("response", row.get("completion", ""))
        prompt = esc(_clip(row.get("prompt", ""), 2000))
        body.append(f"<tr><td><pre>{prompt}</pre></td><td><pre>{esc(_clip(answer, 4000))}</pre></td></tr>")
    more = (
        f'<p class="note">the first {MAX_SAMPLES} of {len(rec.samples)}</p>' if len(rec.samples) > MAX_SAMPLES else ""
    )
    head = "<thead><tr><th>prompt</th><th>response</th></tr></thead>"
    return f'<table class="samples">{head}<tbody>{"".join(body)}</tbody></table>{more}'


SECTIONS: list[tuple[str, str, Callable[[RunRecord], str]]] = [
    ("recipe", "Recipe and provenance", section_recipe),
    ("environment", "Environment", section_environment),
    ("data", "Data", section_data),
    ("training", "Training", section_training),
    ("results", "Results", section_results),
    ("audits", "Audits", section_audits),
    ("samples", "Generated samples", section_samples),
]


def _section(key: str, title: str, render: Callable[[RunRecord], str], rec: RunRecord) -> str:
    try:
        body = render(rec)
    except Exception as exc:  # a record in a shape this version does not know: say so, show the rest
        body = f'<div class="error">this section could not be shown: {esc(type(exc).__name__)}: {esc(exc)}</div>'
    return f'<section id="{key}"><h2>{esc(title)}</h2>{body}</section>'


def render_report(rec: RunRecord) -> str:
    """The whole report page for one run."""
    nav = "".join(f'<a href="#{key}">{esc(title)}</a>' for key, title, _ in SECTIONS)
    sections = "".join(_section(key, title, render, rec) for key, title, render in SECTIONS)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        # No script and nothing fetched from elsewhere, even if recorded text slipped past escaping.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(rec.name)}: finetune-runner report</title><style>{CSS}</style></head><body>"
        f"{_header(rec)}<nav>{nav}</nav><main>{sections}</main>"
        f"<footer>report written by finetune-runner {esc(__version__)} on {esc(stamp)} from the files of "
        f"<code>{esc(rec.path)}</code>; rebuild it with <code>finetune report {esc(rec.path)}</code></footer>"
        "</body></html>\n"
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
header.top, nav, main, footer { max-width: 1180px; margin: 0 auto; padding: 0 24px; }
header.top { padding-top: 24px; }
h1 { font-size: 26px; margin: 0 0 4px; }
.lead { font-size: 15px; color: #374151; margin: 0 0 10px; }
nav { display: flex; flex-wrap: wrap; gap: 6px 16px; padding-top: 8px; padding-bottom: 4px; }
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
.charts { display: flex; flex-wrap: wrap; gap: 10px 18px; align-items: flex-start; }
svg.chart { max-width: 100%; height: auto; }
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
