"""Rewards (`[[rewards]] type = ...`): the scores of sampled answers that reinforcement trainers learn from.

A trainer that takes rewards (`Trainer.takes_rewards`: trainers `grpo`, `rloo`) samples several answers to each
training prompt and asks every reward of the recipe to score them; it adds the scores up with each
reward's `weight`. A reward is a registered component like any other — never a dotted import path in a
recipe, so a shared recipe runs no code that is not an installed plugin:

    class EndsPolitely(Reward):
        name = "ends_politely"

        def scores(self, prompts, completions, rows):
            return [1.0 if c.rstrip().endswith("please.") else 0.0 for c in completions]

`rows` holds each answer's row (its columns, and `reference`: the task's reference answer, an
instruction row's last assistant message), so a reward can check an answer against what the data says
is right. A score of None says the reward does not apply to that answer (TRL's convention); it then
counts for neither side.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import Field

from runner.components.base import Component, RunContext
from runner.errors import FinetuneError, clip
from runner.options import Options

REFERENCE = "reference"  # the column of every row a reward sees: the task's reference answer


class RewardOptions(Options):
    weight: float = Field(
        default=1.0,
        allow_inf_nan=False,
        description="Its weight in the total reward (the weighted sum of every reward); negative: a penalty.",
    )
    name: str | None = Field(
        default=None, description="Its name in logs and results (default: its type); needed to use two of one type."
    )


class Reward(Component):
    """Scores sampled answers: one number per answer, or None where it does not apply."""

    kind = "reward"
    Options = RewardOptions
    REFERENCE: ClassVar[str] = REFERENCE  # for plugins: the row column holding the task's reference answer
    # The row columns it reads (a reference answer): the run keeps them beside the task's columns, and a
    # source without one fails the run as it loads, naming the reward. May be set per instance, from its
    # options. `reference` (REFERENCE), the task's reference answer, is in every row without asking.
    columns: ClassVar[tuple[str, ...]] = ()

    def key(self) -> str:
        """Its name in logs and results: the recipe's `name` option if it has one, else its type."""
        return getattr(self.options, "name", None) or self.name

    def prepare(self, ctx: RunContext) -> None:
        """Load what scoring needs (a reward model) before training starts, so that a reward that
        cannot load fails the run at its start rather than at its first batch."""

    def scores(self, prompts: list[str], completions: list[str], rows: list[dict[str, Any]]) -> list[float | None]:
        """One score per completion: `prompts[i]` as the model saw it (the chat template applied),
        `completions[i]` the sampled answer's text, `rows[i]` its training row (every column)."""
        raise NotImplementedError

    def passes(self, score: float | None) -> bool | None:
        """Whether an answer that scored `score` succeeded (a right answer, the required format), for the
        evaluation's pass rate; None where this reward does not judge success (a length penalty)."""
        return None

    def close(self) -> None:
        """Free what `prepare` loaded (a reward model's memory); called once scoring is over."""

    @classmethod
    def check(cls, options: Options, recipe: Any) -> Iterable[tuple[tuple, str]]:
        if not getattr(recipe.training.cls, "takes_rewards", False):
            yield (
                ("type",),
                f"reward '{cls.name}' needs a trainer that learns from rewards (trainer 'grpo' or 'rloo'); "
                f"trainer '{recipe.training.name}' learns from its data's answers",
            )

    # -- what the trainers call --------------------------------------------------------------------
    def checked_scores(
        self, prompts: list[str], completions: list[str], rows: list[dict[str, Any]]
    ) -> list[float | None]:
        """`scores`, checked: one finite number (or None) per completion. A reward that raises or answers
        anything else fails the run with a FinetuneError naming the reward and the row — never a
        silent zero, which would teach the model from a broken reward."""
        try:
            found = self.scores(prompts, completions, rows)
        except FinetuneError:
            raise
        except Exception as exc:  # a plugin's own bug: said with the reward's name, `--debug` shows where
            raise FinetuneError(
                f"reward '{self.key()}' failed on a batch of {len(completions)} answers "
                f"(first prompt: {clip(prompts[0] if prompts else '')!r}): {type(exc).__name__}: {exc}"
            ) from exc
        found = list(found) if isinstance(found, list | tuple) else found
        if not isinstance(found, list) or len(found) != len(completions):
            got = f"{len(found)} scores" if isinstance(found, list) else type(found).__name__
            raise FinetuneError(
                f"reward '{self.key()}' returned {got} for {len(completions)} answers; it must return one score each"
            )
        out: list[float | None] = []
        for i, score in enumerate(found):
            if score is None:
                out.append(None)
                continue
            if not isinstance(score, int | float) and not hasattr(score, "__float__"):  # numpy's, torch's have it
                what = f"a {type(score).__name__} ({clip(repr(score))})"
                raise FinetuneError(self._bad(i, prompts, completions, what))
            value = float(score)
            if not math.isfinite(value):
                raise FinetuneError(self._bad(i, prompts, completions, str(value)))
            out.append(value)
        return out

    def _bad(self, i: int, prompts: list[str], completions: list[str], what: str) -> str:
        return (
            f"reward '{self.key()}' scored answer {i} of its batch {what}, not a finite number or None "
            f"(prompt: {clip(prompts[i])!r}; answer: {clip(completions[i])!r})"
        )


class AnswerExtractor(Component):
    """Finds the final answer in a completion's text: what a reward such as `answer_match` compares with
    the reference (and what the trainers' reward-hacking check counts when nothing is found).

    A reward names one by an option typed `runner.ComponentOf("extractor")`: `extract = "boxed"`, or a
    table with the extractor's options, `extract = { type = "json_field", field = "answer" }`."""

    kind = "extractor"

    def extract(self, text: str) -> str | None:
        """The answer found in `text`, as text; None where there is none."""
        raise NotImplementedError
