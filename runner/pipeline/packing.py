"""Packing: several samples in one row of at most max_length tokens, kept apart.

Samples are placed best-fit-decreasing (longest first, each into the row with the least room that
still fits it), so rows come out nearly full. Position ids restart at every sample, from which
transformers builds a block-diagonal causal mask: no token attends to another sample. The first
label of every sample is masked, so no sample is trained to predict the start of the next.
"""

from __future__ import annotations

import bisect


def best_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of total length <= capacity, best-fit decreasing."""
    bins: list[list[int]] = []
    room: dict[int, list[int]] = {}  # free space -> bins with exactly that much
    free: list[int] = []  # the distinct free spaces, sorted
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        size = min(lengths[index], capacity)
        at = bisect.bisect_left(free, size)
        if at < len(free):
            space = free[at]
            target = room[space].pop()
            if not room[space]:
                del room[space]
                free.pop(at)
        else:
            space, target = capacity, len(bins)
            bins.append([])
        bins[target].append(index)
        left = space - size
        if left not in room:
            room[left] = []
            bisect.insort(free, left)
        room[left].append(target)
    return bins


def pack(dataset, max_length: int):
    """Pack an encoded causal-LM dataset (input_ids, labels) into rows with position_ids."""
    from datasets import Dataset

    lengths = list(dataset["length"])
    rows = {"input_ids": [], "labels": [], "position_ids": [], "length": []}
    ids_column, labels_column = dataset["input_ids"], dataset["labels"]
    for group in best_fit(lengths, max_length):
        ids, labels, positions = [], [], []
        for index in sorted(group):  # keep the samples' original order within a row
            sample_ids = list(ids_column[index])[:max_length]
            ids += sample_ids
            labels += [-100, *list(labels_column[index])[1 : len(sample_ids)]]
            positions += range(len(sample_ids))
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
        rows["position_ids"].append(positions)
        rows["length"].append(len(ids))
    return Dataset.from_dict(rows)
