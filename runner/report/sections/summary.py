"""The summary card at the top of the report: the answer first.

What was trained (task, model, strategy, data), how the fine-tuned model scored on the test split next
to its baselines (with its confidence intervals), the audits' verdicts, the diagnosis in one sentence,
and where the model is and how to load it. Every line reads the same records as the detail sections
below it, through `runner.report.run_record`, and says "not recorded" where a file is missing.
"""

from __future__ import annotations

import re
from pathlib import Path

from runner.components.models import HEADS
from runner.report.run_record import (
    RunRecord,
    audit_entries,
    baselines,
    data_sources,
    describe_source,
    interval_of,
    main_splits,
    scores,
    split_sizes,
)
from runner.report.sections.pieces import audit_badge, badge, kv_table, missing_note
from runner.report.sections.provenance import component
from runner.report.sections.results import comparison_table
from runner.report.sections.training import VERDICT_BADGE
from runner.report.values import esc

MAX_METRICS = 4
NOT_RECORDED = '<span class="missing">not recorded</span>'


def section_summary(rec: RunRecord) -> str:
    """The summary card: what ran, the test results against the baselines, audits, diagnosis, the model."""
    facts = [
        ("task", _component(rec, "task")),
        ("model", _component(rec, "model", "path", "architecture")),
        ("strategy", _component(rec, "strategy", "r")),
        ("data", _data(rec)),
    ]
    cells = "".join(f'<div class="fact"><span class="label">{esc(k)}</span> {v}</div>' for k, v in facts)
    rows = [
        ("diagnosis", _diagnosis(rec)),
        ("audits", _audits(rec)),
        ("model", _model_path(rec)),
        ("load it", _load(rec)),
    ]
    return f'<div class="facts">{cells}</div>{_results(rec)}{kv_table(rows)}'


def _component(rec: RunRecord, name: str, *keys: str) -> str:
    table = rec.section(name)
    recorded = (rec.model_meta or {}).get("strategy")
    if not table and name == "strategy" and recorded:
        table = {"type": recorded}  # the model's record, where the recipe is missing
    return component(table, *keys) if table else NOT_RECORDED


def _data(rec: RunRecord) -> str:
    sources = [describe_source(s, rows=False) for s in data_sources(rec)]
    if not sources:
        return NOT_RECORDED
    text = esc("; ".join(sources[:3]) + (f" and {len(sources) - 3} more" if len(sources) > 3 else ""))
    sizes = split_sizes(rec)
    if sizes:
        text += ' <span class="note">' + esc(", ".join(f"{k} {v:,}" for k, v in sizes.items())) + " rows</span>"
    return text


def headline_metric(rec: RunRecord, split: str, keys: list[str]) -> str | None:
    """The metric the run is judged by: the one compared with guessing (evaluation.json), else the one
    the diagnosis picked the best point by, else the first with an interval, else the first that is not
    a loss."""
    against = (rec.evaluation or {}).get("against_majority")
    best = (rec.diagnosis or {}).get("best")
    picks = [
        against.get("metric") if isinstance(against, dict) else None,
        best.get("metric") if isinstance(best, dict) else None,
        *(k for k in keys if interval_of(rec, split, k)),
        *(k for k in keys if rec.greater_is_better(k)),
        *keys,
    ]
    return next((k for k in picks if isinstance(k, str) and k in keys and k != "loss"), keys[0] if keys else None)


def _results(rec: RunRecord) -> str:
    final = rec.final_metrics()
    splits = main_splits(final)
    if not splits:
        return "<h3>Results</h3>" + missing_note("not recorded: the run has no final evaluation.")
    split = "test" if "test" in splits else splits[-1]
    ours = scores(final[split])
    rows = baselines(rec)
    keys = list(dict.fromkeys([*ours, *(k for b in rows if isinstance(b.get(split), dict) for k in scores(b[split]))]))
    first = headline_metric(rec, split, keys)
    ordered = list(dict.fromkeys([k for k in [first] if k] + [k for k in keys if interval_of(rec, split, k)] + keys))
    size = split_sizes(rec).get(split)
    where = f"{split} split" + (f", {size:,} rows" if size else "")
    if split != "test":
        where += "; no test split was evaluated"
    if rec.evaluation is None:
        note = "baselines not recorded (no evaluation.json)"
    elif not rows:
        note = "no baselines were evaluated"
    else:
        note = "under each baseline: fine-tuned minus baseline, green where the fine-tuned model is better"
    more = f"; {len(ordered) - MAX_METRICS} more metrics under Results" if len(ordered) > MAX_METRICS else ""
    return (
        f'<h3>Fine-tuned model against its baselines <span class="note">({esc(where)})</span></h3>'
        + comparison_table(rec, split, final[split], rows, keys=ordered[:MAX_METRICS], note=False)
        + f'<p class="note">{esc(note + more)}.</p>'
    )


def first_sentence(text: str) -> str:
    """The first sentence of a text (all of it when it has one)."""
    return re.split(r"(?<=[.!?])\s+(?=[A-Z])", text.strip(), maxsplit=1)[0]


def _diagnosis(rec: RunRecord) -> str:
    diagnosis = rec.diagnosis
    if diagnosis is None:
        return NOT_RECORDED
    verdict = str(diagnosis.get("verdict") or "unknown")
    summary = first_sentence(str(diagnosis.get("summary") or ""))
    return f"{badge(verdict, VERDICT_BADGE.get(verdict, 'info'))} {esc(summary)}"


def _audits(rec: RunRecord) -> str:
    entries = audit_entries(rec)
    if entries is None:
        return NOT_RECORDED
    if not entries:
        return '<span class="note">none configured</span>'
    return " ".join(
        f'<span class="audit-verdict">{audit_badge(a.get("passed"))} {esc(a.get("name", "audit"))}</span>'
        for a in entries
    )


def _model_dir(rec: RunRecord) -> Path | None:
    model = rec.path / "model"
    return model if model.is_dir() else None


def _model_path(rec: RunRecord) -> str:
    model = _model_dir(rec)
    if model is None:
        return NOT_RECORDED + ' <span class="note">(no model/ directory: the run did not save one)</span>'
    card = ' <span class="note">with its model card, README.md</span>' if (model / "README.md").is_file() else ""
    return f"<code>{esc(model)}</code>{card}"


def _load(rec: RunRecord) -> str:
    model = _model_dir(rec)
    if model is None:
        return NOT_RECORDED
    meta = rec.model_meta or {}
    head = str(meta.get("head") or "")
    suffix = HEADS.get(head, "AutoModel").removeprefix("AutoModel")
    cls = f"AutoPeftModel{suffix}" if meta.get("adapter") else f"AutoModel{suffix}"
    library = "peft" if meta.get("adapter") else "transformers"
    python = f"from {library} import {cls}; model = {cls}.from_pretrained({str(model)!r})"
    command, flag = ("generate", "--prompt") if head in ("causal_lm", "seq2seq_lm") else ("predict", "--text")
    where = f'"{rec.path}"' if " " in str(rec.path) else str(rec.path)
    shell = f'finetune {command} {where} {flag} "an example"'
    return f"<code>{esc(python)}</code><br><code>{esc(shell)}</code>"
