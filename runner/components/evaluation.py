"""Metrics and audits: what judges predictions, data and the fine-tuned model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from runner.components.base import Component, RunContext
from runner.components.tasks import Task
from runner.options import Options

if TYPE_CHECKING:  # pragma: no cover - typing only
    from datasets import Dataset
    from transformers import PreTrainedModel


class Metric(Component):
    """Scores predictions against references."""

    kind = "metric"
    # Task `produces` values it understands; "text" scores generated answers of a task that
    # `generates` (computed after training, on the final evaluation only).
    consumes: ClassVar[frozenset[str]] = frozenset()
    greater_is_better: ClassVar[bool] = True

    def key(self) -> str:
        """The name its value has in results, unique within a recipe (e.g. "f1_macro")."""
        return self.name

    def prepare(self, ctx: RunContext) -> None:
        """Load what computing needs (an evaluate module) before training starts, so that a metric
        that cannot load fails the run early rather than at its first evaluation."""

    def compute(self, predictions, references) -> dict[str, float]:
        raise NotImplementedError

    def details(self, predictions, references, num_labels: int | None = None) -> dict[str, Any]:
        """Tables beside the numbers, for evaluation.json and the report, computed on the final
        evaluation only: e.g. {"confusion_matrix": {"matrix": [[...]]}} (rows true, columns predicted,
        in label-id order over `num_labels` classes; the core adds the label names)."""
        return {}

    def meaningless(self, references) -> str | None:
        """Why this metric says nothing about predictions against these references, or None.
        A metric that answers is left out of the results, and evaluation.json records why."""
        return None


GROUP_COLUMN = "group"  # an optional column naming each row's subgroup (map yours with `columns`)


@dataclass
class AuditResult:
    """What an audit found: shown by the reporters, kept in audits.json, the report and the model card."""

    passed: bool | None  # None: measured, with no threshold to judge it by
    summary: str  # one sentence a reader understands without the figures
    figures: dict[str, Any] = field(default_factory=dict)  # model audits: {"base": {...}, "finetuned": {...}}
    thresholds: dict[str, float] = field(default_factory=dict)  # the limits it was judged by
    examples: list[dict[str, Any]] = field(default_factory=list)  # rows worth reading (duplicates, flips)
    # A data audit's remedy: validation/test rows to leave out, by split, as indices into AuditData's
    # rows of that split (leakage with `drop = true`).
    drop: dict[str, list[int]] = field(default_factory=dict)


class AuditData:
    """The run's rows as audits see them: every source's split together, in the task's columns
    (plus `group` where the data has one), before tokenization."""

    def __init__(self, task: Task, parts: dict[str, list[tuple[Task, Dataset]]], where: Callable[[str, int], str]):
        self.task = task
        self._parts = parts  # split -> [(the source's task, its rows)]
        self._where = where

    def size(self, split: str) -> int:
        return sum(len(rows) for _, rows in self._parts.get(split, []))

    def texts(self, split: str) -> list[str]:
        """Each row as one text (`Task.row_text` of its source's task)."""
        return [task.row_text(row) for task, rows in self._parts.get(split, []) for row in rows]

    def column(self, split: str, name: str) -> list[Any] | None:
        """A column's values in row order, or None when some source lacks it."""
        parts = self._parts.get(split, [])
        if not parts or any(name not in rows.column_names for _, rows in parts):
            return None
        return [value for _, rows in parts for value in rows[name]]

    def where(self, split: str, index: int) -> str:
        """Where row `index` of `split` comes from, as the user finds it: "data/train.csv, row 12"."""
        return self._where(split, index)


class AuditSubject:
    """A model an audit measures: the untouched base model before training (`label` "base"), or
    the fine-tuned one ("finetuned")."""

    def __init__(self, label: str, model: PreTrainedModel, tokenizer, task: Task, max_length: int):
        self.label, self.model, self.tokenizer, self.task, self.max_length = label, model, tokenizer, task, max_length

    def predict(self, texts: list[str]) -> list[dict]:
        """The task's predictions for raw texts (classification: {"label", "score", "scores"})."""
        return self.task.predict(self.model, self.tokenizer, texts, self.max_length)

    def log_likelihoods(self, texts: list[str]) -> list[tuple[float, int]]:
        """Per text: (summed log-probability of its tokens, number of tokens scored). Language-model
        heads only; raises FinetuneError for others."""
        from runner.evaluation.scoring import log_likelihoods

        return log_likelihoods(self.model, self.tokenizer, texts, self.max_length)


class AuditOptions(Options):
    """Options every audit has."""

    name: str | None = Field(
        default=None, description="Its name in results (default: its type); needed to run two of one type."
    )


class Audit(Component):
    """Checks data or models for a problem (`[[audits]] type = ...`): leakage, bias, forgetting.

    A data audit implements `check_data`, run before training; a result that did not pass stops the
    run. A model audit implements `measure`, called on the base model before training and on the
    fine-tuned model after it, and `judge`, which turns both measurements into a result. An audit may
    also mitigate what it measures, by weighting or adding training rows."""

    kind = "audit"

    def key(self) -> str:
        """Its name in results: the recipe's `name` option if it has one, else its type."""
        return getattr(self.options, "name", None) or self.name

    def check_data(self, data: AuditData, ctx: RunContext) -> AuditResult | None:
        """Audit the rows alone, before anything is tokenized or trained."""
        return None

    def measure(self, subject: AuditSubject, data: AuditData, ctx: RunContext) -> dict[str, Any] | None:
        """Measure one model; return JSON-able figures, or None for a data-only audit."""
        return None

    def judge(self, base: dict[str, Any] | None, finetuned: dict[str, Any]) -> AuditResult:
        """The verdict from `measure`'s figures for the base model (None when it was not measured)
        and the fine-tuned one."""
        raise NotImplementedError

    def reweight(self, train: Dataset, task: Task) -> list[float] | None:
        """Mitigation: a training weight per row of `train` (mean 1), or None."""
        return None

    def augment(self, train: Dataset, task: Task) -> Dataset | None:
        """Mitigation: extra training rows in `train`'s columns, or None."""
        return None
