"""Reporters: what shows a run's progress (`[[reporters]]`)."""

from __future__ import annotations

from typing import Any

from runner.components.base import Component


class Reporter(Component):
    """Shows a run's progress. Every method has a do-nothing default; override what you show."""

    kind = "reporter"

    def start(self, run: dict[str, Any]) -> None:
        """The run begins: its name, directory and recipe summary."""

    def stage(self, text: str) -> None:
        """A preparation stage begins ("loading data", "tokenizing")."""

    def message(self, text: str, level: str = "info") -> None:
        """Something the user should read (level "info" or "warning")."""

    def progress(self, label: str, done: int, total: int) -> None:
        """Long work outside training advanced: `done` of `total` items of `label` ("base model,
        test: answering"). Called with done = 0 when it starts and done = total when it ends."""

    def train_begin(self, total_steps: int, start_step: int) -> None:
        """Training starts, or resumes at `start_step`."""

    def log(self, step: int, values: dict[str, float]) -> None:
        """Training figures at an optimizer step (loss, learning_rate, epoch)."""

    def evaluated(self, split: str, step: int | None, metrics: dict[str, float]) -> None:
        """An evaluation finished; step is None after training."""

    def train_end(self) -> None:
        """Training stopped (finished, interrupted or failed)."""

    def audited(self, name: str, passed: bool | None, summary: str) -> None:
        """An audit's verdict: passed True/False, or None when it only measured."""

    def finish(self, status: str, summary: dict[str, Any]) -> None:
        """The run is over: status "completed", "interrupted" or "failed", and its final metrics."""
