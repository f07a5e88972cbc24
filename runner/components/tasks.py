"""Tasks: how rows become model inputs and labels, and outputs become predictions (`[task]`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from runner.components.base import Component
from runner.components.data import RawSplit
from runner.components.models import ModelSpec
from runner.options import Options

if TYPE_CHECKING:  # pragma: no cover - typing only
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class Task(Component):
    """Turns rows into model inputs and model outputs into predictions and metric inputs."""

    kind = "task"
    # What predictions look like, which decides the metrics that fit: "classes", "scores", "tokens", or
    # "preferences" (per pair of a chosen and a rejected answer, for preference trainers such as dpo).
    produces: ClassVar[str] = ""
    head: ClassVar[str] = ""  # the ModelSpec head it asks for, known before the model is built
    columns: ClassVar[tuple[str, ...]] = ("text",)  # columns every row must have
    optional_columns: ClassVar[tuple[str, ...]] = ()
    stratify_column: ClassVar[str | None] = None  # split fractions keep this column's proportions
    default_metrics: ClassVar[tuple[dict, ...]] = ()

    def __init__(self, options: Options):
        super().__init__(options)
        self.notes: list[str] = []  # what encoding did that the user should know (rows dropped)

    def fit(self, splits: dict[str, list[RawSplit]]) -> None:
        """Learn what the task needs from the data (the label set) and check every row, raising
        DataError naming the origin and row of the first bad ones."""

    def training_texts(self, dataset: Dataset) -> Iterator[str]:
        """The texts of the training rows, for tokenizers that are trained on the data."""
        for column in ("text", "text_pair"):
            if column in dataset.column_names:
                yield from dataset[column]

    def prepare_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> str | None:
        """Adapt the tokenizer before anything is encoded (a chat template, marker tokens); what is
        set here is saved with it. Return a note for the user, or None."""
        return None

    def model_spec(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> ModelSpec:
        raise NotImplementedError

    def encode(self, dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
        """Tokenize: return a dataset of model inputs with `labels` and a `length` column."""
        raise NotImplementedError

    def collator(self, tokenizer: PreTrainedTokenizerBase, pad_to: int | None) -> Callable:
        """Batch encoded rows. pad_to None pads each batch to its longest row."""
        raise NotImplementedError

    def preprocess_logits(self, logits, labels):
        """Reduce logits during evaluation so that only what metrics need is kept in memory."""
        return logits

    def metric_inputs(self, predictions, label_ids) -> tuple[Any, Any]:
        """Turn gathered evaluation outputs into (predictions, references) for metrics."""
        raise NotImplementedError

    def predict(self, model: PreTrainedModel, tokenizer, texts: list[str], max_length: int) -> list[dict]:
        """Predictions for raw texts, for `finetune predict` (and `generate` for text tasks)."""
        raise NotImplementedError

    # Answers prompts, so that text metrics (`consumes = {"text"}`: exact match, BLEU, ROUGE) and a
    # few-shot baseline apply: the task implements `prompts` and `generate`.
    generates: ClassVar[bool] = False

    def row_text(self, row: dict) -> str:
        """A row as one text, for audits that compare rows (leakage) or rewrite them (bias)."""
        return "\n".join(row[c] for c in ("text", "text_pair") if isinstance(row.get(c), str))

    def prompts(self, dataset: Dataset, shots: list[dict] | None = None, tokenizer=None) -> list[tuple[str, str]]:
        """For a generating task: each row's (prompt as the model is given it, reference answer).
        `shots` are training rows shown, solved, before each prompt (few-shot prompting); the
        tokenizer renders chat templates."""
        raise NotImplementedError

    def generate(self, model: PreTrainedModel, tokenizer, prompts: list[str], max_length: int, **options) -> list[str]:
        """Greedy answers to prompts made by `prompts`, without the prompt. `options`: the task's
        generation settings, such as max_new_tokens."""
        raise NotImplementedError

    def samples(self, model: PreTrainedModel, tokenizer, max_length: int) -> list[dict]:
        """Outputs worth reading after training (generated answers to the recipe's prompts);
        written to samples.jsonl in the run directory."""
        return []

    def preview(self, rows: list[dict], tokenizer, max_length: int) -> list[list[tuple[str, bool]]] | None:
        """For `finetune plan`: each row as the text the model sees, in (text, trained) pieces."""
        return None

    def state(self) -> dict[str, Any]:
        """What must be saved with the model to restore this task (label names)."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Restore from `state()` when loading a finished run."""
