"""Rewards on the completion's text alone: `format` (a regular expression it must match) and
`length_penalty` (a penalty growing with the length past a limit).

Both read the completion with its surrounding whitespace removed, so that the newline or space a
model ends with does not decide a format or count as length.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from runner import PositiveFloat, Reward, RewardOptions, hookimpl


class FormatOptions(RewardOptions):
    """Options of the `format` reward."""

    pattern: str = Field(
        min_length=1,
        description="A Python regular expression (`.` matches newlines too), "
        "e.g. '<think>.*</think>\\s*<answer>.*</answer>'.",
    )
    mode: Literal["full", "search"] = Field(
        default="full", description="`full`: the whole completion must match; `search`: a match anywhere in it."
    )
    matched: float = Field(default=1.0, allow_inf_nan=False, description="The score of a completion that matches.")
    unmatched: float = Field(default=0.0, allow_inf_nan=False, description="The score of one that does not.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value, re.DOTALL)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value


class Format(Reward):
    """Whether the completion matches a regular expression: `matched` or `unmatched`."""

    name = "format"
    Options = FormatOptions

    def __init__(self, options: FormatOptions):
        super().__init__(options)
        self.pattern = re.compile(options.pattern, re.DOTALL)

    def passes(self, score: float | None) -> bool | None:
        """The format asked for passes (where matching scores more than not: a penalty pattern judges nothing)."""
        o = self.options
        return None if score is None or o.matched <= o.unmatched else score == o.matched

    def scores(self, prompts: list[str], completions: list[str], rows: list[dict[str, Any]]) -> list[float | None]:
        match = self.pattern.fullmatch if self.options.mode == "full" else self.pattern.search
        o = self.options
        return [o.matched if match(text.strip()) else o.unmatched for text in completions]


class LengthPenaltyOptions(RewardOptions):
    """Options of the `length_penalty` reward."""

    limit: int = Field(ge=1, le=10**9, description="The longest completion that is not penalised, in `unit`s.")
    unit: Literal["words", "characters"] = Field(
        default="words", description="What length counts: words (split at whitespace) or characters."
    )
    penalty: PositiveFloat = Field(
        default=1.0, description="The penalty at twice the limit and beyond: the score is -penalty there."
    )


class LengthPenalty(Reward):
    """0 up to `limit`, then -penalty × (length − limit) / limit, down to -penalty at twice the limit."""

    name = "length_penalty"
    Options = LengthPenaltyOptions

    def length(self, text: str) -> int:
        return len(text.split()) if self.options.unit == "words" else len(text.strip())

    def scores(self, prompts: list[str], completions: list[str], rows: list[dict[str, Any]]) -> list[float | None]:
        o = self.options
        over = [self.length(text) - o.limit for text in completions]
        return [-o.penalty * min(1.0, n / o.limit) if n > 0 else 0.0 for n in over]


@hookimpl
def register_rewards(register):
    register(Format)
    register(LengthPenalty)
