"""What the experiment-tracking reporters (`tensorboard`, `mlflow`) share: the check for their
optional extra, where a run's output folder is, and how run figures become tracker keys.

Both name figures the same way, so a chart in TensorBoard and a metric in MLflow read alike:
`train/loss`, `validation/accuracy`, `baseline_base_model/test/accuracy`, ...
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from typing import Any

import tomli_w

from plugins.reporters.rich_panels import shown as worth_showing
from runner import key_paths


def missing_extra(reporter: str, modules: tuple[str, ...], extra: str) -> str | None:
    """The recipe error for a reporter whose optional extra is not installed, or None.

    Asked at validation (`check`), so a run that would lose its tracking says so before it trains
    rather than an hour later."""
    try:
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
    except (ImportError, ValueError):  # a broken install reads as a missing one
        missing = list(modules)
    if not missing:
        return None
    return (
        f"the {reporter} reporter needs the extra: pip install 'finetune-runner[{extra}]' "
        f"({', '.join(missing)} not installed)"
    )


def output_dir(run: dict[str, Any]) -> Path:
    """The run's output folder (`run.output_dir`, relative to the working directory), absolute.

    Runs of one folder share what lives there (an MLflow database, a TensorBoard root). Without a
    readable recipe, the folder two levels above the run directory (<output_dir>/<name>/<time>)."""
    value = (run.get("recipe") or {}).get("run", {}).get("output_dir")
    if isinstance(value, str) and value:
        return Path(value).expanduser().resolve()
    return Path(run["run_dir"]).resolve().parent.parent


def run_label(run: dict[str, Any]) -> str:
    """The run directory relative to the output folder ("name/20250101-120000",
    "sweeps/study/trial-3"), or "<name>/<directory name>" when it lies elsewhere (`--output`)."""
    run_dir = Path(run["run_dir"]).resolve()
    try:
        label = run_dir.relative_to(output_dir(run)).as_posix()
    except ValueError:
        label = ""
    return label if label and label != "." else f"{run.get('name', 'run')}/{run_dir.name}"


_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-/ ]+")


def key(*parts: str) -> str:
    """A tracker key from parts: "/"-joined, with characters trackers refuse replaced by "_"."""
    return "/".join(_UNSAFE.sub("_", str(p)).strip() or "_" for p in parts)


def baseline_prefix(name: str) -> str:
    """A baseline's name as one key segment: "base model, 3-shot" -> "baseline_base_model_3-shot"."""
    return "baseline_" + re.sub(r"[^A-Za-z0-9.\-]+", "_", name).strip("_")


def shown(metrics: dict[str, Any]) -> dict[str, float]:
    """An evaluation's scores, without its timings and epoch counter (noise on a chart): the
    figures the terminal display shows too."""
    return {k: v for k, v in numbers(metrics).items() if worth_showing(k)}


def number(value: Any) -> float | None:
    """A finite float, or None for anything a chart cannot draw (text, NaN, inf, booleans)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def numbers(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers among `values`."""
    return {k: v for k, v in ((k, number(v)) for k, v in values.items()) if v is not None}


def final_metrics(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The summary's final metrics by split ({"train": {...}, "validation": {...}, "test": {...}})."""
    metrics = summary.get("metrics") or {}
    return {split: numbers(values) for split, values in metrics.items() if isinstance(values, dict)}


def baselines(summary: dict[str, Any]) -> dict[str, float]:
    """Baseline scores keyed `baseline_<name>/<split>/<metric>`: each baseline row of the summary
    (evaluation.json's "baselines") holds a table of metrics per split beside its name and note."""
    out: dict[str, float] = {}
    for row in summary.get("baselines") or []:
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            continue
        for split, values in row.items():
            if isinstance(values, dict):
                for metric, value in numbers(values).items():
                    out[key(baseline_prefix(row["name"]), split, metric)] = value
    return out


def recipe_toml(recipe: dict[str, Any]) -> str:
    """The resolved recipe as TOML, as recipe.resolved.toml holds it."""
    try:
        return tomli_w.dumps(recipe)
    except (TypeError, ValueError):  # a value TOML cannot hold: show it, but never fail the run
        return "\n".join(f"{k} = {v!r}" for k, v in key_paths(recipe).items()) + "\n"


def scalar(value: Any) -> str | int | float | bool:
    """A value as a hyperparameter: numbers, text and booleans as they are, anything else as text."""
    if isinstance(value, bool | str) or (isinstance(value, int | float) and number(value) is not None):
        return value
    return "" if value is None else str(value)
