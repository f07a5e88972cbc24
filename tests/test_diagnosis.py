"""The learning-curve diagnosis: synthetic curves with a known shape, and one real run that over-fits."""

import math

import pytest
from conftest import run_recipe, tiny_recipe

from runner.evaluation.diagnosis import diagnose

STEPS = 10  # optimizer steps per epoch in the synthetic curves
LOG_EVERY = 2


def records(train: list[float], validation: list[float | str], *, metrics=None, noise: float = 0.0) -> list[dict]:
    """metrics.jsonl records: epoch i trains at about train[i] (logged every LOG_EVERY steps, falling
    linearly towards the next epoch's level) and ends with an evaluation of loss validation[i]."""
    out = []
    for epoch, level in enumerate(train):
        following = train[epoch + 1] if epoch + 1 < len(train) else level
        for step in range(epoch * STEPS + LOG_EVERY, (epoch + 1) * STEPS + 1, LOG_EVERY):
            share = (step - epoch * STEPS) / STEPS
            wiggle = noise * (1 if step % (2 * LOG_EVERY) else -1)
            loss = level + (following - level) * share + wiggle
            out.append({"time": 0, "step": step, "split": "train", "loss": loss, "epoch": step / STEPS})
        if epoch < len(validation):
            row = {"time": 0, "step": (epoch + 1) * STEPS, "split": "validation", "loss": validation[epoch]}
            row.update(epoch=float(epoch + 1), **(metrics[epoch] if metrics else {}))
            out.append(row)
    return out


def falling(n: int, start: float = 1.1, end: float = 0.05) -> list[float]:
    return [start * (end / start) ** (i / (n - 1)) for i in range(n)]


def test_rising_validation_with_falling_training_is_over_fitting_from_the_right_epoch():
    result = diagnose(records(falling(7), [1.0, 0.7, 0.5, 0.45, 0.5, 0.6, 0.7]))
    assert result["verdict"] == "over-fitting"
    assert result["overfitting_from"] == {"step": 50, "epoch": 5.0}
    assert result["best"] == {"step": 40, "epoch": 4.0, "validation_loss": 0.45, "metric": "loss", "loss": 0.45}
    summary = result["summary"]
    assert "from 0.45 at epoch 4 (step 40) to 0.7 at epoch 7 (step 70)" in summary
    assert "over-fitting from epoch 5 (step 50)" in summary
    assert "early_stopping_patience = 1" in summary


def test_over_fitting_starts_where_the_validation_loss_leaves_the_tolerance():
    # epoch 4 is within 5% of the minimum (0.45 -> 0.46): the rise begins at epoch 5
    result = diagnose(records(falling(7), [1.0, 0.6, 0.45, 0.46, 0.55, 0.65, 0.75]))
    assert result["verdict"] == "over-fitting"
    assert result["overfitting_from"] == {"step": 50, "epoch": 5.0}
    assert result["best"]["step"] == 30


def test_patience_counts_the_plateau_before_the_best_point():
    # two evaluations without improvement (0.81, 0.82) before the best: patience 1 or 2 would stop too early
    result = diagnose(records(falling(8), [1.0, 0.8, 0.81, 0.82, 0.6, 0.7, 0.8, 0.9]))
    assert result["verdict"] == "over-fitting"
    assert "early_stopping_patience = 3 would have stopped training at epoch 8 (step 80)" in result["summary"]


def test_flat_training_and_validation_is_under_fitting():
    flat = [1.1, 1.09, 1.1, 1.08, 1.09, 1.08]
    result = diagnose(records(flat, [1.1, 1.1, 1.09, 1.1, 1.09, 1.09], noise=0.01))
    assert result["verdict"] == "under-fitting"
    assert result["overfitting_from"] is None
    assert "neither did validation loss" in result["summary"]


def test_flat_but_already_low_training_loss_is_not_under_fitting():
    low = [0.04, 0.039, 0.038, 0.038, 0.037]
    result = diagnose(records(low, [0.05, 0.049, 0.049, 0.048, 0.048]))
    assert result["verdict"] == "good fit"


def test_both_falling_is_a_good_fit():
    result = diagnose(records(falling(6), falling(6, 1.0, 0.3)))
    assert result["verdict"] == "good fit"
    assert result["overfitting_from"] is None
    assert result["best"]["step"] == 60  # still improving at the end
    assert "no sign of over-fitting" in result["summary"]
    assert "early_stopping_patience" not in result["summary"]  # nothing to stop early


def test_noisy_validation_that_ends_flat_is_not_over_fitting():
    # two spikes of 12% over the minimum in the middle, back within 5% at the end
    validation = [1.0, 0.6, 0.5, 0.56, 0.49, 0.55, 0.5, 0.51]
    result = diagnose(records(falling(8), validation, noise=0.02))
    assert result["verdict"] == "good fit"
    assert result["overfitting_from"] is None
    assert result["best"]["step"] == 50
    assert "early_stopping_patience" not in result["summary"]  # no advice to stop where nothing went wrong


@pytest.mark.parametrize(
    ("last", "verdict"),
    [(0.53, "good fit"), (0.54, "good fit"), (0.6, "over-fitting")],
    ids=["within-tolerance", "one-small-rise-at-the-end", "one-clear-rise-at-the-end"],
)
def test_a_single_rise_at_the_end_counts_only_when_clear(last, verdict):
    result = diagnose(records(falling(6), [1.0, 0.5, 0.5, 0.5, 0.51, last]))
    assert result["verdict"] == verdict


def test_a_rise_at_the_only_evaluation_after_the_minimum_counts():
    result = diagnose(records(falling(4), [1.0, 0.7, 0.5, 0.54]))
    assert result["verdict"] == "over-fitting"
    assert result["overfitting_from"] == {"step": 40, "epoch": 4.0}


def test_validation_rising_with_training_is_instability_not_over_fitting():
    result = diagnose(records([1.0, 0.6, 0.5, 0.7, 0.9, 1.2], [1.0, 0.6, 0.5, 0.7, 0.9, 1.2]))
    assert result["verdict"] != "over-fitting"
    assert "unstable" in result["summary"]


def test_nan_and_inf_values_do_not_crash():
    rows = records(falling(6), [1.0, 0.7, 0.5, 0.45, "nan", 0.6])
    rows[3]["loss"] = "inf"  # a training log
    rows.append({"time": 0, "step": 70, "split": "validation", "loss": "nan", "accuracy": "nan", "epoch": 7.0})
    result = diagnose(rows, best_metric="accuracy", greater_is_better=True)
    assert result["verdict"] in {"over-fitting", "good fit"}
    assert result["best"] is None  # no finite accuracy anywhere
    assert f"first at step {rows[3]['step']}" in result["summary"]
    result = diagnose(rows)
    assert result["best"]["step"] == 40 and math.isfinite(result["best"]["validation_loss"])


def test_two_evaluations_are_not_enough():
    result = diagnose(records(falling(2), [1.0, 0.8]))
    assert result["verdict"] == "not enough evaluations"
    assert result["overfitting_from"] is None
    assert result["best"]["step"] == 20
    assert "Only 2 validation evaluations" in result["summary"]


def test_few_evaluations_still_report_obvious_under_fitting():
    flat = [1.1, 1.1, 1.09, 1.1]
    result = diagnose(records(flat, [1.1, 1.09]))
    assert result["verdict"] == "under-fitting"
    assert "Only 2 validation evaluations" in result["summary"]
    result = diagnose(records(flat, []))  # no validation split at all: training alone decides
    assert result["verdict"] == "under-fitting" and result["best"] is None
    assert "training loss alone" in result["summary"] and "no validation evaluations" in result["summary"]
    assert diagnose([])["verdict"] == "not enough evaluations"


def test_best_point_follows_the_best_metric_and_final_records_are_ignored():
    accuracy = [{"accuracy": a} for a in (0.5, 0.7, 0.8, 0.78, 0.75)]
    rows = records(falling(5), [1.0, 0.7, 0.6, 0.55, 0.65], metrics=accuracy)
    rows.append({"time": 0, "step": None, "split": "validation", "final": True, "loss": 9.0, "accuracy": 0.99})
    result = diagnose(rows, best_metric="accuracy", greater_is_better=True)
    assert result["best"] == {"step": 30, "epoch": 3.0, "validation_loss": 0.6, "metric": "accuracy", "accuracy": 0.8}
    assert "The best point by accuracy (0.8) was epoch 3 (step 30)" in result["summary"]
    assert result["verdict"] == "over-fitting"  # judged on the loss: 0.55 -> 0.65
    assert result["overfitting_from"] == {"step": 50, "epoch": 5.0}


# The conftest's tiny classifier on 60 noisy training rows for 16 epochs: it learns the noise.
OVERFIT = [
    "run.seed=3",
    "data.sources[0].label_noise=0.3",
    "data.split.train=0.3",
    "data.split.validation=0.6",
    "data.split.test=0.1",
    "training.batch_size=16",
    "evaluation.baseline=false",
    "evaluation.bootstrap=0",
]


@pytest.mark.slow
def test_a_tiny_classifier_trained_too_long_on_60_noisy_rows_over_fits(tmp_path):
    recipe = tiny_recipe(tmp_path / "overfit.toml", rows=200, epochs=16)
    result = run_recipe(recipe, tmp_path / "run", OVERFIT)
    rows = result.run_dir.read_metrics_log()
    evaluations = [r for r in rows if r["split"] == "validation" and r["step"] is not None]
    assert len(evaluations) == 16
    diagnosis = diagnose(rows)
    assert diagnosis["verdict"] == "over-fitting", diagnosis["summary"]
    lowest = min(evaluations, key=lambda r: r["loss"])
    assert diagnosis["best"]["step"] == lowest["step"]
    start = diagnosis["overfitting_from"]["step"]
    assert start > lowest["step"]
    assert all(r["loss"] > lowest["loss"] * 1.05 for r in evaluations if r["step"] >= start)
