"""A run directory opened from Python: what the run recorded, and its model to use.

`open_run(path)` reads nothing heavy: status, metrics, evaluation and audits are JSON files read
when asked for. Loading the model (`load`), predicting, generating, evaluating again and
exporting go through runner.running.saved, as `finetune predict`, `generate`, `eval` and `export` do.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.storage.rundir import RunDir, read_json


def open_run(path: str | os.PathLike) -> FinishedRun:
    """The run directory `finetune run` (or `runner.run`) created at `path`; a FinetuneError when
    it is none."""
    return FinishedRun(RunDir.open(path))


@dataclass
class FinishedRun:
    """A run directory: what the run recorded (JSON files, read when asked for) and its model."""

    run_dir: RunDir

    @property
    def path(self) -> Path:
        return self.run_dir.path

    def _json(self, name: str) -> dict[str, Any]:
        path = self.run_dir.path / name
        return read_json(path) if path.is_file() else {}

    @property
    def status(self) -> str:
        """ "running", "completed", "interrupted", "stopped" or "failed" (status.json)."""
        return self.run_dir.status().get("state", "unknown")

    @property
    def metrics(self) -> dict[str, Any]:
        """Final metrics by split (metrics.json); empty until the run completed."""
        return self._json("metrics.json")

    @property
    def evaluation(self) -> dict[str, Any]:
        """Baselines beside the fine-tuned model, intervals, confusion matrices, diagnosis."""
        return self._json("evaluation.json")

    @property
    def audits(self) -> dict[str, Any]:
        return self._json("audits.json")

    @property
    def recipe(self) -> dict[str, Any]:
        """The run's recipe as it ran, every default resolved (recipe.resolved.toml)."""
        return tomllib.loads(self.run_dir.recipe.read_text(encoding="utf-8"))

    @property
    def model_dir(self) -> Path | None:
        """The final model, loadable with plain transformers or peft; None until the run completed."""
        return self.run_dir.model if self.run_dir.model.is_dir() else None

    @property
    def report(self) -> Path | None:
        path = self.run_dir.path / "report.html"
        return path if path.is_file() else None

    def load(self, debug: bool = False):
        """The run's recipe, task, tokenizer and model (`.model`, `.tokenizer`), loaded from model/."""
        from runner.running.saved import load_finished

        return load_finished(self.run_dir, debug)

    def predict(self, texts: list[str], debug: bool = False) -> list[dict[str, Any]]:
        """One prediction per text, as `finetune predict` writes them (label and scores, tags, ...)."""
        from runner.running.saved import predict_run

        return predict_run(self.run_dir, list(texts), debug=debug)

    def generate(self, prompts: list[str], max_new_tokens: int | None = None, debug: bool = False) -> list[dict]:
        """The answers of a language-model or instruction run to `prompts`."""
        from runner.running.saved import predict_run

        return predict_run(self.run_dir, list(prompts), debug=debug, max_new_tokens=max_new_tokens)

    def evaluate(self, split: str = "test", debug: bool = False) -> dict[str, float]:
        """Evaluate the model again on the run's `split`; also saved under evaluations/."""
        from runner.running.saved import evaluate_run

        return evaluate_run(self.run_dir, split, debug=debug).metrics

    def export(self, merge: bool = False, output: str | os.PathLike | None = None, debug: bool = False) -> Path:
        """Write the model as a standalone directory; `merge`: adapters folded into the base."""
        from runner.running.saved import export_run

        return export_run(self.run_dir, merge, Path(output) if output else None, debug=debug)
