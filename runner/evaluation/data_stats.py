"""What the data looked like after encoding: split sizes, label counts and token lengths (data_stats.json).

Pure counting over plain lists, so that the report and the model card can show how big each split
was, whether the classes were balanced, and how many rows the tokenizer's max_length cut off.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

BINS = 20


def length_edges(max_length: int, bins: int = BINS) -> list[int]:
    """Integer bin edges from 0 to max_length in equal steps (the last bin may be narrower).

    The step is the smallest integer that needs at most `bins` bins, so max_length=48 gives 16 bins of 3.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1 (got {max_length})")
    width = max(1, math.ceil(max_length / bins))
    edges = list(range(0, max_length + 1, width))
    if edges[-1] != max_length:
        edges.append(max_length)
    return edges


def length_summary(lengths: Sequence[int], max_length: int, bins: int = BINS) -> dict[str, Any]:
    """Histogram and summary of token lengths.

    Bins are [edge, next edge) except the last, which also holds max_length and anything longer
    (a row at max_length was cut there). mean, median, p95 (nearest rank: a length some row has)
    and max are None for an empty split; truncated counts the rows whose length is >= max_length.
    """
    edges = length_edges(max_length, bins)
    counts = [0] * (len(edges) - 1)
    for n in lengths:
        # the bin whose lower edge is the last one <= n; widths are equal except the last bin's
        index = min(int(n) // (edges[1] - edges[0]), len(counts) - 1)
        counts[max(index, 0)] += 1
    ordered = sorted(int(n) for n in lengths)
    empty = not ordered
    return {
        "bins": edges,
        "counts": counts,
        "mean": None if empty else round(sum(ordered) / len(ordered), 2),
        "median": None if empty else float(statistics.median(ordered)),
        "p95": None if empty else ordered[math.ceil(0.95 * len(ordered)) - 1],
        "max": None if empty else ordered[-1],
        "truncated": sum(1 for n in ordered if n >= max_length),
    }


def label_counts(values: Sequence[Any], label_names: Sequence[str] | None = None) -> dict[str, int]:
    """How many rows carry each label, in the task's label order (zero counts included), then any other.

    With `label_names`, an integer value is an id into it (as in encoded rows: 0 is label_names[0]);
    every other value is counted under its text. Labels not in `label_names` follow, sorted.
    """
    names = list(label_names or [])

    def name_of(value: Any) -> str:
        if names and isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
            return names[value]
        return str(value)

    found = Counter(name_of(v) for v in values)
    ordered = {name: found.get(name, 0) for name in names}
    ordered.update({name: found[name] for name in sorted(found) if name not in ordered})
    return ordered


def data_stats(
    lengths: Mapping[str, Sequence[int]],
    max_length: int,
    labels: Mapping[str, Sequence[Any] | None] | None = None,
    label_names: Sequence[str] | None = None,
    bins: int = BINS,
) -> dict[str, Any]:
    """The data_stats.json dict: {"max_length", "splits", "labels" (classification only), "lengths"}.

    `lengths`: per split, the token length of each encoded row (the split sizes come from it).
    `labels`: per split, each row's label (a name, or an id into `label_names`), or None for a split
    or a task without labels; the "labels" key is left out when no split has any.
    `label_names`: the task's labels in id order; counts follow it.
    """
    labels = labels or {}
    out: dict[str, Any] = {"max_length": max_length, "splits": {split: len(rows) for split, rows in lengths.items()}}
    counted = {}
    for split, values in labels.items():
        if values is None:
            continue
        if split in lengths and len(values) != len(lengths[split]):
            raise ValueError(f"split {split!r}: {len(values)} labels for {len(lengths[split])} rows")
        counted[split] = label_counts(values, label_names)
    if counted:
        out["labels"] = counted
    out["lengths"] = {split: length_summary(rows, max_length, bins) for split, rows in lengths.items()}
    return out
