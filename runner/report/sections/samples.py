"""The generated-samples section: prompts and responses from samples.jsonl, beside the base model's
answers to the same prompts before training where the run measured them."""

from __future__ import annotations

from runner.report.run_record import RunRecord
from runner.report.sections.pieces import clip, missing_note
from runner.report.values import esc

MAX_SAMPLES = 50
# Model heads (runner.components.models.HEADS) that generate no text, so write no samples.jsonl.
NOT_GENERATING = frozenset({"token_classification", "sequence_classification"})


def shows_samples(rec: RunRecord) -> bool:
    """Whether the report has a samples section: when samples.jsonl exists, or the task may write one
    (a classifier's report has none; a run whose model head is not recorded says "not recorded")."""
    if rec.samples is not None:
        return True
    return (rec.model_meta or {}).get("head") not in NOT_GENERATING


def section_samples(rec: RunRecord) -> str:
    """Generated samples: samples.jsonl."""
    if rec.samples is None:
        return missing_note("not recorded: no samples.jsonl (only generating tasks with sample prompts write one).")
    if not rec.samples:
        return missing_note("samples.jsonl is empty.")
    # answers of the base model to the same prompts, measured before training (baseline.json)
    before = any("before" in row for row in rec.samples)
    body = []
    for row in rec.samples[:MAX_SAMPLES]:
        answer = row.get("response", row.get("completion", ""))
        cells = [clip(row.get("prompt", ""), 2000), *([clip(row.get("before", ""), 4000)] if before else [])]
        cells.append(clip(answer, 4000))
        body.append("<tr>" + "".join(f"<td><pre>{esc(cell)}</pre></td>" for cell in cells) + "</tr>")
    more = (
        f'<p class="note">the first {MAX_SAMPLES} of {len(rec.samples)}</p>' if len(rec.samples) > MAX_SAMPLES else ""
    )
    columns = ["prompt", "before training (base model)", "after training"] if before else ["prompt", "response"]
    head = "<thead><tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr></thead>"
    return f'<table class="samples">{head}<tbody>{"".join(body)}</tbody></table>{more}'
