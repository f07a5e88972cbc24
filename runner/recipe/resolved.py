"""A validated recipe: every section's component class with its validated options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from runner.components import Component
from runner.errors import KeyPath
from runner.options import Fraction, Options
from runner.recipe.load import RecipeSource
from runner.recipe.sweep_section import SweepOptions


class RunOptions(Options):
    """`[run]`: naming, seeding, where the run directory goes, and the packages the recipe needs."""

    name: str | None = Field(default=None, description="Run name (default: the recipe file's name).")
    description: str = Field(default="", description="One line shown by `finetune recipes`.")
    seed: int = Field(
        default=42, ge=0, le=2**32 - 1, description="Seeds data splits, initialisation and data order (0 to 2**32-1)."
    )
    output_dir: str = Field(
        default="runs",
        description="Run directories go to <output_dir>/<name>/<timestamp>/ (relative to cwd).",
    )
    threads: int | None = Field(
        default=None, gt=0, le=4096, description="CPU threads for torch (default: torch's; at most 4096)."
    )
    deterministic: bool = Field(
        default=False, description="Use deterministic algorithms only (slower; bitwise-repeatable on GPU)."
    )
    # None rather than []: a recipe without requirements resolves exactly as before, so run
    # directories written before this option existed still resume without "the recipe changed".
    # Checked at validation (runner/recipe/requires.py).
    requires: list[str] | None = Field(
        default=None,
        description=(
            "Packages the recipe needs, as PEP 508 requirements, e.g. ['finetune-adapters>=0.2']; "
            "checked before anything runs."
        ),
    )
    # Provenance, written by loading (runner/recipe/load.py) when `extends` reaches a recipe pack;
    # None otherwise, so that recipes without packs resolve exactly as before.
    packs: list[str] | None = Field(
        default=None,
        description=(
            "Set by `extends`: the pack recipes this recipe is built on, as 'pack==version:recipe' "
            "(recorded in recipe.resolved.toml; not set by hand)."
        ),
    )


class SplitOptions(Options):
    """`[data.split]`: how splits a source does not provide are carved out, seeded and stratified."""

    train: Fraction = Field(default=0.8, description="Share of the carved rows that train.")
    validation: Fraction = Field(default=0.1, description="Share for validation (0: no validation split).")
    test: Fraction = Field(default=0.1, description="Share for test (0: no test split).")
    stratify: bool = Field(default=True, description="Keep label proportions in every split (classification).")

    @model_validator(mode="after")
    def _sum_to_one(self):
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must sum to 1 (got {total:g})")
        if self.train == 0:
            raise ValueError("train must be greater than 0")
        return self


class DataOptions(Options):
    """`[data]` apart from its sources."""

    split: SplitOptions = Field(default_factory=SplitOptions, description="See [data.split].")
    max_rows: dict[Literal["train", "validation", "test"], int] = Field(
        default_factory=dict, description="Keep at most this many rows of a split (a seeded sample)."
    )

    @model_validator(mode="after")
    def _positive(self):
        for split, n in self.max_rows.items():
            if n <= 0:
                raise ValueError(f"max_rows.{split} must be > 0 (got {n})")
        return self


class EvaluationOptions(Options):
    """`[evaluation]`: what the fine-tuned model is compared with, and how sure the numbers are."""

    baseline: bool = Field(
        default=True,
        description="Evaluate the untouched base model on the same validation/test rows before training.",
    )
    few_shot: int = Field(
        default=3,
        ge=0,
        description="Generating tasks: also prompt the base model with this many solved training rows (0: off).",
    )
    bootstrap: int = Field(
        default=1000,
        ge=0,
        le=100_000,
        description="Resamples for the confidence intervals of test metrics (0: no intervals; at most 100,000).",
    )
    confidence: float = Field(default=0.95, gt=0, lt=1, description="Confidence level of the intervals.")
    generation_rows: int = Field(
        default=100,
        gt=0,
        description="Generating tasks: rows of each split answered for text metrics (exact match, BLEU, ROUGE).",
    )


@dataclass
class ComponentSpec:
    """A recipe section resolved to its component class and validated options."""

    kind: str
    name: str
    cls: type[Component]
    options: Options
    key: KeyPath  # where the section is in the recipe, e.g. ("data", "sources", 0)
    tag: str = "type"  # the key that names the component in its table

    def create(self) -> Component:
        return self.cls(self.options)

    def as_table(self) -> dict[str, Any]:
        return {self.tag: self.name, **self.options.model_dump(mode="json", exclude_none=True)}


@dataclass
class Recipe:
    """A recipe that passed validation."""

    source: RecipeSource
    run: RunOptions
    data: DataOptions
    sources: list[ComponentSpec]
    tokenizer: ComponentSpec
    model: ComponentSpec
    task: ComponentSpec
    strategy: ComponentSpec
    training: ComponentSpec
    distributed: ComponentSpec
    metrics: list[ComponentSpec]
    reporters: list[ComponentSpec]
    evaluation: EvaluationOptions = field(default_factory=EvaluationOptions)
    audits: list[ComponentSpec] = field(default_factory=list)
    objective: ComponentSpec | None = None  # `[objective]`: a preference loss, for the trainers that take one
    rewards: list[ComponentSpec] = field(default_factory=list)  # `[[rewards]]`, for the trainers that take them
    metrics_defaulted: bool = False  # metrics came from the task's defaults
    # `finetune sweep`'s study; not part of resolved(): each trial's run records its own values
    sweep: SweepOptions | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.run.name or self.source.path.stem

    def components(self) -> list[ComponentSpec]:
        return [
            *self.sources,
            self.tokenizer,
            self.model,
            self.task,
            self.strategy,
            self.training,
            *([self.objective] if self.objective else []),
            *self.rewards,
            self.distributed,
            *self.metrics,
            *self.reporters,
            *self.audits,
        ]

    def resolved(self) -> dict[str, Any]:
        """The whole recipe with every default filled in, as written to recipe.resolved.toml."""
        run = self.run.model_dump(mode="json", exclude_none=True)
        run["name"] = self.name
        return {
            "run": run,
            "data": {
                **self.data.model_dump(mode="json", exclude_none=True),
                "sources": [s.as_table() for s in self.sources],
            },
            "tokenizer": self.tokenizer.as_table(),
            "model": self.model.as_table(),
            "task": self.task.as_table(),
            "strategy": self.strategy.as_table(),
            "training": self.training.as_table(),
            **({"objective": self.objective.as_table()} if self.objective else {}),
            **({"rewards": [r.as_table() for r in self.rewards]} if self.rewards else {}),
            "distributed": self.distributed.as_table(),
            "metrics": [m.as_table() for m in self.metrics],
            "reporters": [r.as_table() for r in self.reporters],
            "evaluation": self.evaluation.model_dump(mode="json"),
            "audits": [a.as_table() for a in self.audits],
        }
