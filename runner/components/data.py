"""Data sources: where a recipe's rows come from (`[[data.sources]]`)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from runner.components.base import Component, RunContext
from runner.options import Options

if TYPE_CHECKING:  # pragma: no cover - typing only
    from datasets import Dataset


class DataSourceOptions(Options):
    """Options every data source has."""

    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Map the task's column names to this source's, e.g. {text = 'tweet', label = 'sentiment'}.",
    )
    name: str | None = Field(default=None, description="Label of this source's own metrics (default: type + index).")
    weight: float | None = Field(
        default=None,
        gt=0,
        description="Share of the training mix, relative to the other sources' weights (default: its size).",
    )
    task: dict[str, Any] = Field(
        default_factory=dict,
        description="Task options for this source's rows only, e.g. { format = 'openai', template = 'chatml' }.",
    )


@dataclass
class RawSplit:
    """One split as a data source delivers it, before any processing."""

    dataset: Dataset
    origin: str  # a file path or a description such as "inline rows in recipe.toml"
    row_word: str = "row"  # how to name a row of this origin: "row", "line"
    first_row: int = 1  # the number the first row has in `origin` (a CSV header makes it 2)

    def where(self, index: int) -> str:
        """Name row `index` of `dataset` the way the user finds it in the origin."""
        row = self.dataset[index]["_row"] if "_row" in self.dataset.column_names else index
        return f"{self.origin}, {self.row_word} {row + self.first_row}"


class DataSource(Component):
    """Reads rows from somewhere. Options subclass `DataSourceOptions`."""

    kind = "data_source"
    Options = DataSourceOptions
    # True when `fingerprint` reads the data itself, downloading the datasets `hub_datasets` names:
    # `finetune lock` then pins those datasets' Hub commits instead of computing it.
    fingerprint_downloads: ClassVar[bool] = False

    def load(self, ctx: RunContext) -> dict[str, RawSplit]:
        """Return the splits this source provides: keys among "train", "validation", "test", or
        the single key "all" for data that is not split yet (the core splits it)."""
        raise NotImplementedError

    def fingerprint(self, ctx: RunContext) -> dict[str, Any]:
        """Identify the data exactly (file hashes, a content hash); recorded in environment.json and
        compared on resume. Data from the Hugging Face Hub is named under `hub` (the dataset id, or
        a list of ids) beside its `revision`: the model card lists those ids as the model's
        datasets, as the Hub's metadata asks."""
        raise NotImplementedError

    def hub_datasets(self) -> list[tuple[str, str | None]]:
        """The Hub datasets this source reads, as (dataset id, revision or None), known from the
        options alone (nothing read, no network). The core asks whether the Hub is reachable only
        before a run that reads something from it, and `finetune lock` pins these datasets' commits
        where the fingerprint would download them (`fingerprint_downloads`)."""
        return []


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks: what a data source's `fingerprint` and a
    locked recipe (runner/recipe/lockfile.py) record of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
