"""Task `token_classification`: a tag for every word (named entities in BIO tags, for example).

Rows hold `tokens` (the words) and `tags` (one tag per word, as names or as ids into `labels`).
Words are split further by the tokenizer; the tag goes to a word's first sub-word and the others
are not trained on (`label_all_subwords = true` tags them too, a B- tag continuing as I-), and
predictions are read from first sub-words, so they come back one per word. Evaluation is at the
entity level (see the `entity_f1` metric).
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import Field

from runner import DataError, ModelSpec, Options, PadCollator, Task, hookimpl


class TokenClassificationOptions(Options):
    labels: list[str] | None = Field(
        default=None, description="Tag names in id order (default: the tags of the training split, 'O' first)."
    )
    label_all_subwords: bool = Field(default=False, description="Train every sub-word of a word, not only the first.")


def _continuation(tag: str) -> str:
    return "I-" + tag[2:] if tag.startswith("B-") else tag


class TokenClassification(Task):
    """Token classification (BIO named entities): one tag per word, scored per entity."""

    name = "token_classification"
    Options = TokenClassificationOptions
    produces = "tags"
    head = "token_classification"
    columns = ("tokens", "tags")
    default_metrics = (
        {"type": "entity_f1"},
        {"type": "entity_precision"},
        {"type": "entity_recall"},
        {"type": "token_accuracy"},
    )

    def __init__(self, options):
        super().__init__(options)
        self.labels: list[str] = list(options.labels or [])

    def fit(self, splits) -> None:
        if not self.labels:
            found = set()
            for raw in splits["train"]:
                for i, row in enumerate(raw.dataset):
                    self._check(row, raw, i)
                    found.update(t for t in row["tags"] if isinstance(t, str))
            self.labels = sorted(found, key=lambda t: (t != "O", t[2:], t))
        known = set(self.labels)
        for raws in splits.values():
            for raw in raws:
                for i, row in enumerate(raw.dataset):
                    self._check(row, raw, i)
                    for tag in row["tags"]:
                        if not (tag in known or (isinstance(tag, int) and 0 <= tag < len(self.labels))):
                            close = difflib.get_close_matches(str(tag), self.labels, n=1)
                            hint = f"did you mean '{close[0]}'? or list every tag in task.labels" if close else None
                            raise DataError(f"{raw.where(i)}: tag {tag!r} is not one of {', '.join(self.labels)}", hint)

    def _check(self, row, raw, i) -> None:
        tokens, tags = row["tokens"], row["tags"]
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
            raise DataError(f"{raw.where(i)}: 'tokens' must be a non-empty list of words")
        if not isinstance(tags, list) or len(tags) != len(tokens):
            raise DataError(f"{raw.where(i)}: {len(tokens)} words but {len(tags or [])} tags")

    def _id(self, tag) -> int:
        return tag if isinstance(tag, int) else self.labels.index(tag)

    def model_spec(self, tokenizer, max_length: int) -> ModelSpec:
        return ModelSpec(
            head=self.head,
            vocab_size=len(tokenizer),
            max_length=max_length,
            pad_token_id=tokenizer.pad_token_id,
            num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)),
            label2id={name: i for i, name in enumerate(self.labels)},
        )

    def align(self, word_ids: list[int | None], tags: list) -> list[int]:
        """A label per sub-word: the word's tag on its first sub-word, -100 (or the continuation) after."""
        labels, previous = [], None
        for word in word_ids:
            if word is None:
                labels.append(-100)
            elif word != previous:
                labels.append(self._id(tags[word]))
            elif self.options.label_all_subwords:
                labels.append(self.labels.index(_continuation(self.labels[self._id(tags[word])])))
            else:
                labels.append(-100)
            previous = word
        return labels

    def encode(self, dataset, tokenizer, max_length: int):
        def fn(batch):
            enc = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
            enc["labels"] = [self.align(enc.word_ids(i), tags) for i, tags in enumerate(batch["tags"])]
            enc["length"] = [len(ids) for ids in enc["input_ids"]]
            return enc

        return dataset.map(fn, batched=True, remove_columns=dataset.column_names, desc="tokenizing")

    def collator(self, tokenizer, pad_to: int | None):
        return PadCollator(tokenizer.pad_token_id, pad_to=pad_to, sequence_labels=True)

    def preprocess_logits(self, logits, labels):
        return (logits[0] if isinstance(logits, tuple) else logits).argmax(-1)

    def metric_inputs(self, predictions, label_ids):
        """Tags of the trained positions (first sub-words), one list per sequence."""
        predicted, reference = [], []
        for pred_row, label_row in zip(predictions, label_ids, strict=True):
            keep = [(int(p), int(t)) for p, t in zip(pred_row, label_row, strict=True) if t != -100]
            predicted.append([self.labels[p] for p, _ in keep])
            reference.append([self.labels[t] for _, t in keep])
        return predicted, reference

    def predict(self, model, tokenizer, texts, max_length):
        import torch

        model.eval()
        out = []
        for text in texts:
            words = text.split()
            enc = tokenizer(
                words, is_split_into_words=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            with torch.no_grad():
                ids = model(**enc.to(model.device)).logits[0].argmax(-1).tolist()
            tags, seen = ["O"] * len(words), set()
            for position, word in enumerate(enc.word_ids()):
                if word is not None and word not in seen:
                    seen.add(word)
                    tags[word] = self.labels[ids[position]]
            out.append({"tokens": words, "tags": tags})
        return out

    def state(self) -> dict[str, Any]:
        return {"labels": self.labels}

    def restore(self, state: dict[str, Any]) -> None:
        self.labels = list(state["labels"])

    def training_texts(self, dataset):
        for tokens in dataset["tokens"]:
            yield " ".join(tokens)


@hookimpl
def register_tasks(register):
    register(TokenClassification)
