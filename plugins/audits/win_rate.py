"""Audit `win_rate`: does a reward model prefer the fine-tuned model's answers to the base model's?

The base and the fine-tuned model answer the same held-out prompts (plugins/audits/_answers.py:
the test split, else validation, the first `max_prompts` distinct prompts, the task's greedy
generation). A reward model the recipe names (`reward_model`: a reward-model run of this runner, a
model folder, or a Hub id; plugins/rewards/_reward_model.py) scores each answer with its prompt; per
prompt, the fine-tuned answer wins when it scores higher, ties when the two answers are the same
text (or score the same), and loses otherwise. The win rate is the share of wins, ties counted half:
0.5 is "no better than where it started". Its interval is a percentile bootstrap over prompts.
The audit passes when the win rate is at least `min_win_rate`.

The reward model reads a prompt and an answer as TRL's RewardTrainer reads a row: rendered with
its tokenizer's chat template when it has one (the prompt's conversation, then the answer as the
assistant's turn), else as text: the prompt as the run's task renders it, the answer, and the
end-of-sequence token. The base model's answers are scored before training, the fine-tuned ones
after it; the reward model is loaded for each and freed after. A win rate says which answers the
reward model prefers, not that they are better: a reward model can be fooled (by length, among
others; see the `verbosity` audit).
"""

from __future__ import annotations

import math
import random
from typing import Any, Literal

from pydantic import Field

from plugins.audits import _answers
from plugins.rewards import _reward_model as rewards
from runner import Audit, AuditResult, Fraction, clip, hookimpl

EXAMPLES = 3  # prompts of the largest reward gain, and of the largest loss, shown beside the verdict
TIE = 1e-6  # rewards closer than this are a tie: the same answer scored in two batches differs by rounding


class WinRateOptions(_answers.AnswerOptions):
    """Options of the `win_rate` audit."""

    reward_model: str = Field(
        min_length=1,
        description="The judge: a completed reward-model run directory (or a folder of runs: its newest), a folder "
        "with a transformers sequence-classification model of one output (or a PEFT adapter over one), or a Hub id. "
        "Relative to the working directory.",
    )
    min_win_rate: Fraction = Field(
        default=0.5, description="Smallest win rate of the fine-tuned answers over the base's that passes."
    )
    confidence: float = Field(default=0.95, gt=0, lt=1, description="Coverage of the bootstrap interval.")
    resamples: int = Field(default=1000, ge=100, le=100_000, description="Bootstrap resamples over prompts.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="Weights dtype of the reward model while it scores."
    )


class WinRate(Audit):
    """Win rate of the fine-tuned model's answers over the base model's, judged by a reward model."""

    name = "win_rate"
    Options = WinRateOptions

    @classmethod
    def check(cls, options, recipe):
        yield from _answers.check_generates(cls.name, recipe)
        problem = rewards.check(options.reward_model)
        if problem:
            yield ("reward_model",), problem

    def measure(self, subject, data, ctx) -> dict[str, Any]:
        """`subject`'s answers scored by the reward model: the mean, and each prompt's reward."""
        done = _answers.answer(subject, data, self.options, self.key())
        device = getattr(subject.model, "device", "cpu")
        judge = rewards.RewardModel(self.options.reward_model, device, self.options.dtype)
        try:
            sequences = [judge.ids(p.text, p.messages, a) for p, a in zip(done.prompts, done.answers, strict=True)]
            scores, cut = judge.scores(sequences)
            templated = judge.tokenizer.chat_template and all(p.messages is not None for p in done.prompts)
            rendering = "chat template" if templated else "text"
        finally:
            judge.close()
        if ctx is not None:
            ctx.info(f"audit '{self.key()}': {len(scores)} answers of the {subject.label} model scored")
        return {
            "split": done.split,
            "prompts": len(done.prompts),
            "skipped_rows": done.skipped,
            "max_new_tokens": done.max_new_tokens,
            "mean_reward": _answers.mean(scores),
            "cut_to_fit_reward_model": cut,
            "reward_model": {**judge.found.identity(), "reads": rendering},
            "per_prompt": {
                "keys": [p.key for p in done.prompts],
                "prompts": [p.shown for p in done.prompts],
                "answers": [clip(a, _answers.SHOWN) for a in done.answers],
                "answer_keys": [_answers.digest(a) for a in done.answers],  # the same answer: a tie
                "scores": scores,
            },
        }

    def judge(self, base: dict[str, Any] | None, finetuned: dict[str, Any]) -> AuditResult:
        """Passed when the win rate is at least `min_win_rate`; undecided without a baseline, or
        when the two were judged by different reward models."""
        o = self.options
        thresholds = {"min_win_rate": o.min_win_rate}
        empty = {"base": _answers.overall(base), "finetuned": _answers.overall(finetuned), "win_rate": None}
        if base is None:
            summary = (
                f"fine-tuned answers get a mean reward of {finetuned['mean_reward']:.3g} on {finetuned['prompts']} "
                f"{finetuned['split']} prompts; no baseline was measured on the base model, so no win rate"
            )
            return AuditResult(None, summary, empty, thresholds)
        if _weights(base) != _weights(finetuned):
            summary = (
                "the base and the fine-tuned answers were scored by different reward models "
                f"({base['reward_model'].get('path')} and {finetuned['reward_model'].get('path')}): no win rate"
            )
            return AuditResult(None, summary, empty, thresholds)
        pairs = _answers.paired(base, finetuned, "scores", "answers", "prompts", "answer_keys")
        n = len(pairs["keys"])
        if not n:
            summary = "the base and the fine-tuned model answered no prompt in common: nothing to compare"
            return AuditResult(None, summary, empty, thresholds)
        outcomes = [
            _outcome(b, t, sb == st)
            for b, t, sb, st in zip(pairs["base_scores"], pairs["finetuned_scores"], pairs["base_answer_keys"],
                                    pairs["finetuned_answer_keys"], strict=True)
        ]  # fmt: skip
        rate = _answers.mean(outcomes)
        low, high = bootstrap(outcomes, o.resamples, o.confidence)
        wins, ties = outcomes.count(1.0), outcomes.count(0.5)
        losses = n - wins - ties
        passed = rate >= o.min_win_rate
        before, after = _answers.mean(pairs["base_scores"]), _answers.mean(pairs["finetuned_scores"])
        summary = (
            f"the reward model prefers the fine-tuned answer on {100 * rate:.0f}% of {n} {finetuned['split']} prompts "
            f"({100 * o.confidence:g}% interval {100 * low:.0f}–{100 * high:.0f}%; {wins} wins, {ties} ties, "
            f"{losses} losses), {'at least' if passed else 'below'} the {100 * o.min_win_rate:g}% required; "
            f"mean reward {before:.3g} → {after:.3g}"
        )
        if low < o.min_win_rate <= high:
            summary += "; the interval straddles the threshold: more prompts would tell"
        figures = {
            "base": _answers.overall(base),
            "finetuned": _answers.overall(finetuned),
            "win_rate": rate,
            "interval": {"low": low, "high": high, "confidence": o.confidence},
            "wins": wins,
            "ties": ties,
            "losses": losses,
            "prompts_compared": n,
            "mean_reward_change": after - before,
            "per_prompt": _per_prompt(pairs, outcomes),
        }
        return AuditResult(passed, summary, figures, thresholds, _extremes(pairs))


def _weights(figures: dict[str, Any]) -> dict[str, Any]:
    model = figures.get("reward_model") or {}
    return {k: v for k, v in model.items() if k != "reads"}


def _outcome(base: float, tuned: float, same_answer: bool) -> float:
    """1 when the fine-tuned answer wins, 0.5 for a tie, 0 when it loses."""
    if same_answer or abs(tuned - base) <= TIE * max(1.0, abs(base), abs(tuned)):
        return 0.5
    return 1.0 if tuned > base else 0.0


def bootstrap(outcomes: list[float], resamples: int, confidence: float, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean outcome, resampling prompts (a fixed seed: the same
    figures give the same interval)."""
    rng = random.Random(seed)
    n = len(outcomes)
    means = sorted(sum(outcomes[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    low = means[max(0, math.floor(tail * resamples))]
    high = means[min(resamples - 1, math.ceil((1 - tail) * resamples) - 1)]
    return low, high


def _per_prompt(pairs: dict[str, list], outcomes: list[float]) -> dict[str, list]:
    """Each prompt both models answered: the prompt, both answers, both rewards and the outcome."""
    kept = ("keys", "base_answers", "finetuned_answers", "base_scores", "finetuned_scores")
    return {"prompts": pairs["base_prompts"], **{k: pairs[k] for k in kept}, "outcomes": outcomes}


def _extremes(pairs: dict[str, list]) -> list[dict[str, Any]]:
    """The prompts of the largest reward gains and losses, to read."""
    gain = [t - b for b, t in zip(pairs["base_scores"], pairs["finetuned_scores"], strict=True)]
    order = sorted(range(len(gain)), key=lambda i: -gain[i])
    picked = [i for i in order[:EXAMPLES] if gain[i] > 0] + [i for i in order[::-1][:EXAMPLES] if gain[i] < 0]
    return [
        {
            **_answers.side_by_side(pairs, i),
            "reward": f"{pairs['base_scores'][i]:.3g} → {pairs['finetuned_scores'][i]:.3g}",
        }
        for i in picked
    ]


@hookimpl
def register_audits(register):
    register(WinRate)
