"""What a study found, from its storage: the trials, the best settings, parameter importances and
the seed repeats; written as sweep.html and best.toml (the best trial's recipe, to run again)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import tomli_w

from runner.storage.rundir import atomic_write, read_json
from runner.sweep import space
from runner.sweep.study import Setup, open_storage, quiet_optuna
from runner.sweep.worker import SEEDS

STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


def _trial(t, continued_by: dict[int, int]) -> dict[str, Any]:
    attrs = t.user_attrs
    run_dir = attrs.get("run_dir")
    report = Path(run_dir) / "report.html" if run_dir else None
    error = attrs.get("error")
    if t.number in continued_by:
        why = "interrupted" if attrs.get("interrupted") else "its worker stopped (no heartbeat, or its process gone)"
        error = f"{why}; its settings were queued again: trial {continued_by[t.number]} continues it"
    elif attrs.get("interrupted"):
        error = "interrupted; its settings were queued again"
    return {
        "number": t.number,
        "state": STATES.get(t.state.name, t.state.name.lower()),
        "params": attrs.get("settings", dict(t.params)),
        "value": t.value if t.value is not None and math.isfinite(t.value) else None,
        "intermediate": {str(step): value for step, value in sorted(t.intermediate_values.items())},
        "duration_s": t.duration.total_seconds() if t.duration else None,
        "run_dir": run_dir,
        "report": str(report) if report is not None and report.is_file() else None,
        "error": error,
        "host": attrs.get("host"),
    }


def _importances(study) -> tuple[dict[str, float] | None, str | None]:
    optuna = quiet_optuna()
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return None, "needs at least 2 complete trials"
    try:
        found = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as exc:  # e.g. every trial had the same settings
        return None, f"not computable: {exc}"
    return {key: float(value) for key, value in found.items()}, None


def _spread(values: list[float]) -> dict[str, Any]:
    return {
        "values": values,
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else 0.0 if values else None,
    }


def _seeds(setup: Setup, storage, best: int | None) -> dict[str, Any] | None:
    """The repeats of the best trial (those of a trial that was best before do not mix in)."""
    optuna = quiet_optuna()
    if best is None or setup.name + SEEDS not in optuna.study.get_all_study_names(storage):
        return None
    study = optuna.load_study(study_name=setup.name + SEEDS, storage=storage)
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    done = [t for t in done if t.user_attrs.get("best_trial") == best]
    if not done:
        return None
    done.sort(key=lambda t: t.params.get("run.seed", 0))
    tests: dict[str, list[float]] = {}
    for t in done:
        metrics_file = Path(t.user_attrs.get("run_dir", "")) / "metrics.json"
        test = read_json(metrics_file).get("test", {}) if metrics_file.is_file() else {}
        for key, value in test.items() if isinstance(test, dict) else ():
            if isinstance(value, int | float) and not isinstance(value, bool):
                tests.setdefault(key, []).append(float(value))
    return {
        "seeds": [t.params.get("run.seed") for t in done],
        "metric": f"validation.{setup.metric}",
        **_spread([float(t.value) for t in done]),
        # only metrics every repeat measured: a mean over some of them would mislead
        "test": {k: _spread(v) for k, v in tests.items() if len(v) == len(done)},
        "runs": [t.user_attrs.get("run_dir") for t in done],
        "best_trial": best,
    }


def summarize(setup: Setup) -> dict[str, Any]:
    optuna = quiet_optuna()
    storage = open_storage(setup.storage)
    study = optuna.load_study(study_name=setup.name, storage=storage)
    every = study.get_trials(deepcopy=False)
    continued_by = {int(t.user_attrs["continues"]): t.number for t in every if "continues" in t.user_attrs}
    trials = [_trial(t, continued_by) for t in every if not t.user_attrs.get("surplus")]
    complete = [t for t in trials if t["state"] == "complete" and t["value"] is not None]
    pick = max if setup.direction == "maximize" else min
    best = pick(complete, key=lambda t: t["value"]) if complete else None
    importances, note = _importances(study)
    return {
        "name": setup.name,
        "recipe": setup.recipe,
        "directory": str(setup.directory),
        "metric": f"validation.{setup.metric}",
        "direction": setup.direction,
        "storage": setup.storage_label,
        "sampler": setup.options.sampler,
        "pruner": setup.options.pruner,
        "target_trials": setup.target,
        "space": {key: entry.model_dump(exclude_none=True) for key, entry in setup.options.space.items()},
        "trials": trials,
        "best": {k: best[k] for k in ("number", "params", "value", "run_dir")} if best else None,
        "importances": importances,
        "importances_note": note,
        "seeds": _seeds(setup, storage, best["number"] if best else None),
        "best_recipe": str(setup.directory / "best.toml") if best else None,
    }


def write_outputs(setup: Setup, registry) -> dict[str, Any]:
    """sweep.html and best.toml from the study as it stands (every worker rewrites them as it goes)."""
    from runner.sweep.report_page import write_sweep_report

    found = summarize(setup)
    best = found["best"]
    if best is not None:
        chosen = space.build(setup.base, best["params"], registry)
        header = (
            f"# The best settings of study '{setup.name}': trial {best['number']}, "
            f"{found['metric']} = {best['value']:.6g} ({setup.direction}).\n# Run it again: finetune run best.toml\n"
        )
        atomic_write(setup.directory / "best.toml", header + tomli_w.dumps(chosen.data))
    write_sweep_report(setup.directory / "sweep.html", found)
    return found
