"""The recipe's rewards on a model's greedy answers to held-out prompts: the question every run here
answers — better than what training started from? — for a run that learns from rewards (trainer grpo).

The evaluator asks the task for the same held-out prompts it answers for the text metrics; each reward
scores the base model's answers before training and the tuned model's after it. Per split:
`reward/<name>` (each reward's mean over the answers it scored; None scores left out), `reward` (the
weighted sum per answer, as training adds them, None counting 0, averaged) and `pass_rate` (the share
of answers that every reward judging success passes: `Reward.passes`), with bootstrap intervals on the
test split like any metric. A few answers with their scores, before and after, go to evaluation.json
(`reward_examples`) and the report.
"""

from __future__ import annotations

import math
from typing import Any

EXAMPLES = 8  # held-out answers shown with their scores, before and after


class RewardTable:
    """Each answer's score by every reward, its weighted total, and whether it passed (None: no reward
    judges success)."""

    def __init__(self, rewards, prompts: list[str], answers: list[str], rows: list[dict[str, Any]]):
        self.keys = [reward.key() for reward in rewards]
        self.scores: dict[str, list[float | None]] = {}
        for reward in rewards:
            self.scores[reward.key()] = reward.checked_scores(prompts, answers, rows)
        self.total = [
            sum(reward.options.weight * (self.scores[reward.key()][i] or 0.0) for reward in rewards)
            for i in range(len(answers))
        ]
        self.passed: list[bool | None] = []
        for i in range(len(answers)):
            verdicts = [reward.passes(self.scores[reward.key()][i]) for reward in rewards]
            judged = [v for v in verdicts if v is not None]
            self.passed.append(all(judged) if judged else None)

    def summary(self) -> dict[str, float]:
        out = {f"reward/{key}": _mean(values) for key, values in self.scores.items()}
        out["reward"] = _mean(self.total)
        if any(p is not None for p in self.passed):
            out["pass_rate"] = _mean([float(p) if p is not None else None for p in self.passed])
        return {k: v for k, v in out.items() if not math.isnan(v)}

    def columns(self) -> dict[str, list[float | None]]:
        """Per answer, every value `summary` averages: what a bootstrap draw resamples."""
        out: dict[str, list[float | None]] = {f"reward/{k}": v for k, v in self.scores.items()}
        out["reward"] = list(self.total)
        if any(p is not None for p in self.passed):
            out["pass_rate"] = [float(p) if p is not None else None for p in self.passed]
        return out

    def row(self, i: int) -> dict[str, Any]:
        return {"scores": {k: v[i] for k, v in self.scores.items()}, "reward": self.total[i], "passed": self.passed[i]}


class MeanOfAnswers:
    """A metric over per-answer values (predictions: a row per answer of {key: value}), for the
    bootstrap: each key's mean over the answers where it is not None."""

    greater_is_better = True

    def __init__(self, keys: list[str]):
        self.keys = keys

    def compute(self, predictions, references) -> dict[str, float]:
        return {key: _mean([row[key] for row in predictions]) for key in self.keys}


def intervals(table: RewardTable, resamples: int, confidence: float, seed: int) -> dict[str, Any]:
    from runner.evaluation.intervals import bootstrap

    columns = table.columns()
    rows = [{key: values[i] for key, values in columns.items()} for i in range(len(table.total))]
    return bootstrap(MeanOfAnswers(list(columns)), rows, [None] * len(rows), resamples, confidence, seed)


def examples(prompts, references, before, after, table_before, table_after) -> list[dict[str, Any]]:
    """The first EXAMPLES held-out prompts with both models' answers and scores."""
    out = []
    for i in range(min(EXAMPLES, len(prompts))):
        row = {"prompt": prompts[i], "reference": references[i], "after": after[i], "after_scores": table_after.row(i)}
        if before is not None and table_before is not None:
            row.update(before=before[i], before_scores=table_before.row(i))
        out.append(row)
    return out


def _mean(values) -> float:
    found = [float(v) for v in values if v is not None]
    return sum(found) / len(found) if found else math.nan
