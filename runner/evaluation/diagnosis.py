"""Read a run's learning curves and say, in plain words, whether it over-fitted, under-fitted or fit well.

`diagnose(records)` takes the records of `metrics.jsonl` (training logs: split "train" with "loss";
evaluations during training: split "validation" with "loss", metrics, "step" and maybe "epoch") and
returns the "diagnosis" of `evaluation.json`: {"verdict", "summary", "overfitting_from", "best"}.
Final evaluations ("final": true, step None) are not part of the curve and are ignored. Values may be
the strings "nan"/"inf"; a value that is not a finite number is left out (and the summary says so).

The rules, made to survive the noise of small validation sets:

- Evaluations: the validation records with a finite loss, one per step (the last one written wins).
  With fewer than 3 of them the verdict is "not enough evaluations" - unless the training loss alone
  shows under-fitting (below), which is then the verdict. The best point is still reported.
- Smoothed training loss at an evaluation: the mean of the training logs since the previous
  evaluation (up to and including its step); where that window has no log, the last log before it.
- Over-fitting: after its lowest point the validation loss rises above the minimum by more than
  `RISE_TOLERANCE` (5%) of the minimum, and stays there: the last evaluation is above that line, and
  so is a stretch of at least 2 evaluations at the end - or the one evaluation at the end is more than
  twice the tolerance above, or it is the only evaluation after the minimum. Meanwhile the smoothed
  training loss at the last evaluation is lower than at the minimum (training kept falling). Over-fitting
  starts ("overfitting_from") at the first evaluation of that final stretch. When validation rises but
  training does not fall, that is instability (the learning rate, usually), not over-fitting, and the
  summary says so; without training logs the validation curve decides alone.
- Under-fitting: the training loss fell by less than `FLAT_DROP` (10%) from its first logs to its last
  (the mean of the first and of the last tenth of the logs, at least one each), it ends above
  `LOW_LOSS` (a loss that low is already a good fit), and the validation loss did not fall by 10% either
  (from the first evaluation to its lowest). Without validation evaluations the training loss decides
  alone, and the summary says so.
- Good fit: otherwise.
- Best point: the evaluation with the best `best_metric` (lowest, or highest when `greater_is_better`;
  the earliest on ties): where `training.keep_best` ends and where early stopping should stop. When the
  validation loss rose for good, the summary names the smallest `training.early_stopping_patience` that
  would have reached it: one more than the longest run of evaluations without improvement before it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from runner.storage.rundir import finite

RISE_TOLERANCE = 0.05  # share of the minimum validation loss that a rise must exceed to count
FLAT_DROP = 0.10  # a loss that fell by less than this share of its start is flat
LOW_LOSS = 0.1  # a training loss that ends below this is not under-fitting, however flat
MIN_EVALUATIONS = 3

VERDICTS = ("over-fitting", "under-fitting", "good fit", "not enough evaluations")


@dataclass
class _Eval:
    step: int
    epoch: float | None
    loss: float | None
    values: dict[str, float | None] = field(default_factory=dict)


def _is_nonfinite(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _at(e: _Eval) -> str:
    """'epoch 2 (step 80)', or 'step 80' when the epoch is unknown."""
    if e.epoch is None:
        return f"step {e.step}"
    epoch = f"{e.epoch:.2f}".rstrip("0").rstrip(".")
    return f"epoch {epoch} (step {e.step})"


def _point(e: _Eval) -> dict[str, Any]:
    return {"step": e.step, "epoch": e.epoch}


def _curves(records: list[dict]) -> tuple[list[tuple[int, float]], list[_Eval], int | None]:
    """Training (step, loss) logs and evaluations in step order, and the first step with a non-finite loss."""
    train: dict[int, float] = {}
    evals: dict[int, _Eval] = {}
    diverged: int | None = None
    for r in records:
        if r.get("final") or r.get("step") is None:
            continue
        step = int(r["step"])
        if _is_nonfinite(r.get("loss")):
            diverged = step if diverged is None else min(diverged, step)
        if r.get("split") == "train":
            loss = finite(r.get("loss"))
            if loss is not None:
                train[step] = loss
        elif r.get("split") == "validation":
            values = {k: finite(v) for k, v in r.items() if k not in ("time", "step", "split", "epoch", "final")}
            evals[step] = _Eval(step, finite(r.get("epoch")), values.get("loss"), values)
    return sorted(train.items()), [evals[s] for s in sorted(evals)], diverged


def _smoothed(train: list[tuple[int, float]], evals: list[_Eval]) -> list[float | None]:
    """The mean training loss of the logs leading up to each evaluation (see the module docstring)."""
    out: list[float | None] = []
    previous = -math.inf
    for e in evals:
        window = [loss for step, loss in train if previous < step <= e.step]
        if not window:
            window = [loss for step, loss in train if step <= e.step][-1:]
        out.append(sum(window) / len(window) if window else None)
        previous = e.step
    return out


def _ends(train: list[tuple[int, float]]) -> tuple[float, float] | None:
    """The mean of the first and of the last tenth of the training logs (at least one each)."""
    if len(train) < 2:
        return None
    k = max(1, len(train) // 10)
    first = [loss for _, loss in train[:k]]
    last = [loss for _, loss in train[-k:]]
    return sum(first) / k, sum(last) / k


def _best(evals: list[_Eval], metric: str, greater: bool) -> tuple[int, float] | None:
    """Index and value of the best evaluation by `metric` (earliest on ties)."""
    best: tuple[int, float] | None = None
    for i, e in enumerate(evals):
        value = e.values.get(metric)
        if value is None:
            continue
        if best is None or (value > best[1] if greater else value < best[1]):
            best = (i, value)
    return best


def _patience(evals: list[_Eval], metric: str, greater: bool, best_index: int) -> int:
    """The smallest early-stopping patience that reaches the best evaluation without stopping before it."""
    longest = streak = 0
    record: float | None = None
    for e in evals[: best_index + 1]:
        value = e.values.get(metric)
        if value is None:
            continue
        if record is None or (value > record if greater else value < record):
            record, streak = value, 0
        else:
            streak += 1
            longest = max(longest, streak)
    return longest + 1


def _overfitting_stretch(losses: list[float], low: int) -> int | None:
    """Index where a sustained rise after the minimum at `low` begins, or None (rules in the docstring)."""
    line = losses[low] + RISE_TOLERANCE * abs(losses[low])
    if low == len(losses) - 1 or losses[-1] <= line:
        return None
    start = len(losses) - 1
    while start - 1 > low and losses[start - 1] > line:
        start -= 1
    stretch = len(losses) - start
    clearly = losses[-1] > losses[low] + 2 * RISE_TOLERANCE * abs(losses[low])
    only = low == len(losses) - 2
    return start if stretch >= 2 or clearly or only else None


def diagnose(records: list[dict], best_metric: str = "loss", greater_is_better: bool = False) -> dict[str, Any]:
    """The diagnosis of a run from its metrics.jsonl records: verdict, summary, overfitting_from and best.

    `best_metric` and `greater_is_better` are the recipe's `training.best_metric` and its direction
    ("loss" is always lower-is-better). See the module docstring for the rules.
    """
    if best_metric == "loss":
        greater_is_better = False
    train, all_evals, diverged = _curves(records)
    evals = [e for e in all_evals if e.loss is not None]
    sentences: list[str] = []
    verdict: str
    overfitting_from: dict[str, Any] | None = None
    rose = False  # the validation loss rose after its minimum and stayed up

    # best point, by the metric the run keeps
    best = None
    found = _best(all_evals, best_metric, greater_is_better)
    if found is not None:
        index, value = found
        b = all_evals[index]
        best = {"step": b.step, "epoch": b.epoch, "validation_loss": b.loss, "metric": best_metric, best_metric: value}

    ends = _ends(train)
    train_flat = ends is not None and ends[1] > LOW_LOSS and ends[1] > ends[0] * (1 - FLAT_DROP)
    val_low = min(range(len(evals)), key=lambda i: evals[i].loss) if evals else None
    val_flat = len(evals) >= 2 and val_low is not None and evals[val_low].loss > evals[0].loss * (1 - FLAT_DROP)
    train_change = f"{_fmt(ends[0])} -> {_fmt(ends[1])}" if ends else ""

    def underfit_sentence(alone: bool) -> str:
        drop = (ends[0] - ends[1]) / ends[0] * 100 if ends[0] else 0.0
        text = f"Training loss barely moved ({train_change}, {drop:.0f}% lower)"
        if alone:
            return text + ": under-fitting, judged from the training loss alone (no validation curve to compare)."
        return (
            text + f" and neither did validation loss ({_fmt(evals[0].loss)} at {_at(evals[0])} -> "
            f"{_fmt(evals[val_low].loss)} at best): under-fitting. Train longer, raise the learning rate "
            "or use a larger model."
        )

    if len(evals) < MIN_EVALUATIONS:
        if train_flat and (len(evals) < 2 or val_flat):
            verdict = "under-fitting"
            sentences.append(underfit_sentence(alone=len(evals) < 2))
        else:
            verdict = "not enough evaluations"
        if not train and not evals:
            sentences.append("No training or validation losses were logged.")
        elif not evals:
            sentences.append("There were no validation evaluations during training.")
        else:
            sentences.append(
                f"Only {len(evals)} validation evaluation{'s' if len(evals) != 1 else ''} with a loss: "
                f"{MIN_EVALUATIONS} or more are needed to judge over-fitting (set training.eval_every to a "
                "number of steps to evaluate more often)."
            )
    else:
        losses = [e.loss for e in evals]
        smooth = _smoothed(train, evals)
        start = _overfitting_stretch(losses, val_low)
        rose = start is not None
        low, last = evals[val_low], evals[-1]
        rise = (
            f"Validation loss rose from {_fmt(low.loss)} at {_at(low)} to {_fmt(last.loss)} at {_at(last)}"
            if start is not None
            else ""
        )
        train_then, train_now = smooth[val_low], smooth[-1]
        if start is not None and (train_then is None or train_now is None):
            verdict = "over-fitting"
            overfitting_from = _point(evals[start])
            sentences.append(f"{rise} (no training loss logged to compare): over-fitting from {_at(evals[start])}.")
        elif start is not None and train_now < train_then:
            verdict = "over-fitting"
            overfitting_from = _point(evals[start])
            sentences.append(
                f"{rise} while training loss kept falling ({_fmt(train_then)} -> {_fmt(train_now)}): "
                f"over-fitting from {_at(evals[start])}."
            )
        elif train_flat and val_flat:
            verdict = "under-fitting"
            sentences.append(underfit_sentence(alone=False))
        else:
            verdict = "good fit"
            if start is not None:
                sentences.append(
                    f"{rise}, but training loss did not fall meanwhile ({_fmt(train_then)} -> {_fmt(train_now)}): "
                    "training became unstable (a lower learning rate usually helps), not over-fitting."
                )
            else:
                first = evals[0]
                trained = f" while training loss went {train_change}" if ends else ""
                sentences.append(
                    f"Validation loss went from {_fmt(first.loss)} at {_at(first)} to {_fmt(low.loss)} at {_at(low)}"
                    f"{trained}, and did not stay more than {RISE_TOLERANCE:.0%} above its lowest point: "
                    "a good fit, no sign of over-fitting."
                )

    if found is not None:
        b = all_evals[found[0]]
        by = "" if best_metric == "loss" else f" by {best_metric} ({_fmt(found[1])})"
        text = f"The best point{by} was {_at(b)}"
        patience = _patience(all_evals, best_metric, greater_is_better, found[0])
        # advice only where validation got worse for good: elsewhere stopping early would not help
        if rose and found[0] + patience < len(all_evals):
            stop = all_evals[found[0] + patience]
            text += (
                f"; training.early_stopping_patience = {patience} would have stopped training at {_at(stop)}, "
                "keeping the weights of the best point"
            )
        sentences.append(text + ".")
    if diverged is not None:
        sentences.append(f"Some losses were nan or inf, first at step {diverged}: training may have diverged.")

    return {"verdict": verdict, "summary": " ".join(sentences), "overfitting_from": overfitting_from, "best": best}
