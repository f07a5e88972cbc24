"""The model card: `model/README.md` in the Hugging Face convention.

YAML front matter (library, base model, pipeline tag, tags, `model-index` results) that the Hub reads,
then what a person deciding whether to use the model needs: what it is, what it was trained on and
how, how it scored next to its baselines, what the audits found, its limitations, how to load it,
and how to train it again. Everything comes from the run directory's records; what a run did not
record is left out or called "not recorded", never guessed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from runner.errors import format_key
from runner.recipe.keys import leaves
from runner.report.card_loading import how_to_load
from runner.report.card_text import md, md_code, md_fenced, md_table, to_yaml
from runner.report.run_record import (
    RunRecord,
    arrow,
    audit_entries,
    audit_verdict,
    baselines,
    data_sources,
    describe_source,
    interval_of,
    interval_text,
    main_splits,
    metric_text,
    parameters,
    read_json_object,
    read_run,
    recipe_value,
    scores,
    source_fingerprints,
    split_sizes,
    task_labels,
)
from runner.storage.rundir import atomic_write, finite

CARD = "README.md"

PIPELINE_TAGS = {
    "sequence_classification": "text-classification",
    "causal_lm": "text-generation",
    "token_classification": "token-classification",
    "seq2seq_lm": "text2text-generation",
}
# Training options that say how the model was trained (the rest is bookkeeping: logging, checkpoints).
BOOKKEEPING = frozenset(
    {"type", "log_every", "keep_checkpoints", "keep_best", "dataloader_workers", "eval_on_start", "group_by_length"}
)


# -- what the card says --------------------------------------------------------------------------
def _meta(rec: RunRecord, model_dir: Path) -> dict[str, Any]:
    # The model directory's own record: the card may be written into a directory not yet in place.
    found = read_json_object(model_dir, "finetune.json")
    return found if found is not None else rec.model_meta or {}


def _hub_datasets(rec: RunRecord) -> list[str]:
    """The Hub datasets the run read, as its data sources recorded them: under `hub` in their
    fingerprints (environment.json), an id or a list of ids (runner.components.DataSource)."""
    ids: list[str] = []
    for _source, fingerprint in source_fingerprints(rec):
        named = (fingerprint or {}).get("hub")
        ids += [i for i in ([named] if isinstance(named, str) else named or []) if isinstance(i, str)]
    return ids


def _random_init(meta: dict[str, Any]) -> bool:
    """Whether the base model was randomly initialised in the run: its model component named nothing
    that loads it (`Model.base_reference()` None), which finetune.json records as `base_model` null."""
    return "base_model" in meta and meta["base_model"] is None


def _data_words(rec: RunRecord) -> str:
    sources = [describe_source(s, rows=False) for s in data_sources(rec)]
    return "; ".join(sources) if sources else "data not recorded"


def front_matter(rec: RunRecord, meta: dict[str, Any]) -> dict[str, Any]:
    """The card's YAML metadata as a dict."""
    head = str(meta.get("head") or "")
    strategy = str(meta.get("strategy") or rec.section("strategy").get("type") or "")
    front: dict[str, Any] = {"library_name": "peft" if meta.get("adapter") else "transformers"}
    if meta.get("base_model"):
        front["base_model"] = str(meta["base_model"])
    if head in PIPELINE_TAGS:
        front["pipeline_tag"] = PIPELINE_TAGS[head]
    front["tags"] = list(dict.fromkeys(t for t in ("finetune-runner", strategy) if t))
    hub = _hub_datasets(rec)
    if hub:
        front["datasets"] = hub
    results = []
    dataset = {
        "name": hub[0] if len(hub) == 1 else f"{rec.name}: {_data_words(rec)}",
        "type": hub[0] if len(hub) == 1 else "+".join(str(s.get("type", "data")) for s in data_sources(rec)) or "data",
    }
    final = rec.final_metrics()
    for split in main_splits(final):
        metrics = [
            {"type": key, "value": round(float(value), 6), "name": f"{split} {key}"}
            for key, value in scores(final[split]).items()
            if finite(value) is not None
        ]
        if metrics:
            task = {"type": PIPELINE_TAGS.get(head, head or "other")}
            task["name"] = task["type"].replace("-", " ").replace("text2text", "text-to-text").capitalize()
            results.append({"task": task, "dataset": {**dataset, "split": split}, "metrics": metrics})
    if results:
        front["model-index"] = [{"name": rec.name, "results": results}]
    return front


def _description(rec: RunRecord, meta: dict[str, Any]) -> list[str]:
    model = rec.section("model")
    if meta.get("base_model"):
        base = md_code(meta["base_model"])
    elif _random_init(meta):
        config = model.get("config")  # a model built from a config names its architecture and values
        what = md_code(model.get("architecture") or model.get("type") or "?")
        if isinstance(config, dict):
            what += f" model built from a config ({md(', '.join(f'{k}={v}' for k, v in config.items()))})"
        else:
            what += " model"
        base = f"a {what}, randomly initialised"
    else:
        base = "not recorded"
    strategy = rec.section("strategy")
    options = ", ".join(
        f"{k}={recipe_value(v)}" for k, v in strategy.items() if k != "type" and not isinstance(v, dict | list)
    )
    params = parameters(rec)
    lines = [
        f"- **Base model:** {base}",
        f"- **Task:** {md(meta.get('task') or rec.section('task').get('type', 'not recorded'))}"
        + (f" (head {md_code(meta['head'])})" if meta.get("head") else ""),
    ]
    labels = task_labels(meta)
    if labels:
        shown = ", ".join(md(x) for x in labels[:30]) + (f", … ({len(labels)} in all)" if len(labels) > 30 else "")
        lines.append(f"- **Labels:** {shown}")
    lines.append(
        f"- **Fine-tuning strategy:** {md(meta.get('strategy') or strategy.get('type', 'not recorded'))}"
        + (f" ({md(options)})" if options else "")
    )
    total, trainable = params.get("total"), params.get("trainable")
    if isinstance(total, int) and isinstance(trainable, int) and total:
        lines.append(f"- **Parameters:** {trainable:,} trained of {total:,} ({trainable / total:.2%})")
    max_length = meta.get("max_length") or (rec.environment or {}).get("max_length")
    if max_length:
        lines.append(f"- **Maximum input length:** {max_length} tokens (longer inputs are truncated)")
    return lines


def _intended_use(rec: RunRecord, meta: dict[str, Any]) -> list[str]:
    train = split_sizes(rec).get("train")
    rows = f"{train:,} rows" if isinstance(train, int) else "rows"
    what = PIPELINE_TAGS.get(str(meta.get("head")), "the task of its recipe").replace("-", " ")
    return [
        "## Intended use",
        "",
        f"{what.capitalize()} on text like its training data: it was trained on {rows} of {md(_data_words(rec))}. "
        "Use it where inputs resemble those rows, after checking it on data of your own.",
        "",
        "### Out of scope",
        "",
        "- Anything it was not evaluated on: it was not evaluated beyond the data listed below; other domains, "
        "languages, styles or time periods may score much lower.",
        "- Decisions about people without human review: the audits below test what they test, not every harm.",
    ]


def _training_data(rec: RunRecord) -> list[str]:
    lines = ["## Training data", ""]
    pairs = source_fingerprints(rec)
    if not pairs:
        return [*lines, "Not recorded."]
    rows = []
    for src, fp in pairs:
        hashes = [f"{k}: {md_code(v)}" for k, v in _hashes(fp or {})]
        rows.append([md(describe_source(src) if src else "not recorded"), "<br>".join(hashes) or "not recorded"])
    lines.append(md_table(["source", "fingerprint"], rows))
    sizes = split_sizes(rec)
    if sizes:
        lines += ["", "Rows per split: " + ", ".join(f"{md(k)} {v:,}" for k, v in sizes.items()) + "."]
    stats = rec.data_stats or {}
    truncated = ((stats.get("lengths") or {}).get("train") or {}).get("truncated")
    if isinstance(truncated, int) and truncated:
        lines.append(f"{truncated:,} training rows reached max_length ({stats.get('max_length')}) and were truncated.")
    return lines


def _hashes(fingerprint: dict[str, Any]) -> list[tuple[str, Any]]:
    """The content hashes and revisions of a fingerprint by key path (its other keys repeat the recipe)."""
    return [
        (format_key(path, None), value)
        for path, value in leaves(fingerprint)
        if isinstance(value, str) and (re.fullmatch(r"[0-9a-f]{16,}", value) or path[-1] in ("revision", "hub"))
    ]


def _procedure(rec: RunRecord, meta: dict[str, Any]) -> list[str]:
    training = rec.section("training")
    if not training:
        return ["## Training procedure", "", "Not recorded."]
    rows = [
        [md_code(f"training.{k}"), md(recipe_value(v))]
        for k, v in training.items()
        if k not in BOOKKEEPING and not isinstance(v, dict | list) and v is not None
    ]
    env = rec.environment or {}
    extra = [
        ("run.seed", rec.seed),
        ("max_length", meta.get("max_length") or env.get("max_length")),
        ("world size (processes)", env.get("world_size")),
        ("optimizer steps", rec.global_step),
    ]
    rows += [[md(k), md(recipe_value(v))] for k, v in extra if v is not None]
    packages = env.get("packages") if isinstance(env.get("packages"), dict) else {}
    versions = ", ".join(f"{k} {packages[k]}" for k in ("torch", "transformers", "peft") if packages.get(k))
    lines = ["## Training procedure", "", md_table(["setting", "value"], rows)]
    if versions:
        lines += ["", f"Trained with {md(versions)} (python {md(env.get('python', '?'))})."]
    return lines


def _evaluation(rec: RunRecord) -> list[str]:
    lines = ["## Evaluation", ""]
    final = rec.final_metrics()
    if not final:
        return [*lines, "Not recorded: the run has no final evaluation."]
    rows_b = baselines(rec)
    for split in main_splits(final):
        ours = scores(final[split])
        present = [b for b in rows_b if isinstance(b.get(split), dict)]
        header = ["metric", "fine-tuned", *[md(b.get("name", "baseline")) for b in present]]
        rows = []
        for key, value in ours.items():
            cell = metric_text(value)
            interval = interval_of(rec, split, key)
            if interval:
                cell += f" ({interval_text(interval)})"
            theirs = [metric_text(scores(b[split]).get(key)) for b in present]
            rows.append([f"{md(key)} {arrow(rec.greater_is_better(key))}", cell, *theirs])
        lines += [f"### {md(split)} split", "", md_table(header, rows), ""]
    notes = [f"- **{md(b.get('name'))}:** {md(b.get('note'))}" for b in rows_b if b.get("note")]
    if notes:
        lines += ["Baselines, evaluated on the same rows with the same preprocessing:", "", *notes, ""]
    elif rec.evaluation is None:
        lines += ["No baselines were recorded for this run.", ""]
    lines.append("↑: higher is better; ↓: lower is better. Intervals are bootstrap confidence intervals.")
    return lines


def _audits(rec: RunRecord) -> list[str]:
    entries = audit_entries(rec)
    if entries is None:
        return ["## Audits", "", "Not recorded."]
    if not entries:
        return ["## Audits", "", "No audits were configured for this run."]
    lines = ["## Audits", ""]
    for a in entries:
        lines.append(
            f"- **{audit_verdict(a.get('passed'))}** {md(a.get('name', 'audit'))}: {md(a.get('summary') or '')}"
        )
    return lines


def _limitations(rec: RunRecord, meta: dict[str, Any]) -> list[str]:
    items = []
    if rec.state in ("failed", "interrupted"):
        items.append(f"The run did not complete (state: {md(rec.state)}).")
    for a in audit_entries(rec) or []:
        if a.get("passed") is False:
            items.append(f"Failed audit **{md(a.get('name', 'audit'))}**: {md(a.get('summary') or '')}")
    diagnosis = rec.diagnosis or {}
    if diagnosis.get("verdict") in ("over-fitting", "under-fitting"):
        items.append(f"Training diagnosis: **{md(diagnosis['verdict'])}**. {md(diagnosis.get('summary') or '')}")
    if _random_init(meta):
        items.append("The base model was randomly initialised: the model knows nothing beyond its training rows.")
    items.append(
        "The metrics come from held-out validation and test splits of the same data as the training rows: they "
        "estimate how the model does on more rows like these, not on text from elsewhere."
    )
    if not (rec.evaluation or {}).get("intervals"):
        items.append("No confidence intervals were computed: small differences between models may be noise.")
    return ["## Limitations", "", *[f"- {item}" for item in items]]


def _reproduce(rec: RunRecord) -> list[str]:
    lines = [
        "## Reproduce",
        "",
        md_fenced("finetune run recipe.resolved.toml", "bash"),
        "",
        f"`recipe.resolved.toml` is in the run directory ({md_code(rec.path)}): "
        "the recipe with every default resolved.",
    ]
    sha = (rec.environment or {}).get("recipe_sha256")
    if sha:
        lines[-1] += f" Its sha256 is {md_code(sha)}."
    lines[-1] += " The data must match the fingerprints above for the same result."
    if rec.recipe_text:
        recipe = md_fenced(rec.recipe_text, "toml")
        lines += ["", "<details><summary>recipe.resolved.toml</summary>", "", recipe, "", "</details>"]
    return lines


def _provenance(rec: RunRecord) -> str:
    # The card is written while the model is saved, before the run is marked completed: the start
    # time is what it can say for sure.
    status = rec.status or {}
    text = f"Fine-tuned with finetune-runner from the recipe {md_code(rec.name)}, "
    text += f"in the run directory {md_code(rec.path)}"
    if rec.state == "completed" and status.get("finished"):
        text += f", finished {md(status['finished'])}"
    elif status.get("started"):
        text += f", started {md(status['started'])}"
    return text + "."


def render_model_card(rec: RunRecord, model_dir: Path) -> str:
    """The card's text: front matter and Markdown."""
    meta = _meta(rec, model_dir)
    description = rec.section("run").get("description")
    body = [f"# {md(rec.name)}", ""]
    if description:
        body += [md(description), ""]
    body += [
        _provenance(rec),
        "",
        "## Model description",
        "",
        *_description(rec, meta),
        "",
        *_intended_use(rec, meta),
        "",
        *_training_data(rec),
        "",
        *_procedure(rec, meta),
        "",
        *_evaluation(rec),
        "",
        *_audits(rec),
        "",
        *_limitations(rec, meta),
        "",
        *how_to_load(model_dir, meta, rec.path),
        "",
        *_reproduce(rec),
    ]
    return "---\n" + to_yaml(front_matter(rec, meta)) + "---\n\n" + "\n".join(body) + "\n"


def write_model_card(run_dir: Path, model_dir: Path) -> None:
    """Write `model_dir/README.md` (atomically) from the run directory's records."""
    model_dir = Path(model_dir)
    atomic_write(model_dir / CARD, render_model_card(read_run(Path(run_dir)), model_dir))
