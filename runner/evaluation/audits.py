"""Running the recipe's `[[audits]]`: data audits before training, model audits on the base and the
fine-tuned model, mitigations on the training rows, and the results in audits.json."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from runner.components import SPLITS, Audit, AuditData, AuditResult, AuditSubject, RunContext
from runner.errors import AuditFailed, FinetuneError

# The column an audit's reweighting adds to the raw training rows; encoding turns it into the
# `weight` the trainer scales each row's loss by.
WEIGHT = "_weight"


def audit_data(data) -> AuditData:
    """The prepared rows (runner.pipeline.data.PreparedData) as audits see them."""
    parts = {split: [(s.task, s.splits[split]) for s in data.parts(split)] for split in SPLITS}

    def where(split: str, index: int) -> str:
        for _, rows in parts[split]:
            if index < len(rows):
                row = rows[index]
                return data.origins[row["_src"]].where(row["_row"])
            index -= len(rows)
        raise IndexError(f"{split} has no row {index}")

    return AuditData(data.sources[0].task, {k: v for k, v in parts.items() if v}, where)


def result_record(audit, result: AuditResult) -> dict[str, Any]:
    record = {"name": audit.key(), "type": audit.name, **asdict(result)}
    return json.loads(json.dumps(record, default=str))  # JSON-safe: numpy numbers, paths


class Audits:
    """The recipe's audits for one run."""

    def __init__(self, specs, ctx: RunContext, events):
        self.audits = [spec.create() for spec in specs]
        self.ctx, self.events = ctx, events
        self.records: dict[str, dict[str, Any]] = {}  # audit key -> audits.json record
        self.base: dict[str, Any] = {}  # audit key -> the base model's figures

    def __bool__(self) -> bool:
        return bool(self.audits)

    @property
    def model_audits(self) -> list:
        """The audits that measure models (they override `measure`); the others only read data."""
        return [a for a in self.audits if type(a).measure is not Audit.measure]

    def check_data(self, data: AuditData, stop: bool = True) -> dict[str, set[int]]:
        """Data audits; with `stop`, a failure stops the run before anything trains. Returns the
        evaluation rows the audits say to leave out, by split."""
        failed, drop = [], {}
        for audit in self.audits:
            result = audit.check_data(data, self.ctx)
            if result is None:
                continue
            self._record(audit, result)
            if result.passed is False:
                failed.append((audit, result))
            for split, rows in result.drop.items():
                if split not in ("validation", "test"):
                    raise FinetuneError(f"audit '{audit.key()}' asked to drop {split} rows: only evaluation rows")
                drop.setdefault(split, set()).update(rows)
        if failed and stop:
            audit, result = failed[0]
            shown = "".join(
                f"\n  {e.get('eval', '')} <-> {e.get('train', '')}" for e in result.examples[:5] if isinstance(e, dict)
            )
            raise AuditFailed(
                f"audit '{audit.key()}' failed before training: {result.summary}{shown}",
                hint="fix the data, or loosen the audit's thresholds in the recipe",
            )
        return drop

    def drop(self, data, rows: dict[str, set[int]]) -> None:
        """Leave the given evaluation rows out (indices over the split's sources, in order)."""
        for split, gone in rows.items():
            start = 0
            for source in data.parts(split):
                dataset = source.splits[split]
                keep = [i for i in range(len(dataset)) if start + i not in gone]
                start += len(dataset)
                if len(keep) < len(dataset):
                    self.events.info(f"{source.name}: left out {len(dataset) - len(keep)} {split} rows (audits)")
                    source.splits[split] = dataset.select(keep).flatten_indices()

    def mitigate(self, data) -> None:
        """Reweight or augment each source's training rows, as the audits ask."""
        from datasets import concatenate_datasets

        for source in data.parts("train"):
            train = source.splits["train"]
            for audit in self.audits:
                extra = audit.augment(train, source.task)
                if extra is not None and len(extra):
                    extra = extra.cast(train.features) if set(extra.column_names) == set(train.column_names) else extra
                    train = concatenate_datasets([train, extra.select_columns(train.column_names)])
                    self.events.info(f"audit '{audit.key()}': added {len(extra)} counterfactual rows to {source.name}")
                weights = audit.reweight(train, source.task)
                if weights is not None:
                    if len(weights) != len(train):
                        raise FinetuneError(f"audit '{audit.key()}' gave {len(weights)} weights for {len(train)} rows")
                    if WEIGHT in train.column_names:  # a second reweighting multiplies the first
                        weights = [a * b for a, b in zip(train[WEIGHT], weights, strict=True)]
                        train = train.remove_columns(WEIGHT)
                    train = train.add_column(WEIGHT, [float(w) for w in weights])
                    self.events.info(f"audit '{audit.key()}': training rows of {source.name} reweighted")
            source.splits["train"] = train.flatten_indices()

    def measure(self, label: str, model, tokenizer, task, max_length: int, data: AuditData) -> dict[str, Any]:
        """Each model audit's figures for one model ("base" or "finetuned")."""
        subject = AuditSubject(label, model, tokenizer, task, max_length)
        figures = {}
        for audit in self.model_audits:
            measured = audit.measure(subject, data, self.ctx)
            if measured is not None:
                figures[audit.key()] = json.loads(json.dumps(measured, default=float))
        if label == "base":
            self.base = figures
        return figures

    def judge(self, finetuned: dict[str, Any]) -> None:
        """Verdicts of the model audits; each is recorded and reported."""
        for audit in self.audits:
            if audit.key() in finetuned:
                self._record(audit, audit.judge(self.base.get(audit.key()), finetuned[audit.key()]))

    def _record(self, audit, result: AuditResult) -> None:
        self.records[audit.key()] = result_record(audit, result)
        self.events.audited(audit.key(), result.passed, result.summary)

    def failed(self) -> list[str]:
        return [key for key, record in self.records.items() if record["passed"] is False]

    def document(self) -> dict[str, Any]:
        return {"audits": [self.records[a.key()] for a in self.audits if a.key() in self.records]}
