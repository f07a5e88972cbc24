"""Tokenization, done once and cached.

The cache key is the content of the split (not its file name), the tokenizer's full definition
(its chat template included), the task and its options, and the maximum length: change any of
them and the split is encoded again; change nothing and a rerun or a resume reads the cached
Arrow files instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.components import SPLITS, Task
from runner.errors import FinetuneError
from runner.evaluation.audits import WEIGHT
from runner.pipeline.data import ORIGIN_COLUMNS

CACHE_VERSION = 2  # 2: the task's notes (rows dropped, cut) kept with the rows
NOTES = "notes.json"


def default_cache_dir() -> Path:
    env = os.environ.get("FINETUNE_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "finetune-runner" if xdg else Path.home() / ".cache" / "finetune-runner"


class _HashSink:
    def __init__(self):
        self.h = hashlib.sha256()
        self.closed = False

    def write(self, data) -> int:
        self.h.update(data)
        return len(data)

    def flush(self) -> None:
        pass


def content_hash(dataset) -> str:
    """SHA-256 of a dataset's rows and schema (Arrow IPC stream of its table)."""
    import pyarrow as pa

    table = dataset.flatten_indices().data.table if dataset._indices is not None else dataset.data.table
    sink = _HashSink()
    with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), table.schema) as writer:
        for batch in table.to_batches(max_chunksize=65536):
            writer.write_batch(batch)
    return sink.h.hexdigest()


def tokenizer_hash(tokenizer) -> str:
    """SHA-256 of everything that decides how a tokenizer encodes text."""
    parts = {
        "class": type(tokenizer).__name__,
        "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "padding_side": tokenizer.padding_side,
        "truncation_side": tokenizer.truncation_side,
        # an instruction task with template = "tokenizer" formats rows with it: a changed template
        # must not read rows formatted with the old one from the cache
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        # encoding sets these on the backend as a side effect; they are call arguments, not identity
        definition.pop("truncation", None)
        definition.pop("padding", None)
        parts["backend"] = definition
    else:
        parts["vocab"] = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def encode_splits(
    task: Task, tokenizer, splits: dict, max_length: int, cache_dir: Path, use_cache: bool = True
) -> tuple[dict, dict[str, bool]]:
    """Encode every split with the task; return the encoded splits and which came from the cache."""
    from datasets import load_from_disk

    common = {
        "version": CACHE_VERSION,
        "task": task.name,
        "task_options": task.options.model_dump(mode="json"),
        "tokenizer": tokenizer_hash(tokenizer),
        "max_length": max_length,
    }
    encoded, cached = {}, {}
    for name, dataset in splits.items():
        rows = dataset.remove_columns([c for c in ORIGIN_COLUMNS if c in dataset.column_names])
        key = hashlib.sha256(json.dumps({**common, "data": content_hash(rows)}, sort_keys=True).encode()).hexdigest()
        path = cache_dir / "encoded" / key[:32]
        if use_cache and (path / "dataset_info.json").is_file():
            encoded[name], cached[name] = load_from_disk(str(path)), True
            # what encoding dropped or cut is said again: a cached split is no quieter than a fresh one
            task.notes += json.loads((path / NOTES).read_text(encoding="utf-8"))
            continue
        before = len(task.notes)
        result = _encode(task, rows, tokenizer, max_length)
        cached[name] = False
        if use_cache:
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            result.save_to_disk(str(tmp))
            (tmp / NOTES).write_text(json.dumps(task.notes[before:]), encoding="utf-8")
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
            result = load_from_disk(str(path))  # memory-mapped, like a cache hit
        encoded[name] = result
    return encoded, cached


def _encode(task: Task, rows, tokenizer, max_length: int):
    """The task's encoding; training weights (a `_weight` column, from an audit's reweighting)
    become the `weight` column the trainer weights each row's loss by."""
    if WEIGHT not in rows.column_names:
        return task.encode(rows, tokenizer, max_length)
    weights = rows[WEIGHT]
    result = task.encode(rows.remove_columns(WEIGHT), tokenizer, max_length)
    if len(result) != len(weights):
        raise FinetuneError(
            f"task '{task.name}' encoded {len(weights)} rows into {len(result)}: its rows cannot be weighted",
            hint="reweighting needs a task that encodes each row as one row (classification)",
        )
    return result.add_column("weight", [float(w) for w in weights])


@dataclass
class Encoded:
    """Encoded splits: all sources together (the training split mixed by weight), and each source
    on its own (for per-source metrics)."""

    splits: dict = field(default_factory=dict)
    parts: dict = field(default_factory=dict)  # split -> [(source name, dataset)]
    from_cache: set = field(default_factory=set)  # "split/source" encoded earlier
    notes: list = field(default_factory=list)


def mix(parts: list[tuple[Any, Any]], seed: int):
    """The training split: sources concatenated, or, when they have weights, resampled so that each
    source's share of the rows is its share of the weights (the total stays the sum of their sizes;
    a small source is repeated, a large one subsampled, both seeded)."""
    import numpy as np
    from datasets import concatenate_datasets

    datasets = [ds for _, ds in parts]
    weights = [source.weight for source, _ in parts]
    if len(parts) > 1 and all(w is not None for w in weights):
        total, mass = sum(len(ds) for ds in datasets), sum(weights)
        rng = np.random.default_rng(seed)
        resampled = []
        for ds, weight in zip(datasets, weights, strict=True):
            n = max(1, round(total * weight / mass))
            index = rng.permutation(len(ds))[:n] if n <= len(ds) else rng.integers(0, len(ds), n)
            resampled.append(ds.select(np.sort(index)))
        datasets = resampled
    return datasets[0] if len(datasets) == 1 else concatenate_datasets(datasets).flatten_indices()


def encode_sources(data, tokenizer, max_length: int, cache_dir: Path, seed: int, splits=None) -> Encoded:
    """Encode every source's splits with the source's task; mix the training split by weight."""
    from datasets import concatenate_datasets

    out = Encoded()
    for split in splits or [s for s in SPLITS if data.parts(s)]:
        parts = []
        for source in data.parts(split):
            encoded, cached = encode_splits(
                source.task, tokenizer, {split: source.splits[split]}, max_length, cache_dir
            )
            if cached[split]:
                out.from_cache.add(f"{split}/{source.name}")
            parts.append((source, encoded[split]))
            out.notes += [f"{source.name}: {note}" for note in source.task.notes]
            source.task.notes.clear()
        out.parts[split] = [(source.name, ds) for source, ds in parts]
        if split == "train":
            out.splits[split] = mix(parts, seed)
        else:
            datasets = [ds for _, ds in parts]
            out.splits[split] = datasets[0] if len(datasets) == 1 else concatenate_datasets(datasets)
    return out
