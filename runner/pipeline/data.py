"""From data sources to train/validation/test splits with the task's columns.

Each source delivers its splits (or one unsplit "all"); columns are renamed to the task's names and
checked; splits a source lacks are carved from its rows by the recipe's fractions (seeded, and
stratified by label for classification), so splits are disjoint by construction. Every row keeps
its origin (`_src`, `_row`) until the data is encoded, so an error can name the file and row.

Sources stay apart until they are encoded: each may have its own task options (an instruction
source in chat format beside one in alpaca format), and each is evaluated on its own as well as
with the others. A source's `weight` sets its share of the training mix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runner.components import GROUP_COLUMN, SPLITS, RawSplit, RunContext, Task
from runner.components.rewards import REFERENCE
from runner.errors import DataError, format_key
from runner.recipe.resolved import Recipe

ORIGIN_COLUMNS = ("_src", "_row")


@dataclass
class SourceData:
    """One source's rows, split, in the columns of its task."""

    index: int
    name: str  # how its per-source metrics are labelled
    weight: float | None  # share of the training mix; None: its natural size
    task: Task  # the recipe's task, or a variant with this source's task options
    splits: dict[str, Any] = field(default_factory=dict)  # split -> datasets.Dataset (with _src, _row)


@dataclass
class PreparedData:
    sources: list[SourceData]
    origins: list[RawSplit]
    fingerprints: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def sizes(self) -> dict[str, int]:
        return {name: sum(len(p.splits[name]) for p in self.parts(name)) for name in SPLITS if self.parts(name)}

    def parts(self, split: str) -> list[SourceData]:
        """The sources that have rows in `split`."""
        return [source for source in self.sources if split in source.splits]

    @property
    def splits(self) -> dict[str, Any]:
        """Each split with every source's rows, for sources that share one task (and so columns)."""
        from datasets import concatenate_datasets

        out = {}
        for name in SPLITS:
            parts = [p.splits[name] for p in self.parts(name)]
            if parts:
                out[name] = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
        return out

    def where(self, split: str, index: int) -> str:
        ds = self.splits[split]
        return self.origins[ds[index]["_src"]].where(ds[index]["_row"])


def _standardize(
    raw: RawSplit, columns: dict[str, str], task: Task, key: tuple, src_index: int, read: dict[str, str] | None = None
) -> RawSplit:
    """Rename the source's columns to the task's, drop the rest, check the text columns. `read`: the
    columns the recipe's rewards read besides the task's (a reference answer), each with the reward."""
    ds = raw.dataset
    available = list(ds.column_names)
    read = {c: who for c, who in (read or {}).items() if c not in task.columns and c not in task.optional_columns}
    # `group` names each row's subgroup, for the subgroup gaps of a bias audit and reweighting
    wanted = [*task.columns, *task.optional_columns, GROUP_COLUMN, *read]
    rename = {}
    for name in wanted:
        source_name = columns.get(name, name)
        if source_name in available:
            rename[source_name] = name
        elif name in task.columns or name in read:
            mapped = f" (mapped by {format_key((*key, 'columns', name))})" if name in columns else ""
            needs = f"the task '{task.name}'" if name in task.columns else read[name]
            raise DataError(
                f"{raw.origin}: no column '{source_name}'{mapped}; {needs} needs it",
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


def task_for(spec, task: Task) -> Task:
    """The task a source's rows are encoded with: the recipe's, or a variant with the source's
    own task options (validated with the recipe)."""
    overrides = spec.options.task
    if not overrides:
        return task
    merged = {**task.options.model_dump(), **overrides}
    return type(task)(type(task.options).model_validate(merged))


def _limit(sources: list[SourceData], split: str, limit: int, seed: int) -> str | None:
    """Keep a seeded sample of at most `limit` rows of `split`, taken from each source in proportion."""
    parts = [p for p in sources if split in p.splits]
    total = sum(len(p.splits[split]) for p in parts)
    if total <= limit:
        return None
    rng = np.random.default_rng(seed)
    for p in parts:
        n = len(p.splits[split])
        keep = max(1, round(limit * n / total))
        p.splits[split] = p.splits[split].select(np.sort(rng.permutation(n)[:keep])).flatten_indices()
    return f"{split}: kept a seeded sample of about {limit} rows (data.max_rows.{split})"


def prepare_data(recipe: Recipe, task: Task, ctx: RunContext) -> PreparedData:
    """Load every source, carve missing splits, fit the tasks to the data, and check it all."""
    origins: list[RawSplit] = []
    fingerprints = []
    notes: list[str] = []
    sources: list[SourceData] = []
    fit_groups: dict[int, tuple[Task, dict[str, list[RawSplit]]]] = {}
    read = {  # the columns rewards read; `reference` is the task's reference answer, added to the rows they see
        column: f"reward '{reward.key()}'"
        for reward in (spec.create() for spec in recipe.rewards)
        for column in reward.columns
        if column != REFERENCE
    }
    for index, spec in enumerate(recipe.sources):
        source = spec.create()
        source_task = task_for(spec, task)
        loaded = source.load(ctx)
        if not loaded:
            raise DataError(f"{format_key(spec.key)}: the source '{spec.name}' delivered no data")
        fingerprints.append({"source": spec.name, **source.fingerprint(ctx)})
        standardized = {}
        for split, raw in loaded.items():
            if split not in (*SPLITS, "all"):
                raise DataError(f"{raw.origin}: unknown split '{split}' (expected train, validation, test)")
            origins.append(raw)
            standardized[split] = _standardize(
                raw, source.options.columns, source_task, spec.key, len(origins) - 1, read
            )
        carved = _split_source(standardized, recipe, source_task, ctx.seed, notes)
        name = source.options.name or f"{spec.name}{index}"
        data = SourceData(index, name, source.options.weight, source_task)
        data.splits = {split: raw.dataset for split, raw in carved.items() if len(raw.dataset)}
        sources.append(data)
        group = fit_groups.setdefault(id(source_task), (source_task, {}))[1]
        for split, raw in carved.items():
            group.setdefault(split, []).append(raw)

    if not any("train" in s.splits for s in sources):
        raise DataError("no training data: no source delivered a 'train' split or unsplit rows")
    for group_task, by_split in fit_groups.values():  # a task learns its labels from all its sources
        group_task.fit(by_split)
    for split, limit in recipe.data.max_rows.items():
        note = _limit(sources, split, limit, ctx.seed)
        if note:
            notes.append(note)
    for source in sources:
        source.splits = {k: v.flatten_indices() for k, v in source.splits.items()}
    data = PreparedData(sources=sources, origins=origins, fingerprints=fingerprints, notes=notes)
    if "validation" not in data.sizes():
        notes.append("no validation split: evaluation during training, early stopping and best-model selection are off")
    return data
