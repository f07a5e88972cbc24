"""`finetune compare RUN_DIR RUN_DIR...`: runs side by side.

What differs between the recipes (flattened key paths such as training.learning_rate; identical keys
are hidden), then the final metrics of every evaluated split with the best run of each row marked,
and each run's status and step. `compare_runs` returns it all as a dict (what `--json` prints);
`render_comparison` draws it as rich tables.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from runner.errors import FinetuneError
from runner.recipe.keys import key_paths
from runner.report.run_record import (
    arrow,
    as_number,
    greater_is_better,
    metric_text,
    read_run,
    recipe_value,
    scores,
    split_order,
)
from runner.storage.rundir import RunDir, finite

MISSING = object()


def _json_value(value: Any) -> Any:
    """Non-finite numbers as the strings the run files use, so that the output is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _best(values: list[Any], higher: bool) -> list[int]:
    """Indices of the best finite values (all of them on a tie); none unless two runs have a value."""
    numbers = [(i, finite(v)) for i, v in enumerate(values)]
    numbers = [(i, v) for i, v in numbers if v is not None]
    if len(numbers) < 2:
        return []
    best = max(v for _, v in numbers) if higher else min(v for _, v in numbers)
    return [i for i, v in numbers if v == best]


def compare_runs(paths: list[str | Path]) -> dict[str, Any]:
    """The comparison of the run directories `paths`: runs, differing recipe keys and final metrics."""
    if len(paths) < 2:
        raise FinetuneError("compare needs two run directories or more", hint="finetune compare RUN_DIR RUN_DIR ...")
    records = [read_run(RunDir.open(p).path) for p in paths]
    runs = [
        {"path": str(rec.path), "name": rec.name, "status": rec.state, "global_step": rec.global_step}
        for rec in records
    ]

    flat = [key_paths(rec.recipe or {}) for rec in records]
    keys = list(dict.fromkeys(k for table in flat for k in table))
    recipe = []
    for key in keys:
        values = [table.get(key, MISSING) for table in flat]
        if len({json.dumps(v, sort_keys=True, default=str) if v is not MISSING else "\0" for v in values}) > 1:
            recipe.append({"key": key, "values": [None if v is MISSING else v for v in values]})

    # The direction of each metric: the first run whose evaluation.json names it, else by its name.
    directions: dict[str, bool] = {}
    for rec in reversed(records):
        table = (rec.evaluation or {}).get("greater_is_better")
        if isinstance(table, dict):
            directions.update({k: v for k, v in table.items() if isinstance(v, bool)})
    finals = [rec.final_metrics() for rec in records]
    metrics: dict[str, list[dict[str, Any]]] = {}
    for split in split_order(s for final in finals for s in final):
        rows = []
        names = list(dict.fromkeys(k for final in finals for k in scores(final.get(split))))
        for name in names:
            values = [as_number(scores(final.get(split)).get(name)) for final in finals]
            higher = greater_is_better(name, directions)
            rows.append(
                {
                    "metric": name,
                    "values": [_json_value(v) for v in values],
                    "greater_is_better": higher,
                    "best": _best(values, higher),
                }
            )
        if rows:
            metrics[split] = rows
    return {"runs": runs, "recipe": recipe, "metrics": metrics}


def render_comparison(result: dict[str, Any], console) -> None:
    """Print `compare_runs`'s result as rich tables: runs, recipe differences, final metrics."""
    from rich.table import Table
    from rich.text import Text

    runs = result["runs"]
    columns = [f"#{i + 1}" for i in range(len(runs))]
    table = Table(title="runs", title_justify="left")
    for name in ("", "run directory", "recipe", "status", "step"):
        table.add_column(name)
    for label, run in zip(columns, runs, strict=True):
        colour = {"completed": "green", "failed": "red", "interrupted": "yellow"}.get(run["status"], "")
        status = Text(run["status"], style=colour)
        table.add_row(label, Text(run["path"]), Text(run["name"]), status, recipe_value(run["global_step"]))
    console.print(table)

    if result["recipe"]:
        table = Table(title="recipe keys that differ", title_justify="left")
        table.add_column("key")
        for label in columns:
            table.add_column(label)
        for row in result["recipe"]:
            table.add_row(Text(row["key"]), *(Text(recipe_value(v)) for v in row["values"]))
        console.print(table)
    else:
        console.print("the recipes are identical")

    if not result["metrics"]:
        console.print("no run has final metrics")
        return
    table = Table(title="final metrics (* best of the row)", title_justify="left")
    table.add_column("split")
    table.add_column("metric")
    for label in columns:
        table.add_column(label, justify="right")
    for split, rows in result["metrics"].items():
        for n, row in enumerate(rows):
            cells = []
            for i, value in enumerate(row["values"]):
                best = i in row["best"]
                text = metric_text(value) + (" *" if best else "  ")
                cells.append(Text(text, style="bold green" if best else ""))
            table.add_row(
                split if n == 0 else "",
                Text(f"{row['metric']} {arrow(row['greater_is_better'])}"),
                *cells,
                end_section=n == len(rows) - 1,
            )
    console.print(table)
