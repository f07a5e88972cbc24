"""From data sources to train/validation/test splits with the task's columns.

Each source delivers its splits (or one unsplit "all"); columns are renamed to the task's names and
checked; splits a source lacks are carved from its rows by the recipe's fractions (seeded, and
stratified by label for classification), so splits are disjoint by construction. Every row keeps
its origin (`_src`, `_row`) until the data is encoded, so an error can name the file and row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runner.components import SPLITS, RawSplit, RunContext, Task
from runner.errors import DataError, format_key
from runner.recipe.resolved import Recipe

ORIGIN_COLUMNS = ("_src", "_row")


@dataclass
class PreparedData:
    splits: dict[str, Any]  # split name -> datasets.Dataset with the task's columns and _src/_row
    origins: list[RawSplit]
    fingerprints: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def where(self, split: str, index: int) -> str:
        ds = self.splits[split]
        return self.origins[ds[index]["_src"]].where(ds[index]["_row"])

    def sizes(self) -> dict[str, int]:
        return {name: len(ds) for name, ds in self.splits.items()}


def _standardize(raw: RawSplit, columns: dict[str, str], task: Task, key: tuple, src_index: int) -> RawSplit:
    """Rename the source's columns to the task's, drop the rest, check the text columns."""
    ds = raw.dataset
    available = list(ds.column_names)
    wanted = [*task.columns, *task.optional_columns]
    rename = {}
    for name in wanted:
        source_name = columns.get(name, name)
        if source_name in available:
            rename[source_name] = name
        elif name in task.columns:
            mapped = f" (mapped by {format_key((*key, 'columns', name))})" if name in columns else ""
            raise DataError(
                f"{raw.origin}: no column '{source_name}'{mapped}; the task '{task.name}' needs it",
                hint=f"columns found: {', '.join(available) or 'none'}; map yours with "
                f'{format_key((*key, "columns"))} = {{ {name} = "..." }}',
            )
    unknown = sorted(set(columns) - set(wanted))
    if unknown:
        raise DataError(
            f"{format_key((*key, 'columns'))}: the task '{task.name}' has no column '{unknown[0]}'",
            hint=f"its columns: {', '.join(wanted)}",
        )
    ds = ds.select_columns(list(rename)).rename_columns({k: v for k, v in rename.items() if k != v})
    if len(ds) == 0:
        raise DataError(f"{raw.origin}: no rows")
    for name in ("text", "text_pair"):
        if name in ds.column_names:
            _check_text_column(ds, name, raw)
    ds = ds.add_column("_src", [src_index] * len(ds)).add_column("_row", list(range(len(ds))))
    return RawSplit(ds, raw.origin, raw.row_word, raw.first_row)


def _check_text_column(ds, name: str, raw: RawSplit) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    column = ds.data.table.column(name)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        if pa.types.is_null(column.type):
            raise DataError(f"{raw.origin}: column '{name}' is empty in every row")
        raise DataError(f"{raw.origin}: column '{name}' must hold text, it holds {column.type} values")
    nulls = pc.is_null(column)
    if pc.any(nulls).as_py():
        index = pc.index(nulls, True).as_py()
        raise DataError(f"{raw.where(index)}: column '{name}' is empty")


def _carve(n: int, fractions: dict[str, float], strata: list | None, seed: int) -> dict[str, np.ndarray]:
    """Split range(n) into named parts by fractions, seeded.

    Rows are shuffled within each stratum and the strata laid end to end; walking that order,
    each row goes to the part furthest behind its share. Totals match the fractions to within a
    row, and every stratum is spread over the parts in proportion, however small it is.
    """
    rng = np.random.default_rng(seed)
    groups: dict[Any, list[int]] = {}
    for i in range(n):
        groups.setdefault(strata[i] if strata is not None else 0, []).append(i)
    order = [i for key in sorted(groups, key=str) for i in rng.permutation(groups[key]).tolist()]
    total = sum(fractions.values())
    shares = {name: f / total for name, f in fractions.items()}
    parts: dict[str, list[int]] = {name: [] for name in fractions}
    for k, index in enumerate(order, 1):
        name = max(shares, key=lambda s: shares[s] * k - len(parts[s]))
        parts[name].append(index)
    return {name: np.sort(np.array(part, dtype=np.int64)) for name, part in parts.items()}


def _split_source(splits: dict[str, RawSplit], recipe: Recipe, task: Task, seed: int, notes) -> dict:
    """Carve the splits this source lacks out of its rows."""
    fr = recipe.data.split
    if "all" in splits:
        pool, wanted = splits.pop("all"), {"train": fr.train, "validation": fr.validation, "test": fr.test}
    elif "train" in splits and not ("validation" in splits and "test" in splits):
        pool = splits.pop("train")
        wanted = {"train": fr.train}
        for name in ("validation", "test"):
            if name not in splits:
                wanted[name] = getattr(fr, name)
    else:
        return splits
    wanted = {k: v for k, v in wanted.items() if v > 0}
    if list(wanted) == ["train"]:
        return {**splits, "train": pool}
    strata = None
    column = task.stratify_column
    if fr.stratify and column and column in pool.dataset.column_names:
        strata = [str(v) for v in pool.dataset[column]]
    parts = _carve(len(pool.dataset), wanted, strata, seed)
    for name, index in parts.items():
        if len(index) == 0:
            raise DataError(
                f"{pool.origin}: {len(pool.dataset)} rows are too few to carve a {name} split "
                f"(data.split.{name} = {wanted[name]:g})",
                hint=f"add rows, or set data.split.{name} = 0",
            )
    shares = ", ".join(f"{k} {len(v)}" for k, v in parts.items())
    notes.append(f"{pool.origin}: split {len(pool.dataset)} rows into {shares}{' (stratified)' if strata else ''}")
    for name, index in parts.items():
        splits[name] = RawSplit(pool.dataset.select(index), pool.origin, pool.row_word, pool.first_row)
    return splits


def prepare_data(recipe: Recipe, task: Task, ctx: RunContext) -> PreparedData:
    """Load every source, carve missing splits, fit the task to the data, and check it all."""
    from datasets import concatenate_datasets

    origins: list[RawSplit] = []
    fingerprints = []
    notes: list[str] = []
    by_split: dict[str, list[RawSplit]] = {}
    for spec in recipe.sources:
        source = spec.create()
        loaded = source.load(ctx)
        if not loaded:
            raise DataError(f"{format_key(spec.key)}: the source '{spec.name}' delivered no data")
        fingerprints.append({"source": spec.name, **source.fingerprint(ctx)})
        standardized = {}
        for split, raw in loaded.items():
            if split not in (*SPLITS, "all"):
                raise DataError(f"{raw.origin}: unknown split '{split}' (expected train, validation, test)")
            origins.append(raw)
            standardized[split] = _standardize(raw, source.options.columns, task, spec.key, len(origins) - 1)
        for split, raw in _split_source(standardized, recipe, task, ctx.seed, notes).items():
            by_split.setdefault(split, []).append(raw)

    if "train" not in by_split:
        raise DataError("no training data: no source delivered a 'train' split or unsplit rows")
    task.fit(by_split)
    splits = {}
    for name in SPLITS:
        parts = [raw.dataset for raw in by_split.get(name, []) if len(raw.dataset)]
        if not parts:
            continue
        ds = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
        limit = recipe.data.max_rows.get(name)
        if limit is not None and len(ds) > limit:
            index = np.sort(np.random.default_rng(ctx.seed).permutation(len(ds))[:limit])
            ds = ds.select(index)
            notes.append(f"{name}: kept a seeded sample of {limit} rows (data.max_rows.{name})")
        splits[name] = ds.flatten_indices()
    if "train" not in splits:
        raise DataError("the training split is empty")
    if "validation" not in splits:
        notes.append("no validation split: evaluation during training, early stopping and best-model selection are off")
    return PreparedData(splits=splits, origins=origins, fingerprints=fingerprints, notes=notes)
