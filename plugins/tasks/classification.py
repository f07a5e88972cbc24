"""Tasks `classification` (one label per text) and `regression` (one number per text).

Labels may be strings ("positive") or integers. The label set is the recipe's `labels`, or the
labels of the training split; a row whose label is outside it is an error naming its file and
row. Label names and ids are stored in the model config (`id2label`), where plain transformers
finds them.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from pydantic import Field, field_validator

from runner import DataError, ModelSpec, Options, PadCollator, Task, hookimpl


class ClassificationOptions(Options):
    labels: list[str] | None = Field(
        default=None,
        description="Label names in id order. Integer labels in the data are ids into this list. "
        "Default: the labels found in the training split, sorted.",
    )

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels):
        if labels is not None:
            if len(labels) < 2:
                raise ValueError("a classification needs at least 2 labels")
            if len(set(labels)) != len(labels):
                raise ValueError("labels must be distinct")
        return labels


class _TextTask(Task):
    optional_columns = ("text_pair",)

    def collator(self, tokenizer, pad_to: int | None):
        return PadCollator(tokenizer.pad_token_id, pad_to=pad_to)

    def _encode(self, dataset, tokenizer, max_length: int, label_of):
        def fn(batch):
            args = (batch["text"], batch["text_pair"]) if "text_pair" in batch else (batch["text"],)
            out = tokenizer(*args, truncation=True, max_length=max_length)  # padding: per batch, later
            out["labels"] = [label_of(v) for v in batch["label"]]
            out["length"] = [len(ids) for ids in out["input_ids"]]
            return out

        return dataset.map(fn, batched=True, remove_columns=dataset.column_names, desc="tokenizing")

    def _logits(self, model, tokenizer, texts: list[str], max_length: int, batch: int = 32):
        """The model's float32 logits for raw texts, a batch at a time, on the CPU."""
        import torch

        model.eval()
        for start in range(0, len(texts), batch):
            enc = tokenizer(
                texts[start : start + batch],
                truncation=True,
                max_length=max_length,
                padding=True,
                padding_side="right",  # as in training, whatever side the tokenizer was saved with
                return_tensors="pt",
            ).to(model.device)
            with torch.no_grad():
                yield model(**enc).logits.float().cpu()


class Classification(_TextTask):
    """Sequence classification: one label per text (or text pair)."""

    name = "classification"
    Options = ClassificationOptions
    produces = "classes"
    head = "sequence_classification"
    columns = ("text", "label")
    stratify_column = "label"
    default_metrics = (
        {"type": "accuracy"},
        {"type": "f1", "average": "macro"},
        {"type": "f1", "average": "weighted"},
        {"type": "precision", "average": "macro"},
        {"type": "recall", "average": "macro"},
    )

    def __init__(self, options):
        super().__init__(options)
        self.labels: list[str] = list(options.labels or [])
        self.ints_are_ids = False

    # -- labels ----------------------------------------------------------------------------------
    def fit(self, splits) -> None:
        train = splits["train"]
        feature_names = None
        for raw in train:
            feature = raw.dataset.features.get("label")
            names = getattr(feature, "names", None)  # a datasets ClassLabel
            if names:
                feature_names = list(names)
        if not self.labels and feature_names:
            self.labels, self.ints_are_ids = feature_names, True
        elif self.labels:
            self.ints_are_ids = True
        else:
            found: set = set()
            for raw in train:
                for i, value in enumerate(raw.dataset["label"]):
                    self._check_type(value, raw, i)
                    found.add(value)
            if any(isinstance(v, str) for v in found) and any(not isinstance(v, str) for v in found):
                raise DataError(f"{train[0].origin}: labels mix text and numbers; use one kind")
            ordered = sorted(found)
            self.labels = [str(v) for v in ordered]
            if len(self.labels) < 2:
                raise DataError(
                    f"{train[0].origin}: the training data has only one label ({self.labels[0]!r})",
                    hint="a classifier needs at least two",
                )
        index = {name: i for i, name in enumerate(self.labels)}
        for split, raws in splits.items():
            for raw in raws:
                for i, value in enumerate(raw.dataset["label"]):
                    self._check_type(value, raw, i)
                    if self._id(value, index) is None:
                        close = difflib.get_close_matches(str(value), self.labels, n=1)
                        hint = f"did you mean '{close[0]}'? " if close else ""
                        raise DataError(
                            f"{raw.where(i)}: label {value!r} is not one of the labels: {', '.join(self.labels)}",
                            hint=f"{hint}or list every label in task.labels"
                            if split != "train" or self.options.labels
                            else None,
                        )

    def _check_type(self, value, raw, i) -> None:
        if value is None:
            raise DataError(f"{raw.where(i)}: the label is empty")
        if isinstance(value, float | bool):
            raise DataError(
                f"{raw.where(i)}: label {value!r} is a number with a fraction",
                hint="use task type 'regression' for numeric targets",
            )

    def _id(self, value, index) -> int | None:
        if isinstance(value, int) and self.ints_are_ids:
            return value if 0 <= value < len(self.labels) else None
        return index.get(str(value))

    # -- model -------------------------------------------------------------------------------------
    def model_spec(self, tokenizer, max_length: int) -> ModelSpec:
        return ModelSpec(
            head=self.head,
            vocab_size=len(tokenizer),
            max_length=max_length,
            pad_token_id=tokenizer.pad_token_id,
            num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)),
            label2id={name: i for i, name in enumerate(self.labels)},
            problem_type="single_label_classification",
        )

    def encode(self, dataset, tokenizer, max_length: int):
        index = {name: i for i, name in enumerate(self.labels)}
        return self._encode(dataset, tokenizer, max_length, lambda v: self._id(v, index))

    def metric_inputs(self, predictions, label_ids):
        import numpy as np

        logits = predictions[0] if isinstance(predictions, tuple) else predictions
        return np.asarray(logits).argmax(-1), np.asarray(label_ids)

    def predict(self, model, tokenizer, texts, max_length):
        out = []
        for logits in self._logits(model, tokenizer, texts, max_length):
            for row in logits.softmax(-1):
                best = int(row.argmax())
                out.append(
                    {
                        "label": self.labels[best],
                        "score": round(float(row[best]), 6),
                        "scores": {name: round(float(p), 6) for name, p in zip(self.labels, row, strict=True)},
                    }
                )
        return out

    def state(self) -> dict[str, Any]:
        return {"labels": self.labels}

    def restore(self, state: dict[str, Any]) -> None:
        self.labels = list(state["labels"])
        self.ints_are_ids = True


class RegressionOptions(Options):
    pass


class Regression(_TextTask):
    """Sequence regression: one number per text (mean squared error loss)."""

    name = "regression"
    Options = RegressionOptions
    produces = "scores"
    head = "sequence_classification"
    columns = ("text", "label")
    default_metrics = ({"type": "mse"}, {"type": "mae"})

    def fit(self, splits) -> None:
        for raws in splits.values():
            for raw in raws:
                for i, value in enumerate(raw.dataset["label"]):
                    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                        raise DataError(f"{raw.where(i)}: label {value!r} is not a finite number")

    def model_spec(self, tokenizer, max_length: int) -> ModelSpec:
        return ModelSpec(
            head=self.head,
            vocab_size=len(tokenizer),
            max_length=max_length,
            pad_token_id=tokenizer.pad_token_id,
            num_labels=1,
            problem_type="regression",
        )

    def encode(self, dataset, tokenizer, max_length: int):
        return self._encode(dataset, tokenizer, max_length, float)

    def metric_inputs(self, predictions, label_ids):
        import numpy as np

        values = predictions[0] if isinstance(predictions, tuple) else predictions
        return np.asarray(values).reshape(-1), np.asarray(label_ids).reshape(-1)

    def predict(self, model, tokenizer, texts, max_length):
        return [
            {"value": round(float(v), 6)}
            for logits in self._logits(model, tokenizer, texts, max_length)
            for v in logits.reshape(-1)
        ]


@hookimpl
def register_tasks(register):
    register(Classification)
    register(Regression)
