"""Data source `inline`: rows written in the recipe itself, for small examples and tests."""

from __future__ import annotations

import hashlib
import json

from pydantic import Field, model_validator

from runner import DataError, DataSource, DataSourceOptions, RawSplit, RunContext, hookimpl

Row = dict[str, str | int | float | bool]


class InlineOptions(DataSourceOptions):
    rows: list[Row] | None = Field(default=None, description="Unsplit rows (split by data.split).")
    train: list[Row] | None = None
    validation: list[Row] | None = None
    test: list[Row] | None = None

    @model_validator(mode="after")
    def _layout(self):
        if self.rows is None and self.train is None:
            raise ValueError("give `rows` (unsplit) or `train` (and optionally validation, test)")
        if self.rows is not None and any(x is not None for x in (self.train, self.validation, self.test)):
            raise ValueError("give either `rows` or train/validation/test, not both")
        return self


class Inline(DataSource):
    """Rows written in the recipe: rows = [{ text = "...", label = "..." }, ...]."""

    name = "inline"
    Options = InlineOptions

    def _splits(self) -> dict[str, list[Row]]:
        o = self.options
        if o.rows is not None:
            return {"all": o.rows}
        return {k: v for k, v in (("train", o.train), ("validation", o.validation), ("test", o.test)) if v is not None}

    def load(self, ctx: RunContext) -> dict[str, RawSplit]:
        from datasets import Dataset

        out = {}
        for split, rows in self._splits().items():
            origin = f"inline {split if split != 'all' else ''} rows".replace("  ", " ")
            keys = sorted({k for row in rows for k in row})
            for i, row in enumerate(rows):
                missing = [k for k in keys if k not in row]
                if missing:
                    raise DataError(f"{origin}, row {i + 1}: no '{missing[0]}' (other rows have it)")
            out[split] = RawSplit(Dataset.from_list(rows), origin, "row", 1)
        return out

    def fingerprint(self, ctx: RunContext) -> dict:
        blob = json.dumps(self._splits(), sort_keys=True).encode()
        return {"content_sha256": hashlib.sha256(blob).hexdigest()}


@hookimpl
def register_data_sources(register):
    register(Inline)
