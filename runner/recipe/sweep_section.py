"""`[sweep]`: the hyperparameter study `finetune sweep` runs over a recipe (docs/experiments.md).

The section is validated with the rest of the recipe, so `finetune validate` reports its mistakes
with their lines; `finetune run` ignores it (a swept recipe still runs once with its own values).
Each entry of `[sweep.space]` names any recipe key by its path, as `--set` does.
"""

from __future__ import annotations

import builtins  # the range kind `int` is a field name: annotations say builtins.int
import math
from typing import Any, Literal

from pydantic import Field, model_validator

from runner.options import Options

# A grid over integer ranges is spelled out; past this many points it is no grid anyone runs.
MAX_GRID_POINTS = 10_000
SPACE_KINDS = ("uniform", "log_uniform", "int", "log_int", "choice")


class SpaceEntry(Options):
    """One searched key: exactly one of `uniform`, `log_uniform`, `int`, `log_int` or `choice`."""

    uniform: list[float] | None = Field(default=None, description="[low, high]: any number between.")
    log_uniform: list[float] | None = Field(
        default=None, description="[low, high], both > 0: numbers spread evenly on a log scale (learning rates)."
    )
    int: list[builtins.int] | None = Field(default=None, description="[low, high]: an integer between, both included.")
    log_int: list[builtins.int] | None = Field(default=None, description="[low, high], both > 0: integers, log scale.")
    step: float | None = Field(default=None, gt=0, description="With `uniform` or `int`: values on this grid only.")
    choice: list[Any] | None = Field(
        default=None, min_length=1, description="One of these values (strings, numbers, true/false)."
    )

    @model_validator(mode="after")
    def _one_kind(self):
        given = [kind for kind in SPACE_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(SPACE_KINDS)} (got {', '.join(given) or 'none'})")
        kind = given[0]
        if kind == "choice":
            for value in self.choice:
                if not isinstance(value, str | int | float | bool):
                    raise ValueError("choice values must be strings, numbers or true/false (no tables or arrays)")
            if len({repr(v) for v in self.choice}) != len(self.choice):
                raise ValueError("choice lists a value twice")
            return self
        if len(getattr(self, kind)) != 2:
            raise ValueError(f"{kind} takes [low, high] (got {len(getattr(self, kind))} values)")
        low, high = getattr(self, kind)
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ValueError(f"{kind} = [low, high] needs finite low < high (got [{low}, {high}])")
        if kind.startswith("log") and low <= 0:
            raise ValueError(f"{kind} needs low > 0 (got {low})")
        if self.step is not None and kind not in ("uniform", "int"):
            raise ValueError(f"step goes with uniform or int, not {kind}")
        if self.step is not None and kind == "int" and self.step != round(self.step):
            raise ValueError(f"an int range takes a whole step (got {self.step})")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in SPACE_KINDS if getattr(self, kind) is not None)

    def grid(self) -> list[Any] | None:
        """Every value, when the entry is finite (what the grid sampler walks); None otherwise."""
        if self.choice is not None:
            return list(self.choice)
        if self.int is not None:
            step = int(self.step or 1)
            points = range(self.int[0], self.int[1] + 1, step)
            return list(points) if len(points) <= MAX_GRID_POINTS else None
        if self.uniform is not None and self.step is not None:
            count = int(math.floor((self.uniform[1] - self.uniform[0]) / self.step + 1e-9)) + 1
            if count <= MAX_GRID_POINTS:
                return [round(self.uniform[0] + i * self.step, 12) for i in range(count)]
        return None


class SweepOptions(Options):
    """`[sweep]`: a study of `trials` runs over the keys of `[sweep.space]` (`finetune sweep`)."""

    name: str | None = Field(
        default=None, description="The study's name (default: the run name). A second sweep of it continues it."
    )
    metric: str | None = Field(
        default=None,
        description=(
            "The validation metric to optimise, e.g. 'accuracy' or 'loss' (default: training.best_metric, else 'loss')."
        ),
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        default=None, description="Default: minimize a loss, maximize the rest (as the metric declares)."
    )
    trials: int = Field(default=20, gt=0, le=100_000, description="Runs in the study (a grid: at most its size).")
    sampler: Literal["tpe", "random", "grid"] = Field(
        default="tpe", description="How settings are chosen: tpe (Bayesian), random, or grid (every combination)."
    )
    pruner: Literal["median", "hyperband", "none"] = Field(
        default="median",
        description="Stop a trial early when its validation scores trail the others' at the same step.",
    )
    startup_trials: int = Field(
        default=5,
        ge=0,
        le=100_000,
        description="Trials that finish before the pruner stops any, and that tpe samples at random.",
    )
    seeds: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Afterwards, run the best settings again with this many other seeds: mean and spread.",
    )
    space: dict[str, SpaceEntry] = Field(
        description=(
            'Recipe key path -> values to try, e.g. "training.learning_rate" = { log_uniform = [1e-5, 1e-3] }.'
        )
    )

    @model_validator(mode="after")
    def _space(self):
        if not self.space:
            raise ValueError("the search space is empty: add keys to [sweep.space]")
        if self.sampler == "grid":
            infinite = [key for key, entry in self.space.items() if entry.grid() is None]
            if infinite:
                raise ValueError(
                    f"the grid sampler needs finite values; {', '.join(infinite)} "
                    "is a continuous range (use choice, int, or uniform with a step)"
                )
        return self

    def grid_size(self) -> builtins.int | None:
        if self.sampler != "grid":
            return None
        return math.prod(len(entry.grid() or []) for entry in self.space.values())
