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


def shows_rewarded(rec: RunRecord) -> bool:
    """Whether the run scored held-out answers with rewards (a run of trainer grpo)."""
    return bool((rec.evaluation or {}).get("reward_examples"))


def section_rewarded(rec: RunRecord) -> str:
    """Held-out prompts with the base and the tuned model's answers and what each reward gave them
    (evaluation.json `reward_examples`, on the test split where there is one)."""
    found = (rec.evaluation or {}).get("reward_examples") or {}
    split = "test" if "test" in found else next(iter(found), None)
    rows = found.get(split) or []
    if not rows:
        return missing_note("no rewarded answers recorded.")
    before = any("before" in row for row in rows)
    columns = ["prompt", "reference", *(["before training (base model)"] if before else []), "after training"]
    body = []
    for row in rows:
        cells = [
            f"<pre>{esc(clip(row.get('prompt', ''), 2000))}</pre>",
            f"<pre>{esc(clip(str(row.get('reference', '')), 500))}</pre>",
        ]
        sides = (("before", "before_scores"),) if before else ()
        for answer, scores in (*sides, ("after", "after_scores")):
            cells.append(f"<pre>{esc(clip(row.get(answer, ''), 2000))}</pre>{_scores(row.get(scores) or {})}")
        body.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    head = "<thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr></thead>"
    note = f'<p class="note">the first {len(rows)} {esc(split)} prompts, greedy answers, each reward\'s score</p>'
    return f'{note}<table class="samples">{head}<tbody>{"".join(body)}</tbody></table>'


def _scores(found: dict) -> str:
    parts = [
        f"{name} {'—' if value is None else format(value, '.3g')}"
        for name, value in (found.get("scores") or {}).items()
    ]
    total = found.get("reward")
    if total is not None:
        parts.append(f"total {total:.3g}")
    if found.get("passed") is not None:
        parts.append("passed" if found["passed"] else "failed")
    return f'<p class="note">{esc("; ".join(parts))}</p>' if parts else ""
