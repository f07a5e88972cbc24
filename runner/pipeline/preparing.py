"""The data side of a run's steps: rows loaded and audited, the tokenizer prepared, rows tokenized.

`DataSteps` is the half of `steps.Pipeline` that runs on rank 0 first (the other ranks then read
its caches); it leaves `data`, `audits`, `tokenizer`, `max_length` and `encoded` on the pipeline.
"""

from __future__ import annotations

from typing import Any

from runner.errors import FinetuneError
from runner.evaluation.audits import Audits, audit_data
from runner.pipeline.data import prepare_data
from runner.pipeline.encoding import encode_sources
from runner.recipe.resolved import Recipe
from runner.storage.rundir import publish, read_json
from runner.toolkit.modeling import ensure_pad_token

TOKENIZER = "tokenizer"


def resolve_max_length(recipe: Recipe, tokenizer, model_component) -> int:
    """tokenizer.max_length, or the longest input the model and tokenizer allow, less the
    positions the strategy's virtual tokens take."""
    explicit = recipe.tokenizer.options.max_length
    if explicit:
        return explicit
    limits = [model_component.max_positions()]
    if tokenizer.model_max_length and tokenizer.model_max_length < 1_000_000:
        limits.append(tokenizer.model_max_length)
    known = [x for x in limits if x]
    return (min(known) if known else 512) - recipe.strategy.create().extra_positions()


def _fingerprints_changed(old: list[dict], new: list[dict]) -> str | None:
    if old == new:
        return None
    for i, (a, b) in enumerate(zip(old, new, strict=False)):
        if a != b:
            return f"data.sources[{i}] ({a.get('source')}) no longer matches what the run started with"
    return "the number of data sources changed"


class DataSteps:
    """Loading, auditing and tokenizing the data; mixed into `Pipeline`, whose `__init__` sets what they read."""

    def load_data(self) -> None:
        self.events.stage("loading data")
        self.data = prepare_data(self.recipe, self.task, self.ctx)
        for note in self.data.notes:
            self.events.info(note)
        self.events.info("rows: " + ", ".join(f"{k} {v}" for k, v in self.data.sizes().items()))
        if self.resume_from is None or self.force or not self.run_dir.environment.is_file():
            return
        started = read_json(self.run_dir.environment)
        changed = _fingerprints_changed(started.get("data", []), self.data.fingerprints)
        if changed:
            raise FinetuneError(f"cannot resume: {changed}", hint="pass --force to resume with the new data anyway")
        if started.get("recipe_sha256") != self.recipe_sha256:
            raise FinetuneError(
                f"cannot resume: {self.run_dir.recipe} changed since the run started",
                hint="pass --force to resume with the edited recipe anyway",
            )

    def audit_data(self) -> None:
        """Data audits (leakage) stop the run here, before anything is tokenized; then the
        mitigations the audits ask for change the training rows."""
        self.audits = Audits(self.recipe.audits, self.ctx, self.events)
        if not self.audits:
            return
        self.events.stage("auditing the data")
        self.audits.drop(self.data, self.audits.check_data(audit_data(self.data)))
        self.audits.mitigate(self.data)
        self.audit_rows = audit_data(self.data)  # what model audits read, mitigations included

    def prepare_tokenizer(self) -> None:
        self.events.stage("preparing the tokenizer")
        saved = self.ctx.tokenizer_dir = self.run_dir.path / TOKENIZER
        if saved.is_dir():
            # A resumed run uses the tokenizer it started with, never a re-trained or re-downloaded one.
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(saved)
            self.prepare_tokenizer_for_tasks()  # already done: this only tells the tasks
            self.max_length = self.tokenizer.model_max_length
            return
        self.tokenizer = self.recipe.tokenizer.create().build(self.ctx, self.training_texts)
        for note in (ensure_pad_token(self.tokenizer), *self.prepare_tokenizer_for_tasks()):
            if note:
                self.events.info(note)
        self.max_length = resolve_max_length(self.recipe, self.tokenizer, self.model_component)
        self.tokenizer.model_max_length = self.max_length
        if self.main:
            publish(saved, self.tokenizer.save_pretrained)

    def training_texts(self):
        for source in self.data.parts("train"):
            yield from source.task.training_texts(source.splits["train"])

    def prepare_tokenizer_for_tasks(self) -> list[str | None]:
        """Every task variant adapts the tokenizer; the recipe's own task goes last, so that its
        chat template is the one saved with the tokenizer."""
        variants = {id(s.task): s.task for s in self.data.sources if s.task is not self.task}
        return [t.prepare_tokenizer(self.tokenizer) for t in (*variants.values(), self.task)]

    def tokenize(self) -> None:
        self.events.stage("tokenizing")
        encoded = encode_sources(self.data, self.tokenizer, self.max_length, self.ctx.cache_dir, self.seed)
        self.encoded, self.encoded_parts = encoded.splits, encoded.parts
        if encoded.from_cache:
            self.events.info("encoded rows read from the cache: " + ", ".join(sorted(encoded.from_cache)))
        for note in encoded.notes:
            self.events.info(note)
        self.data_stats = self._data_stats()
        if getattr(self.task.options, "packing", False):
            from runner.pipeline.packing import pack

            before = len(self.encoded["train"])
            self.encoded["train"] = pack(self.encoded["train"], self.max_length)
            lengths = self.encoded["train"]["length"]
            fill = sum(lengths) / (len(lengths) * self.max_length)
            self.events.info(f"packed {before} training rows into {len(lengths)} rows, {fill:.0%} full")

    def _data_stats(self) -> dict[str, Any]:
        from runner.evaluation.data_stats import data_stats

        labels = getattr(self.task, "labels", None) if self.task.produces == "classes" else None
        return data_stats(
            lengths={split: list(ds["length"]) for split, ds in self.encoded.items()},
            labels={split: list(ds["labels"]) for split, ds in self.encoded.items()} if labels else None,
            label_names=labels,
            max_length=self.max_length,
        )
