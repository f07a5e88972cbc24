"""`finetune compare`: differing recipe keys, final metrics side by side, the best of each row."""

from __future__ import annotations

import json

from conftest import cli
from test_report import make_run

from runner.report.compare import compare_runs


def two_runs(tmp_path):
    # Run a: lower validation loss but lower accuracy; run b the other way round.
    a = make_run(tmp_path / "a", learning_rate=0.002, val_loss=0.25, val_accuracy=0.88)
    b = make_run(tmp_path / "b", learning_rate=0.0005, val_loss=0.35, val_accuracy=0.91)
    return a, b


def row(result, split, metric):
    return next(r for r in result["metrics"][split] if r["metric"] == metric)


def test_compare_shows_the_differing_key_and_the_best_of_each_row(tmp_path):
    a, b = two_runs(tmp_path)
    result = compare_runs([a, b])
    assert result["recipe"] == [{"key": "training.learning_rate", "values": [0.002, 0.0005]}]
    loss, accuracy = row(result, "validation", "loss"), row(result, "validation", "accuracy")
    assert loss["values"] == [0.25, 0.35] and loss["best"] == [0] and loss["greater_is_better"] is False
    assert accuracy["values"] == [0.88, 0.91] and accuracy["best"] == [1] and accuracy["greater_is_better"] is True
    assert row(result, "test", "accuracy")["best"] == [0, 1]  # a tie: both are the best
    assert "runtime" not in [r["metric"] for r in result["metrics"]["validation"]]
    assert [r["status"] for r in result["runs"]] == ["completed", "completed"]
    assert [r["global_step"] for r in result["runs"]] == [120, 120]


def test_direction_comes_from_evaluation_json_then_from_the_name(tmp_path):
    # evaluation.json of the first run says accuracy is lower-is-better (a made-up direction, to see it used)
    a = make_run(tmp_path / "a", val_accuracy=0.88, greater_is_better={"loss": False, "accuracy": False})
    b = make_run(tmp_path / "b", val_accuracy=0.91)
    assert row(compare_runs([a, b]), "validation", "accuracy")["best"] == [0]
    c = make_run(tmp_path / "c", val_accuracy=0.7)
    for run, perplexity in ((a, 12.0), (b, "nan"), (c, 15.0)):
        (run / "evaluation.json").unlink()
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["validation"]["perplexity"] = perplexity
        (run / "metrics.json").write_text(json.dumps(metrics))
    result = compare_runs([a, b, c])
    assert row(result, "validation", "accuracy")["best"] == [1]
    perplexity = row(result, "validation", "perplexity")
    assert perplexity["values"] == [12.0, "nan", 15.0] and perplexity["best"] == [0]  # lower, nan left out
    assert row(compare_runs([a, b]), "validation", "perplexity")["best"] == []  # one finite value: no contest


def test_finetune_compare_prints_tables_and_json(tmp_path, capsys):
    a, b = two_runs(tmp_path)
    assert cli("compare", a, b) == 0
    out = capsys.readouterr().out
    assert "training.learning_rate" in out and "0.002" in out and "0.0005" in out
    assert "0.2500 *" in out and "0.9100 *" in out  # the best loss (run a) and accuracy (run b) marked
    assert "0.3500 *" not in out and "0.8800 *" not in out
    assert "batch_size" not in out  # identical keys are hidden
    assert cli("compare", a, b, "--json") == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(compare_runs([a, b])))


def test_finetune_compare_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    a = make_run(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    assert cli("compare", a, tmp_path / "empty") == 2
    err = capsys.readouterr().err
    assert "empty is not a run directory" in err and "Traceback" not in err
    assert cli("compare", a) == 2
    assert "two run directories or more" in capsys.readouterr().err
