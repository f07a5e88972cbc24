"""One trial of a sweep: an ordinary run, in this process, whose validation scores feed the pruner.

The run directory is like any other (`finetune report`, `compare`, `resume` work on it). A pruned
trial stops right after the evaluation at which the pruner said so, at that step, and is marked
"stopped"; an interrupted one keeps its checkpoint, and the sweep resumes it from there rather than
from step 0.
"""

from __future__ import annotations

import gc
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.components import Reporter
from runner.errors import FinetuneError, RunInterrupted, RunStopped
from runner.plugins.manager import Plugins
from runner.recipe.build_check import check_build
from runner.recipe.load import load_recipe
from runner.recipe.validate import validate
from runner.storage import checkpoints
from runner.storage.rundir import RunDir


@dataclass
class TrialResult:
    state: str  # "complete", "pruned", "failed" or "interrupted"
    value: float | None = None
    error: str | None = None
    metrics: dict[str, Any] | None = None
    seconds: float = 0.0


class Pruning(Reporter):
    """Reports each validation score to the Optuna trial and remembers when the pruner says stop."""

    name = "sweep"

    def __init__(self, trial, metric: str):
        super().__init__(None)
        self.trial, self.metric = trial, metric
        self.reason: str | None = None
        self.reported: set[int] = set()

    def report(self, step: int, value: float) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        if step in self.reported:  # Optuna keeps the first value of a step; a resume logs it again
            return
        self.reported.add(step)
        try:
            self.trial.report(value, step)
        except UpdateFinishedTrialError:  # another worker gave the trial up (no heartbeat) and queued it
            self.reason = "the study gave this trial up (its heartbeats stopped) and queued it again"
            return
        if self.trial.should_prune():
            self.reason = f"validation {self.metric} {value:.4g} at step {step} trailed the other trials"

    def evaluated(self, split, step, metrics):
        if split == "validation" and step is not None and isinstance(metrics.get(self.metric), int | float):
            self.report(step, float(metrics[self.metric]))

    def stop_reason(self) -> str | None:
        return self.reason


def objective(metrics: dict[str, Any], metric: str) -> float:
    """The trial's value: its final validation score (the best checkpoint's, with keep_best)."""
    split = metrics.get("validation")
    if not isinstance(split, dict):
        hint = "give data.split a validation share"
        raise FinetuneError("the run has no validation split to score the trial on", hint=hint)
    value = split.get(metric)
    if not isinstance(value, int | float):
        raise FinetuneError(f"the run's validation results have no '{metric}' (they have: {', '.join(split)})")
    return float(value)


def _load(path: Path, plugins: Plugins, overrides: list[str] | None = None):
    recipe = validate(load_recipe(path, overrides), plugins.registry)
    check_build(recipe)
    return recipe


def run_trial(
    recipe_path: Path | None,
    run_path: Path,
    plugins: Plugins,
    pruning: Pruning | None,
    *,
    metric: str,
    about: dict[str, Any],
    resume: bool = False,
    trust_remote_code: bool = False,
    debug: bool = False,
) -> TrialResult:
    """Run (or, with `resume`, continue) one trial's recipe in `run_path`. Interruption propagates
    (RunInterrupted) after the run directory recorded it; every other failure is the trial's."""
    from runner.pipeline.run import execute

    started = time.monotonic()
    try:
        run_dir, resume_from = RunDir(run_path), None
        if resume:
            recipe = _load(run_dir.recipe, plugins)
            resume_from, _ = checkpoints.resume_point(run_dir.checkpoints)
            run_dir.rewind_metrics(checkpoints.step_of(resume_from) if resume_from else -1)
            if pruning is not None:  # the pruner hears the scores the first part of the run measured
                for record in run_dir.read_metrics_log():
                    value = record.get(metric)
                    if record.get("split") == "validation" and record.get("step") is not None and not record.get(
                        "final"
                    ) and isinstance(value, int | float):  # fmt: skip
                        pruning.report(int(record["step"]), float(value))
        else:
            recipe = _load(recipe_path, plugins)
            run_path.mkdir(parents=True, exist_ok=False)
        result = execute(
            recipe,
            run_dir,
            plugins,
            trust_remote_code=trust_remote_code,
            resume_from=resume_from,
            debug=debug,
            observers=[pruning] if pruning is not None else [],
            stop_when=pruning.stop_reason if pruning is not None else None,
            about=about,
        )
        metrics = result.metrics
        del result
        return TrialResult("complete", objective(metrics, metric), metrics=metrics, seconds=time.monotonic() - started)
    except RunStopped as exc:
        return TrialResult("pruned", error=exc.message, seconds=time.monotonic() - started)
    except RunInterrupted:
        raise
    except FinetuneError as exc:  # a recipe error (an invalid combination), bad data, a diverged loss
        return TrialResult("failed", error=exc.render(), seconds=time.monotonic() - started)
    except Exception as exc:  # a trial's crash is the trial's result; the study goes on
        if debug:
            traceback.print_exc()
        return TrialResult("failed", error=f"{type(exc).__name__}: {exc}", seconds=time.monotonic() - started)
    finally:
        free_memory()


def free_memory() -> None:
    """What a finished trial held (model, optimizer, data) goes before the next one is built."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
