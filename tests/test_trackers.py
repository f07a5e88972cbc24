"""The experiment-tracking reporters: one tiny real run with `tensorboard` and `mlflow`, read back
with each tool's own reader and compared with what the run directory recorded."""

from __future__ import annotations

import importlib.util
import json
import tomllib
from pathlib import Path

import pytest
from conftest import cli, tiny_recipe

REPORTERS = """
[[reporters]]
type = "tensorboard"

[[reporters]]
type = "tensorboard"
log_dir = "tb"

[[reporters]]
type = "mlflow"
tags = {{ team = "nlp" }}
"""


def _recipe(path: Path, output: Path, reporters: str = REPORTERS) -> Path:
    path = tiny_recipe(path, rows=120, epochs=1, eval_every=2, extra=reporters.format())
    text = path.read_text().replace("threads = 1", f"threads = 1\noutput_dir = {json.dumps(str(output))}")
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One finished run shared by the tests: (output folder, run directory)."""
    root = tmp_path_factory.mktemp("trackers")
    output = root / "runs"
    run_dir = output / "r" / "one"
    assert cli("run", _recipe(root / "r.toml", output), "--output", run_dir) == 0
    return output, run_dir


def _train_log(run_dir: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if r.get("split") == "train" and "loss" in r]


def _scalars(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_tensorboard_curves_match_the_run_directory(tracked):
    output, run_dir = tracked
    logged = _train_log(run_dir)
    final = json.loads((run_dir / "metrics.json").read_text())
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    # the default folder inside the run, and `log_dir = "tb"` under the output folder, per run
    for log_dir in (run_dir / "tensorboard", output / "tb" / "r" / "one"):
        events = _scalars(log_dir)
        loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
        assert [s for s, _ in loss] == [s for s, _ in logged] and len(loss) >= 2
        assert [v for _, v in loss] == pytest.approx([v for _, v in logged], rel=1e-6)
        for tag in ("train/learning_rate", "train/grad_norm"):
            assert len(events.Scalars(tag)) == len(logged)
        last = events.Scalars("validation/accuracy")[-1]
        assert last.step == logged[-1][0]  # the after-training evaluation, at the last step
        assert last.value == pytest.approx(final["validation"]["accuracy"], rel=1e-6)
        assert events.Scalars("test/accuracy")[-1].value == pytest.approx(final["test"]["accuracy"], rel=1e-6)
        assert "validation/runtime" not in events.Tags()["scalars"]
        base = next(b for b in evaluation["baselines"] if b["name"] == "base model")
        (point,) = events.Scalars("baseline_base_model/test/accuracy")
        assert point.step == 0 and point.value == pytest.approx(base["test"]["accuracy"], rel=1e-6)
        recipe = events.Tensors("recipe/text_summary")[0].tensor_proto.string_val[0].decode()
        assert 'architecture = "gpt2"' in recipe
        assert events.Tensors("status/text_summary")[-1].tensor_proto.string_val[0] == b"completed"
        hparams = events.PluginTagToContent("hparams")
        assert "_hparams_/experiment" in hparams
        from tensorboard.plugins.hparams import plugin_data_pb2

        start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
        settings = start.session_start_info.hparams  # the recipe's key paths, as --set takes them
        assert settings["data.sources[0].type"].string_value == "synthetic"
        assert settings["training.learning_rate"].number_value == pytest.approx(3e-3)


def _mlflow_run(output: Path, experiment: str = "r"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{output / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(experiment)
    assert experiment is not None and experiment.artifact_location == (output / "mlartifacts").as_uri()
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def test_mlflow_run_holds_params_metrics_tags_and_artefacts(tracked, tmp_path):
    output, run_dir = tracked
    client, run = _mlflow_run(output)
    run_id = run.info.run_id
    assert run.info.status == "FINISHED" and run.info.run_name == "one"
    history = client.get_metric_history(run_id, "train/loss")
    logged = _train_log(run_dir)
    history = sorted(history, key=lambda m: m.step)
    assert [m.step for m in history] == [s for s, _ in logged]
    assert [m.value for m in history] == pytest.approx([v for _, v in logged])
    final = json.loads((run_dir / "metrics.json").read_text())
    assert run.data.metrics["validation/accuracy"] == pytest.approx(final["validation"]["accuracy"])
    assert run.data.metrics["test/loss"] == pytest.approx(final["test"]["loss"])
    assert run.data.metrics["train/global_step"] == final["train"]["global_step"]
    assert "baseline_majority_class/test/accuracy" in run.data.metrics
    params = run.data.params
    assert params["training.learning_rate"] == "0.003" and params["model.config.n_layer"] == "1"
    # the key path as --set takes it (`data.sources[0].type`), with what MLflow refuses in a name as "_"
    assert params["data.sources_0_.type"] == "synthetic"
    tags = run.data.tags
    assert tags["team"] == "nlp" and tags["finetune.status"] == "completed"
    assert tags["finetune.run_dir"] == str(run_dir.resolve())
    assert {a.path for a in client.list_artifacts(run_id)} == {"recipe.toml", "report.html", "model"}
    model_files = {Path(a.path).name for a in client.list_artifacts(run_id, "model")}
    assert {"config.json", "model.safetensors"} <= model_files
    recipe = Path(client.download_artifacts(run_id, "recipe.toml", str(tmp_path)))
    resolved = tomllib.loads((run_dir / "recipe.resolved.toml").read_text())
    assert tomllib.loads(recipe.read_text()) == resolved


def test_status_sweep_tags_and_resume_without_training(tmp_path):
    """Driven directly: a stopped sweep trial is KILLED, a resumed run continues its MLflow run, a
    failed one is FAILED, and TensorBoard writes its files whatever the status."""
    from plugins.reporters.mlflow_tracker import MLflow, MLflowOptions
    from plugins.reporters.tensorboard_tracker import TensorBoard, TensorBoardOptions

    output = tmp_path / "runs"
    run = {"name": "s", "run_dir": str(output / "sweeps" / "s" / "trial-0003"), "seed": 1,
           "recipe": {"run": {"output_dir": str(output)}}, "sweep": {"study": "s", "trial": 3}}  # fmt: skip
    tracker, board = MLflow(MLflowOptions()), TensorBoard(TensorBoardOptions(log_dir="tb"))
    for reporter in (tracker, board):
        reporter.start(run)
        reporter.train_begin(10, 0)
        reporter.log(1, {"loss": 2.0, "learning_rate": 1e-3, "note": "text is skipped"})
        reporter.log(2, {"loss": 1.8})  # after the checkpoint at step 1: logged again on resume
        reporter.evaluated("validation", 1, {"accuracy": 0.5, "runtime": 0.1})
        reporter.audited("leakage", False, "3 rows shared")
        reporter.finish("stopped", {"metrics": {}, "baselines": []})
    client, first = _mlflow_run(output, "s")
    assert first.info.status == "KILLED" and first.info.run_name == "trial-0003"
    assert first.data.tags["sweep.study"] == "s" and first.data.tags["sweep.trial"] == "3"
    assert first.data.tags["audit.leakage"] == "failed: 3 rows shared"
    assert set(first.data.metrics) == {"train/loss", "train/learning_rate", "validation/accuracy", "audits/leakage"}
    assert _scalars(output / "tb" / "sweeps" / "s" / "trial-0003").Scalars("train/loss")[0].value == 2.0

    tracker, board = MLflow(MLflowOptions()), TensorBoard(TensorBoardOptions(log_dir="tb"))
    for reporter in (tracker, board):  # resumed from a checkpoint at step 1
        reporter.start(run)
        reporter.train_begin(10, 1)
        reporter.log(2, {"loss": 1.0})
        reporter.finish("failed", {"metrics": {}, "baselines": []})
    client, again = _mlflow_run(output, "s")
    assert again.info.run_id == first.info.run_id and again.info.status == "FAILED"
    # MLflow cannot drop points: both attempts' step 2 stay; TensorBoard purges the first one's
    assert sorted(m.step for m in client.get_metric_history(again.info.run_id, "train/loss")) == [1, 2, 2]
    events = _scalars(output / "tb" / "sweeps" / "s" / "trial-0003")
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 2.0), (2, 1.0)]


def test_a_missing_extra_is_a_recipe_error_naming_it(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("tensorboard", "mlflow") else real(name, *a)
    )
    path = _recipe(tmp_path / "r.toml", tmp_path / "runs")
    assert cli("validate", path) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "pip install 'finetune-runner[tensorboard]'" in out
    assert "pip install 'finetune-runner[mlflow]'" in out
    assert "reporters" in out  # at the reporter's key
