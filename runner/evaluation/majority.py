"""Whether a fine-tuned classifier beats always answering its commonest training label, in words."""

from __future__ import annotations

from typing import Any


def against_majority(
    baselines: list[dict[str, Any]],
    final: dict[str, Any],
    intervals: dict[str, Any],
    best_metric: str,
    greater_is_better: dict[str, bool],
) -> dict[str, Any] | None:
    """Whether the fine-tuned classifier does clearly better than the majority-class baseline, on
    the test split (else validation), by `best_metric` (else the first metric both have).

    "no better" when its score is not above the baseline's, or, with a bootstrap interval, when
    the interval reaches the baseline's score: a model that guesses the commonest label, or barely
    differs from it, has learnt nothing measurable. None when there is nothing to compare."""
    majority = next((row for row in baselines if row.get("name") == "majority class"), None)
    if majority is None:
        return None
    split = next((s for s in ("test", "validation") if majority.get(s) and final.get(s)), None)
    if split is None:
        return None
    shared = [k for k in majority[split] if k in final[split] and k != "loss"]
    if not shared:
        return None
    metric = best_metric if best_metric in shared else shared[0]
    higher = greater_is_better.get(metric, True)
    ours, theirs = float(final[split][metric]), float(majority[split][metric])
    interval = (intervals.get(split) or {}).get(metric)
    if interval:
        reached = interval["low"] <= theirs if higher else interval["high"] >= theirs
    else:
        reached = ours <= theirs if higher else ours >= theirs
    return {
        "split": split,
        "metric": metric,
        "finetuned": ours,
        "majority": theirs,
        "interval": interval,
        "note": majority.get("note"),
        "verdict": "no better" if reached else "better",
    }


def majority_warning(check: dict[str, Any]) -> str | None:
    """One sentence for the terminal and the report when the fine-tuned model is no better."""
    if not check or check.get("verdict") != "no better":
        return None
    interval = check.get("interval")
    spread = f", {interval['confidence']:.0%} interval {interval['low']:.4g}-{interval['high']:.4g}" if interval else ""
    return (
        f"the fine-tuned model is no better than the majority-class baseline ({check.get('note')}): "
        f"{check['split']} {check['metric']} {check['finetuned']:.4g}{spread}, against {check['majority']:.4g}. "
        "It has learnt nothing measurable: check the learning rate, the steps and the strategy."
    )
