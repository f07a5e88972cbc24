"""An example third-party plugin for finetune-runner.

It registers two components through the entry-point group `finetune` (see pyproject.toml):

- data source `keywords`: labelled rows generated from a keyword table written in the recipe;
- metric `error_rate`: the share of wrong predictions (1 - accuracy), where lower is better.

It uses only the public API (`from runner import ...`), as every plugin should. Heavy libraries
(datasets, numpy) are imported inside the methods that need them, so that loading the plugin,
as `finetune validate` and `finetune plugins` do, stays fast and imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import random

from pydantic import Field, field_validator

from runner import (
    DataSource,
    DataSourceOptions,
    FinetuneError,
    Metric,
    Options,
    RawSplit,
    RunContext,
    hookimpl,
)

__version__ = "0.1.0"

PLACEHOLDER = "{keyword}"
DEFAULT_TEMPLATES = [
    "{keyword}",
    "it was {keyword}",
    "the movie was {keyword}",
    "honestly {keyword} today",
    "the service is {keyword} again",
    "my new phone looks {keyword}",
]


# -- data source `keywords` ---------------------------------------------------------------------


class KeywordsOptions(DataSourceOptions):
    keywords: dict[str, list[str]] = Field(
        description="Label -> words that signal it, e.g. { positive = ['great'], negative = ['awful'] }."
    )
    templates: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TEMPLATES),
        min_length=1,
        description="Sentences with a '{keyword}' placeholder; each row fills one with a keyword.",
    )
    rows: int = Field(default=200, gt=0, le=1_000_000, description="How many rows to generate.")
    seed: int = Field(default=0, ge=0, description="Generator seed (independent of run.seed).")

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        if len(value) < 2:
            raise ValueError("give at least two labels, each with its keywords")
        for label, words in value.items():
            if not words or any(not w.strip() for w in words):
                raise ValueError(f"label {label!r}: give a non-empty list of non-empty keywords")
        return value

    @field_validator("templates")
    @classmethod
    def _templates(cls, value: list[str]) -> list[str]:
        for template in value:
            if PLACEHOLDER not in template:
                raise ValueError(f"template {template!r} has no {PLACEHOLDER} placeholder")
        return value


def generate(options: KeywordsOptions) -> list[dict[str, str]]:
    """Rows of {"text", "label"}; the same options always give the same rows. Labels take turns,
    so every label has rows (rows // labels of them, give or take one)."""
    rng = random.Random(options.seed)
    labels = list(options.keywords)
    rows = []
    for i in range(options.rows):
        label = labels[i % len(labels)]
        keyword = rng.choice(options.keywords[label])
        text = rng.choice(options.templates).replace(PLACEHOLDER, keyword)
        rows.append({"text": text, "label": label})
    return rows


class Keywords(DataSource):
    """Labelled rows generated from a keyword table in the recipe; offline and deterministic."""

    name = "keywords"
    Options = KeywordsOptions

    def load(self, ctx: RunContext) -> dict[str, RawSplit]:
        from datasets import Dataset

        origin = f"keywords data source (seed {self.options.seed})"
        # One unsplit "all": the core carves train/validation/test from it by data.split.
        return {"all": RawSplit(Dataset.from_list(generate(self.options)), origin, "row", 1)}

    def fingerprint(self, ctx: RunContext) -> dict:
        blob = json.dumps(generate(self.options), sort_keys=True).encode()
        return {"generator": "keywords", "rows": self.options.rows, "content_sha256": hashlib.sha256(blob).hexdigest()}


# -- metric `error_rate` ------------------------------------------------------------------------


class NoOptions(Options):
    pass


class ErrorRate(Metric):
    """Error rate: the share of wrong predictions (1 - accuracy); lower is better."""

    name = "error_rate"
    Options = NoOptions
    consumes = frozenset({"classes"})
    greater_is_better = False

    def compute(self, predictions, references) -> dict[str, float]:
        import numpy as np

        predictions = np.asarray(predictions).reshape(-1)
        references = np.asarray(references).reshape(-1)
        if predictions.shape != references.shape:
            raise FinetuneError(f"metric 'error_rate': {predictions.size} predictions for {references.size} references")
        if references.size == 0:
            return {self.key(): float("nan")}
        return {self.key(): float(np.mean(predictions != references))}


# -- registration -------------------------------------------------------------------------------


@hookimpl
def register_data_sources(register):
    register(Keywords)


@hookimpl
def register_metrics(register):
    register(ErrorRate)
