"""The Python API (docs/python-api.md), used the way a notebook or an orchestrator would: only
names exported from `runner`, no subprocess and no CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch

import runner
from tests.conftest import tiny_recipe, write


def test_a_bad_recipe_raises_every_problem_with_its_file_and_line(tmp_path):
    path = tiny_recipe(tmp_path / "bad.toml", extra="")
    text = (
        path.read_text()
        .replace("learning_rate = 3e-3", "learning_rte = 3e-3")
        .replace('type = "classification"', 'type = "classificaton"')
    )
    path.write_text(text)
    with pytest.raises(runner.RecipeError) as caught:
        runner.load_recipe(path)
    found = {".".join(map(str, issue.key)): issue for issue in caught.value.issues}
    assert set(found) >= {"training.learning_rte", "task.type"}, found
    for issue in found.values():
        assert issue.location.file == str(path) and issue.location.line, issue.render()
    assert "did you mean 'learning_rate'" in found["training.learning_rte"].render()
    # An override that breaks a good recipe names the --set it came from, as on the command line.
    with pytest.raises(runner.RecipeError) as caught:
        runner.load_recipe(tiny_recipe(tmp_path / "good.toml"), overrides=["training.epochs=-1"])
    assert [issue.key for issue in caught.value.issues] == [("training", "epochs")]
    assert "--set" in caught.value.issues[0].render()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny classification run through runner.run, shared by the tests that read it."""
    folder = tmp_path_factory.mktemp("api")
    recipe = runner.load_recipe(tiny_recipe(folder / "tiny.toml", epochs=3), overrides=["training.learning_rate=5e-3"])
    return runner.run(recipe, output=folder / "run")


def test_a_run_returns_its_outcome_and_its_directory_as_the_cli_leaves_it(finished):
    assert (finished.status, finished.exit_code, finished.message) == ("completed", 0, None)
    assert finished.path.name == "run" and finished.model_dir == finished.path / "model"
    assert finished.report is not None and (finished.path / "recipe.resolved.toml").is_file()
    assert finished.model is not None and finished.tokenizer is not None  # trained in this process

    done = runner.open_run(finished.path)
    assert done.status == "completed" and done.metrics == finished.metrics
    assert done.recipe["training"]["learning_rate"] == 5e-3  # the override, resolved into the run
    assert finished.baselines == done.evaluation["baselines"]
    baselines = {b["name"]: b["test"]["accuracy"] for b in finished.baselines}
    assert finished.metrics["test"]["accuracy"] > max(baselines["base model"], baselines["majority class"])

    # The reopened model gives the same logits as the one the run handed over.
    loaded = done.load()
    batch = finished.tokenizer(["a b c", "d e"], return_tensors="pt", padding=True)
    finished.model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.model(**batch).logits, finished.model(**batch).logits, atol=1e-5)
    predictions = done.predict(["a b c"])
    assert len(predictions) == 1 and predictions[0]["label"] in loaded.task.labels

    exported = done.export(output=finished.path.parent / "exported")
    assert (exported / "model.safetensors").is_file()


def test_a_finished_run_is_left_as_it_is_by_resume(finished):
    again = runner.resume(finished.path)
    assert (again.status, again.exit_code) == ("completed", 0)
    assert again.global_step == finished.global_step


def test_plan_is_data(tmp_path):
    found = runner.plan(tiny_recipe(tmp_path / "tiny.toml", rows=200), offline=True, samples=1)
    assert isinstance(found, runner.Plan)
    assert found.facts["rows"].startswith("train ") and found.facts["optimizer steps"].isdigit()
    assert "trainable" in found.facts["parameters"]
    provenance = {key: origin for key, _value, origin in found.provenance}
    assert provenance["training.batch_size"].startswith(str(tmp_path / "tiny.toml"))
    assert provenance["training.weight_decay"] == "default"
    assert ("task", "classification") in [(section, kind) for section, kind, _ in found.components]


class Interrupt(runner.Reporter):
    """What pressing Ctrl-C in a notebook does, at training step 2."""

    name = "interrupt"

    def __init__(self):
        super().__init__(None)

    def log(self, step, values):
        if step == 2 and "loss" in values:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_ends_a_run_as_data_and_resume_continues_it(tmp_path):
    path = tiny_recipe(tmp_path / "tiny.toml", epochs=2)
    stopped = runner.run(path, output=tmp_path / "run", in_process=runner.InProcess(observers=[Interrupt()]))
    assert (stopped.status, stopped.exit_code) == ("interrupted", 130)
    whole = int(runner.plan(path, offline=True, samples=0).facts["optimizer steps"])
    assert 2 <= stopped.global_step < whole and stopped.model_dir is None  # the step under way finishes
    assert (stopped.path / "checkpoints" / f"checkpoint-{stopped.global_step}").is_dir()
    assert "checkpoint" in stopped.message

    # A run directory whose process still runs is refused; one whose process died (killed, not yet
    # collected by its parent: a zombie) is not.
    status = stopped.path / "status.json"
    recorded = json.loads(status.read_text())
    with subprocess.Popen(["sleep", "30"]) as alive:
        status.write_text(json.dumps({**recorded, "state": "running", "pid": alive.pid}))
        with pytest.raises(runner.FinetuneError, match=f"still running \\(process {alive.pid}\\)"):
            runner.resume(stopped.path)
        alive.kill()
        time.sleep(0.2)  # killed, and not waited for
        resumed = runner.resume(stopped.path)
    assert (resumed.status, resumed.exit_code) == ("completed", 0)
    assert resumed.global_step == whole
    assert runner.open_run(stopped.path).status == "completed"


def test_what_stops_a_run_before_it_starts_raises_and_leaves_nothing(tmp_path):
    out = tmp_path / "taken"
    write(out / "something.txt", "already here")
    with pytest.raises(runner.FinetuneError) as caught:
        runner.run(tiny_recipe(tmp_path / "tiny.toml"), output=out)
    assert caught.value.exit_code == 2 and "not empty" in caught.value.message
    with pytest.raises(runner.FinetuneError):
        runner.open_run(tmp_path / "nowhere")
