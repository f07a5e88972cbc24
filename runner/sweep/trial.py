"""One trial of a sweep: an ordinary run, in this process, whose validation scores feed the pruner.

The run directory is like any other (`finetune report`, `compare`, `resume` work on it). A pruned
trial stops right after the evaluation at which the pruner said so, at that step, and is marked
"stopped"; an interrupted one keeps its checkpoint, and the sweep resumes it from there rather than
from step 0.
"""

from __future__ import annotations

import gc
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.components import Reporter
from runner.errors import FinetuneError, RunInterrupted
from runner.plugins.manager import Plugins
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

    def start(self, run):
        """A continued trial: the pruner hears the scores the first part of the run measured (the
        run directory's log, rewound to the checkpoint it continues from)."""
        for record in RunDir(Path(run["run_dir"])).read_metrics_log():
            value = record.get(self.metric)
            measured = record.get("split") == "validation" and record.get("step") is not None
            if measured and not record.get("final") and isinstance(value, int | float):
                self.report(int(record["step"]), float(value))

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


def _notes_only(text: str, level: str = "info") -> None:
    """What the front door says while a trial runs: the sweep says what each trial did, in its own
    words; notes and warnings still show."""
    if level != "info":
        print(text, file=sys.stderr)


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
    """Run (or, with `resume`, continue) one trial's recipe in `run_path`, through the front door
    as any run. Interruption propagates (RunInterrupted) after the run directory recorded it; every
    other failure is the trial's."""
    from runner.running.starting import InProcess, run
    from runner.running.starting import resume as resume_run

    started = time.monotonic()
    extra = InProcess([pruning] if pruning else [], pruning.stop_reason if pruning else None, about)
    options = {"plugins": plugins, "in_process": extra, "trust_remote_code": trust_remote_code, "debug": debug,
               "say": _notes_only}  # fmt: skip
    try:
        outcome = resume_run(run_path, **options) if resume else run(recipe_path, output=run_path, **options)
    except FinetuneError as exc:  # a recipe error (an invalid combination), bad data
        return TrialResult("failed", error=exc.render(), seconds=time.monotonic() - started)
    except Exception as exc:  # a trial's crash is the trial's result; the study goes on
        if debug:
            traceback.print_exc()
        return TrialResult("failed", error=f"{type(exc).__name__}: {exc}", seconds=time.monotonic() - started)
    finally:
        free_memory()
    seconds = time.monotonic() - started
    if outcome.status == "interrupted":
        raise outcome.error or RunInterrupted(outcome.message or "interrupted")
    if outcome.status == "stopped":  # the pruner's reason, without the hint
        return TrialResult("pruned", error=getattr(outcome.error, "message", outcome.message), seconds=seconds)
    if outcome.status != "completed":  # a diverged loss
        return TrialResult("failed", error=outcome.message, seconds=seconds)
    try:
        return TrialResult("complete", objective(outcome.metrics, metric), metrics=outcome.metrics, seconds=seconds)
    except FinetuneError as exc:
        return TrialResult("failed", error=exc.render(), seconds=seconds)


def free_memory() -> None:
    """What a finished trial held (model, optimizer, data) goes before the next one is built."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
