"""Audit `verbosity`: did fine-tuning make the model's answers longer?

Preference tuning is known to lengthen answers: raters (and reward models) often prefer the longer
of two answers, and DPO and its kin learn that. This audit has the base model and the fine-tuned
model answer the same held-out prompts (plugins/audits/_answers.py: the test split, else
validation, the first `max_prompts` distinct prompts, the task's greedy generation) and compares
their mean answer length in the run's tokens. It fails when the mean rose by more than
`max_increase` (relative: 0.5 allows 50% longer answers).

Beside the mean in tokens it gives the mean in words (whitespace-separated), the median, the mean
length of the data's own (chosen) answers, and the share of answers cut at max_new_tokens: a cut
answer's length is a lower bound, so when many are cut the growth is larger than measured (raise
max_new_tokens). Only tasks that generate answers (instruction, preference) can be audited.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from pydantic import Field

from plugins.audits import _answers
from runner import Audit, AuditResult, NonNegativeFloat, clip, hookimpl

EXAMPLES = 3  # prompts whose answers grew the most, shown beside the verdict


class VerbosityOptions(_answers.AnswerOptions):
    """Options of the `verbosity` audit."""

    max_increase: NonNegativeFloat = Field(
        default=0.5,
        description="Largest allowed relative rise of the mean answer length in tokens (0.5 = 50% longer).",
    )


def _percent(fraction: float) -> str:
    return "∞%" if math.isinf(fraction) else f"{100 * fraction:+.0f}%"


class Verbosity(Audit):
    """Mean answer length on held-out prompts, base model against fine-tuned: did answers get longer?"""

    name = "verbosity"
    Options = VerbosityOptions

    @classmethod
    def check(cls, options, recipe):
        yield from _answers.check_generates(cls.name, recipe)

    def measure(self, subject, data, ctx) -> dict[str, Any]:
        """Answer lengths of `subject` on the held-out prompts, in tokens and words."""
        done = _answers.answer(subject, data, self.options, self.key())
        tokenizer = subject.tokenizer
        words = [len(a.split()) for a in done.answers]
        cut = done.cut()
        references = [len(tokenizer(p.reference, add_special_tokens=False)["input_ids"]) for p in done.prompts]
        return {
            "split": done.split,
            "prompts": len(done.prompts),
            "skipped_rows": done.skipped,
            "max_new_tokens": done.max_new_tokens,
            "mean_tokens": _answers.mean(done.tokens),
            "median_tokens": float(statistics.median(done.tokens)),
            "mean_words": _answers.mean(words),
            "cut_share": _answers.mean([float(c) for c in cut]),
            "empty_share": _answers.mean([float(not a.strip()) for a in done.answers]),
            "reference_mean_tokens": _answers.mean(references),
            "per_prompt": {
                "keys": [p.key for p in done.prompts],
                "prompts": [p.shown for p in done.prompts],
                "answers": [clip(a, _answers.SHOWN) for a in done.answers],
                "tokens": done.tokens,
                "words": words,
            },
        }

    def judge(self, base: dict[str, Any] | None, finetuned: dict[str, Any]) -> AuditResult:
        """Passed when the mean answer length (tokens) rose by at most `max_increase`, on the
        prompts both models answered; undecided without a baseline."""
        limit = self.options.max_increase
        thresholds = {"max_increase": limit}
        tuned = _summary(finetuned)
        if base is None:
            summary = (
                f"fine-tuned answers average {tuned['mean_tokens']:.1f} tokens ({tuned['mean_words']:.1f} words) on "
                f"{finetuned['prompts']} {finetuned['split']} prompts; no baseline was measured on the base model, "
                "so the change cannot be judged"
            )
            figures = {"base": None, "finetuned": _answers.overall(finetuned), "relative_increase": None,
                       "per_prompt": finetuned["per_prompt"]}  # fmt: skip
            return AuditResult(None, summary, figures, thresholds)
        pairs = _answers.paired(base, finetuned, "tokens", "words", "answers", "prompts")
        n = len(pairs["keys"])
        if not n:
            summary = "the base and the fine-tuned model answered no prompt in common: nothing to compare"
            figures = {"base": _answers.overall(base), "finetuned": _answers.overall(finetuned),
                       "relative_increase": None}  # fmt: skip
            return AuditResult(None, summary, figures, thresholds)
        before, after = _answers.mean(pairs["base_tokens"]), _answers.mean(pairs["finetuned_tokens"])
        words_before, words_after = _answers.mean(pairs["base_words"]), _answers.mean(pairs["finetuned_words"])
        increase = _relative(before, after)
        passed = increase <= limit
        change = "stayed at" if after == before else ("grew from" if after > before else "shrank from")
        lengths = f"{before:.1f}" if after == before else f"{before:.1f} to {after:.1f}"
        summary = (
            f"mean answer length {change} {lengths} tokens ({_percent(increase)}; words {words_before:.1f} → "
            f"{words_after:.1f}) on {n} {finetuned['split']} prompts, "
            f"{'within' if passed else 'more than'} the {100 * limit:g}% allowed"
        )
        cut = finetuned["cut_share"]
        if cut > 0:
            summary += (
                f"; {100 * cut:.0f}% of the fine-tuned answers (base: {100 * base['cut_share']:.0f}%) stopped at "
                f"max_new_tokens ({finetuned['max_new_tokens']}), so their real length is longer"
            )
        figures = {
            "base": _answers.overall(base),
            "finetuned": _answers.overall(finetuned),
            "prompts_compared": n,
            "relative_increase": increase,
            "words_relative_increase": _relative(words_before, words_after),
            "per_prompt": _per_prompt(pairs),
        }
        return AuditResult(passed, summary, figures, thresholds, _grown(pairs))


def _summary(figures: dict[str, Any]) -> dict[str, float]:
    return {k: figures[k] for k in ("mean_tokens", "mean_words")}


def _relative(before: float, after: float) -> float:
    if before == 0:
        return 0.0 if after == 0 else math.inf
    return after / before - 1


def _per_prompt(pairs: dict[str, list]) -> dict[str, list]:
    """Each prompt both models answered: the prompt, both answers and their lengths."""
    pairs = dict(pairs)
    pairs["prompts"] = pairs.pop("base_prompts")
    del pairs["finetuned_prompts"]
    return pairs


def _grown(pairs: dict[str, list]) -> list[dict[str, Any]]:
    """The prompts whose answer grew the most, to read."""
    growth = [t - b for b, t in zip(pairs["base_tokens"], pairs["finetuned_tokens"], strict=True)]
    order = sorted((i for i, g in enumerate(growth) if g > 0), key=lambda i: -growth[i])[:EXAMPLES]
    return [
        {**_answers.side_by_side(pairs, i), "tokens": f"{pairs['base_tokens'][i]} → {pairs['finetuned_tokens'][i]}"}
        for i in order
    ]


@hookimpl
def register_audits(register):
    register(Verbosity)
