"""Reading a run directory: its records as one `RunRecord`, and what its scores mean.

`read_run` reads the resolved recipe, environment.json, status.json, metrics.jsonl, metrics.json,
samples.jsonl, model/finetune.json, data_stats.json, evaluation.json and audits.json. The helpers
below pick the figures out of them (final metrics per split, baselines, intervals, audits, data
sources) and say which way a metric is better. The report, the model card and `finetune compare`
all read runs through this module, so that they agree on what a run recorded.

Reading is lenient because the records are read after the fact, from runs of every kind: an older
version's run, a failed or interrupted one, one still running (metrics.jsonl with a line cut off by
a hard kill). A missing file is None, an unreadable one is None plus a line in `problems`, and every
helper takes a record in an unexpected shape for "not recorded" rather than raising, so that the
readers can show what there is.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.report.values import fmt
from runner.storage.rundir import RunDir, finite, read_json

FINAL_SPLITS = ("validation", "test")
# Keys of evaluation records that are bookkeeping, not scores.
NOT_SCORES = frozenset(
    {
        "runtime", "samples_per_second", "steps_per_second", "epoch", "preparation_time", "global_step", "time",
        "step", "split", "final", "total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second",
        "model_preparation_time",
    }
)  # fmt: skip
LOWER_IS_BETTER = frozenset({"loss", "perplexity", "mse", "mae", "rmse", "wer", "cer", "ter"})


# -- the records ---------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """What a run directory holds, each file read leniently: None when missing or unreadable."""

    path: Path
    recipe_text: str | None = None
    recipe_sha256: str | None = None  # of the file as it is now (environment.json has the one the run started with)
    recipe: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None
    status: dict[str, Any] | None = None
    log: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] | None = None
    samples: list[dict[str, Any]] | None = None
    model_meta: dict[str, Any] | None = None
    data_stats: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    audits: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    def section(self, name: str) -> dict[str, Any]:
        """A table of the resolved recipe ({} when absent)."""
        value = (self.recipe or {}).get(name)
        return value if isinstance(value, dict) else {}

    @property
    def name(self) -> str:
        return str(self.section("run").get("name") or (self.model_meta or {}).get("recipe") or self.path.name)

    @property
    def state(self) -> str:
        return str((self.status or {}).get("state") or "unknown")

    @property
    def global_step(self) -> int | None:
        step = (self.status or {}).get("global_step")
        if step is None:
            step = ((self.metrics or {}).get("train") or {}).get("global_step")
        return step if isinstance(step, int) else None

    @property
    def seed(self) -> Any:
        """The recipe's seed, else the one environment.json recorded (None when neither did)."""
        return self.section("run").get("seed", (self.environment or {}).get("seed"))

    @property
    def diagnosis(self) -> dict[str, Any] | None:
        """evaluation.json's training diagnosis (verdict, summary, best point), or None."""
        found = (self.evaluation or {}).get("diagnosis")
        return found if isinstance(found, dict) else None

    def greater_is_better(self, key: str) -> bool:
        return greater_is_better(key, (self.evaluation or {}).get("greater_is_better"))

    def final_metrics(self) -> dict[str, dict[str, Any]]:
        """Final metrics per evaluated split: metrics.json, else evaluation.json, else the final
        records of metrics.jsonl (a run that stopped before writing metrics.json)."""
        if isinstance(self.metrics, dict):
            return {k: v for k, v in self.metrics.items() if k != "train" and isinstance(v, dict)}
        finetuned = (self.evaluation or {}).get("finetuned")
        if isinstance(finetuned, dict):
            return {k: v for k, v in finetuned.items() if isinstance(v, dict)}
        out: dict[str, dict[str, Any]] = {}
        for record in self.log:
            if record.get("final") and isinstance(record.get("split"), str):
                out[record["split"]] = record
        return out


def _read_json(path: Path, problems: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError) as exc:
        problems.append(f"{path.name} could not be read: {exc}")
        return None


def read_json_object(directory: Path, name: str, problems: list[str] | None = None) -> dict[str, Any] | None:
    """The JSON object in the file `name` of `directory`, or None when it is missing, unreadable or not an
    object (said in `problems`)."""
    problems = [] if problems is None else problems
    value = _read_json(directory / name, problems)
    if value is not None and not isinstance(value, dict):
        problems.append(f"{name} is not a JSON object")
        return None
    return value


def _read_jsonl(path: Path, problems: list[str]) -> list[dict[str, Any]] | None:
    if not path.is_file():
        return None
    rows: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        problems.append(f"{path.name} could not be read: {exc}")
        return None
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut off by a hard kill
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_run(path: Path) -> RunRecord:
    """Read every record of the run directory `path` that exists."""
    path = Path(path)
    rec = RunRecord(path=path)
    p = rec.problems
    recipe_file = path / RunDir.RECIPE
    if recipe_file.is_file():
        data = recipe_file.read_bytes()
        rec.recipe_sha256 = hashlib.sha256(data).hexdigest()
        rec.recipe_text = data.decode("utf-8", errors="replace")
        try:
            rec.recipe = tomllib.loads(rec.recipe_text)
        except tomllib.TOMLDecodeError as exc:
            p.append(f"recipe.resolved.toml could not be parsed: {exc}")
    rec.environment = read_json_object(path, "environment.json", p)
    rec.status = read_json_object(path, "status.json", p)
    rec.log = _read_jsonl(path / "metrics.jsonl", p) or []
    rec.metrics = read_json_object(path, "metrics.json", p)
    rec.samples = _read_jsonl(path / "samples.jsonl", p)
    rec.model_meta = read_json_object(path, "model/finetune.json", p)
    rec.data_stats = read_json_object(path, RunDir.DATA_STATS, p)
    rec.evaluation = read_json_object(path, RunDir.EVALUATION, p)
    rec.audits = read_json_object(path, RunDir.AUDITS, p)
    return rec


# -- what the records say ------------------------------------------------------------------------
def recipe_value(value: Any) -> str:
    """A recipe value as the recipe writes it (true, not True; lists and tables as JSON; — for none)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def data_sources(rec: RunRecord) -> list[dict[str, Any]]:
    """The recipe's data sources (the tables of data.sources)."""
    sources = rec.section("data").get("sources")
    return [s for s in sources if isinstance(s, dict)] if isinstance(sources, list) else []


def source_fingerprints(rec: RunRecord) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Each data source of the recipe with the fingerprint environment.json recorded for it, in order
    ({} for a source the recipe lacks, None for a fingerprint not recorded)."""
    sources = data_sources(rec)
    prints = (rec.environment or {}).get("data")
    prints = prints if isinstance(prints, list) else []
    return [
        (
            sources[i] if i < len(sources) else {},
            prints[i] if i < len(prints) and isinstance(prints[i], dict) else None,
        )
        for i in range(max(len(sources), len(prints)))
    ]


def describe_source(source: dict[str, Any], rows: bool = True) -> str:
    """One data source of a recipe in a few words: 'hub mteb/tweet_sentiment_extraction'; with
    `rows`, the number of rows it asks for, where it does."""
    kind = str(source.get("type", "data"))
    detail = source.get("path") or source.get("kind") or source.get("name")
    if isinstance(detail, dict):  # files given per split
        detail = ", ".join(f"{k}: {v}" for k, v in detail.items())
    text = f"{kind} {detail}" if detail else kind
    count = source.get("rows")
    return f"{text} ({count} rows)" if rows and isinstance(count, int) else text


def split_sizes(rec: RunRecord) -> dict[str, int]:
    """Rows per split: data_stats.json, else environment.json."""
    sizes = (rec.data_stats or {}).get("splits") or (rec.environment or {}).get("split_sizes") or {}
    return {str(k): v for k, v in sizes.items() if isinstance(v, int)} if isinstance(sizes, dict) else {}


def parameters(rec: RunRecord) -> dict[str, Any]:
    """{"total", "trainable"} parameter counts, as the model or the environment recorded them."""
    found = (rec.model_meta or {}).get("parameters") or (rec.environment or {}).get("parameters")
    return found if isinstance(found, dict) else {}


def task_labels(meta: dict[str, Any] | None) -> list[Any] | None:
    """The label names a model's finetune.json records (task_state.labels of a classifier), or None."""
    state = (meta or {}).get("task_state")
    labels = state.get("labels") if isinstance(state, dict) else None
    return labels if isinstance(labels, list) else None


def split_order(names: Iterable[str]) -> list[str]:
    """validation, test, then the rest (e.g. test/<source>) in their order."""
    names = list(dict.fromkeys(names))
    return [s for s in FINAL_SPLITS if s in names] + [s for s in names if s not in FINAL_SPLITS]


def main_splits(names: Iterable[str]) -> list[str]:
    """The splits of `split_order` without the parts of one data source each (test/<source>)."""
    return [s for s in split_order(names) if "/" not in s]


def baselines(rec: RunRecord) -> list[dict[str, Any]]:
    """evaluation.json's baseline rows ({"name", "note", <split>: metrics})."""
    rows = (rec.evaluation or {}).get("baselines")
    return [b for b in rows if isinstance(b, dict)] if isinstance(rows, list) else []


def interval_of(rec: RunRecord, split: str, key: str) -> dict[str, Any] | None:
    """evaluation.json's confidence interval of metric `key` on `split` ({"low", "high", ...}), or None."""
    found = (((rec.evaluation or {}).get("intervals") or {}).get(split) or {}).get(key)
    return found if isinstance(found, dict) and "low" in found and "high" in found else None


def confusion_matrices(rec: RunRecord) -> dict[str, dict[str, Any]]:
    """Per split {"labels", "matrix"} (rows true, columns predicted): evaluation.json's "confusion",
    or the "confusion_matrix" its metrics gave under "details"."""
    evaluation = rec.evaluation or {}
    found: dict[str, dict[str, Any]] = {}
    details = evaluation.get("details")
    for split, tables in details.items() if isinstance(details, dict) else ():
        table = tables.get("confusion_matrix") if isinstance(tables, dict) else None
        if isinstance(table, dict) and isinstance(table.get("matrix"), list):
            found[split] = table
    confusion = evaluation.get("confusion")
    for split, table in confusion.items() if isinstance(confusion, dict) else ():
        if isinstance(table, dict) and isinstance(table.get("matrix"), list):
            found[split] = table
    return found


def audit_entries(rec: RunRecord) -> list[dict[str, Any]] | None:
    """The audits of audits.json ([] when the recipe has none, as a run then writes no file), or None
    when they were not recorded."""
    if rec.audits is None:
        return [] if (rec.recipe or {}).get("audits") == [] else None
    entries = rec.audits.get("audits")
    return [a for a in entries if isinstance(a, dict)] if isinstance(entries, list) else []


def audit_verdict(passed: Any) -> str:
    """PASS, FAIL, or INFO for an audit that judges nothing (passed is None)."""
    return "PASS" if passed is True else "FAIL" if passed is False else "INFO"


# -- scores --------------------------------------------------------------------------------------
def greater_is_better(key: str, table: dict[str, Any] | None = None) -> bool:
    """Whether a higher `key` is better: as evaluation.json says, else loss-like names are lower."""
    base = key.rsplit("/", 1)[-1]
    for name in (key, base, base.removeprefix("eval_")):
        if isinstance(table, dict) and isinstance(table.get(name), bool):
            return table[name]
    base = base.removeprefix("eval_").removeprefix("train_")
    return not (base in LOWER_IS_BETTER or base.endswith("_loss") or base.split("_")[0] in LOWER_IS_BETTER)


def arrow(higher: bool) -> str:
    """↑ for a metric where higher is better, ↓ where lower is."""
    return "↑" if higher else "↓"


def is_number(value: Any) -> bool:
    """A number, or one of the strings the run files use for non-finite numbers."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and value.strip().lower() in {"nan", "inf", "-inf", "+inf", "infinity", "-infinity"}


def as_number(value: Any) -> float | int | None:
    """The number a record holds (NaN and inf included), or None."""
    if not is_number(value):
        return None
    return value if isinstance(value, int | float) else float(value)


def scores(record: dict[str, Any] | None) -> dict[str, Any]:
    """The metric values of one evaluation record, without timings and bookkeeping."""
    if not isinstance(record, dict):
        return {}
    return {k: v for k, v in record.items() if k not in NOT_SCORES and is_number(v)}


def compare_better(finetuned: Any, baseline: Any, higher: bool) -> tuple[float, bool | None] | None:
    """(fine-tuned − baseline, whether the fine-tuned model is better; None when equal)."""
    a, b = finite(finetuned), finite(baseline)
    if a is None or b is None:
        return None
    diff = a - b
    if diff == 0:
        return diff, None
    return diff, (diff > 0) == higher


def metric_text(value: Any) -> str:
    """A metric value with four decimals, so that a column of them lines up (0.9400, not 0.94)."""
    number = as_number(value)
    if isinstance(number, float) and finite(number) is not None and 1e-3 <= abs(number) < 1000:
        return f"{number:.4f}"
    return fmt(number) if number is not None else "—"


def interval_text(interval: dict[str, Any]) -> str:
    """'95% CI 0.91 – 0.95'."""
    confidence = finite(interval.get("confidence"))
    level = f"{confidence:.0%} CI" if confidence is not None else "CI"
    return f"{level} {metric_text(interval.get('low'))} – {metric_text(interval.get('high'))}"
