"""Reward `answer_match`: is the completion's final answer the one the row's reference column holds?

The recipe picks a registered extractor (`extract`; the built-ins in plugins/rewards/extractors.py): the
last number, the content of the last `\\boxed{}`, a field of the last JSON object, the text after a
marker, or the whole text — or one a plugin package registers. The extracted answer is compared with
the row's `column` (a list there: any of them), normalised by default (case, spaces, a trailing period;
numbers as numbers, so "1,000" is 1000 and "3.0" is 3). A match scores `correct`, anything else
`wrong` — a completion where the extractor finds nothing too; `extracted` lets the trainer count those
(the reward-hacking check: rewards rising while answers go unfound). `reference_extract` finds the
reference in a longer text (a worked solution ending in its number). A row without a reference (None,
or nothing extracted) is skipped: its score is None.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from plugins.rewards.extractors import same
from runner import ComponentOf, FinetuneError, Reward, RewardOptions, clip, create_component, hookimpl


class AnswerMatchOptions(RewardOptions):
    """Options of the `answer_match` reward."""

    column: str = Field(default="answer", min_length=1, description="The row's column with the reference answer.")
    extract: ComponentOf("extractor") = Field(  # type: ignore[valid-type]
        default="last_number",
        description="How the answer is found in the completion: a registered extractor, by name or as a table with "
        "its options. Built in: `last_number` (thousands commas removed), `boxed` (the last \\boxed{...}), "
        '`{ type = "json_field", field = "answer" }` (a field of the last JSON object), `{ type = "after", marker = '
        '"Answer:" }` (the rest of the line after the last marker), `whole` (the completion, stripped).',
    )
    reference_extract: ComponentOf("extractor") | None = Field(  # type: ignore[valid-type]
        default=None,
        description="Find the reference in the column's text with this extractor too (GSM8K's answers end in "
        "'#### 72': 'last_number'); unset: the column holds the answer itself.",
    )
    normalize: bool = Field(
        default=True,
        description="Compare case-folded, with whitespace collapsed and a trailing period dropped, numbers as numbers "
        "('1,000' = '1000', '3.0' = '3'); off: the texts as they are, surrounding whitespace removed.",
    )
    correct: float = Field(default=1.0, allow_inf_nan=False, description="The score of a matching answer.")
    wrong: float = Field(
        default=0.0, allow_inf_nan=False, description="The score of any other answer, one not found included."
    )


class AnswerMatch(Reward):
    """The extracted final answer against the row's reference answer: `correct` or `wrong`."""

    name = "answer_match"
    Options = AnswerMatchOptions

    def __init__(self, options: AnswerMatchOptions):
        super().__init__(options)
        # The column the recipe names, for a core that reads a reward's columns on the instance;
        # the class's `columns` cannot say it, so `scores` checks each row too.
        self.columns = (options.column,)
        self.extractor = create_component("extractor", options.extract)
        given = options.reference_extract
        self.reference_extractor = create_component("extractor", given) if given is not None else None

    @classmethod
    def check(cls, options, recipe):
        yield from super().check(options, recipe)
        if options.correct == options.wrong:
            yield ("correct",), f"`correct` and `wrong` are both {options.correct:g}: every answer would score alike"

    def passes(self, score: float | None) -> bool | None:
        """A right answer passes; a row without a reference (None) is not judged."""
        return None if score is None else score == self.options.correct

    def extracted(self, completions: list[str]) -> list[str | None]:
        """The answer found in each completion, or None where the extractor finds none."""
        return [self.extractor.extract(text) for text in completions]

    def reference(self, value: Any) -> Any:
        """The row's reference answer (or answers: a list), extracted with `reference_extract` when
        set; None where there is none (the reward then does not apply to the row)."""
        if isinstance(value, list | tuple):
            found = [r for r in (self.reference(v) for v in value) if r is not None]
            return found or None
        if self.reference_extractor is None or value is None:
            return value
        return self.reference_extractor.extract(str(value))

    def scores(self, prompts: list[str], completions: list[str], rows: list[dict[str, Any]]) -> list[float | None]:
        o = self.options
        out: list[float | None] = []
        for i, (answer, row) in enumerate(zip(self.extracted(completions), rows, strict=True)):
            if o.column not in row:
                raise FinetuneError(
                    f"reward '{self.key()}': row {i} of its batch has no column '{o.column}' "
                    f"(its columns: {', '.join(map(str, row)) or 'none'}; prompt: {clip(prompts[i])!r})",
                    hint="set the reward's `column` to the column that holds the reference answer",
                )
            reference = self.reference(row[o.column])
            if reference is None:
                out.append(None)  # no reference: the reward does not apply (TRL's convention)
            elif answer is not None and same(answer, reference, o.normalize):
                out.append(o.correct)
            else:
                out.append(o.wrong)
        return out


@hookimpl
def register_rewards(register):
    register(AnswerMatch)
