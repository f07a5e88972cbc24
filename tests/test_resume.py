"""Checkpoints and resume: a killed run continues exactly; damage is named, partial saves ignored."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, cli, run_recipe, tiny_recipe
from safetensors.torch import load_file

from runner.storage import checkpoints
from runner.storage.rundir import RunDir

pytestmark = pytest.mark.slow

# 480 training rows, batch 32: 15 steps per epoch, 30 in all; a checkpoint every 10 steps.
RESUMABLE = ["training.eval_every=10", "training.keep_best=false", "training.keep_checkpoints=5"]


def train_losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in RunDir(run_dir).read_metrics_log() if r["split"] == "train" and "loss" in r}


def start(recipe, output, overrides) -> subprocess.Popen:
    args = [sys.executable, "-m", "runner.cli", "run", str(recipe), "--output", str(output)]
    for override in overrides:
        args += ["--set", override]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, process, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended first: {process.stderr.read()}")
        time.sleep(0.01)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    return tiny_recipe(tmp_path_factory.mktemp("recipe") / "r.toml", rows=600, epochs=2)


@pytest.fixture(scope="module")
def uninterrupted(recipe, tmp_path_factory):
    return run_recipe(recipe, tmp_path_factory.mktemp("uninterrupted") / "run", RESUMABLE)


@pytest.mark.parametrize("kill_after", [10, 20])
def test_kill_9_then_resume_equals_the_uninterrupted_run(recipe, uninterrupted, tmp_path, kill_after):
    output = tmp_path / "run"
    process = start(recipe, output, RESUMABLE)
    manifest = output / "checkpoints" / f"checkpoint-{kill_after}" / checkpoints.MANIFEST
    wait_for(manifest.is_file, process)
    process.kill()
    process.wait()
    assert RunDir(output).status()["state"] == "running"  # a hard kill leaves no chance to say otherwise
    assert not (output / "model").exists()
    measured_at = (output / "baseline.json").stat().st_mtime_ns

    assert cli("resume", output) == 0
    run = RunDir(output)
    assert run.status()["state"] == "completed" and run.status()["global_step"] == 30
    assert train_losses(output) == train_losses(uninterrupted.run_dir.path)  # every step, bitwise
    ours = load_file(output / "model" / "model.safetensors")
    theirs = load_file(uninterrupted.run_dir.model / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # the baselines measured before the kill are the run's; the resume read them, not measured again
    assert (output / "baseline.json").stat().st_mtime_ns == measured_at
    measured = json.loads((output / "baseline.json").read_text())["baselines"]
    assert measured == json.loads((output / "evaluation.json").read_text())["baselines"]
    assert measured == json.loads((uninterrupted.run_dir.path / "evaluation.json").read_text())["baselines"]


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_run(recipe, tmp_path, capsys):
    output = tmp_path / "run"
    overrides = [*RESUMABLE, "training.epochs=20"]  # 300 steps: long enough to be interrupted
    process = start(recipe, output, overrides)
    log = output / "metrics.jsonl"
    wait_for(lambda: log.is_file() and '"split": "train"' in log.read_text(), process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "finetune resume" in err and "Traceback" not in err
    status = RunDir(output).status()
    assert status["state"] == "interrupted" and status["global_step"] < 300
    saved = checkpoints.latest_complete(output / "checkpoints")
    assert saved is not None and checkpoints.step_of(saved) == status["global_step"]

    assert cli("resume", output) == 0
    train_steps = [r["step"] for r in RunDir(output).read_metrics_log() if r["split"] == "train"]
    assert train_steps == sorted(set(train_steps)), "steps logged twice after resume"
    assert RunDir(output).status()["global_step"] == 300
    capsys.readouterr()

    before = (output / "metrics.jsonl").read_text()
    assert cli("resume", output) == 0  # a finished run adds no steps
    assert "nothing to resume" in capsys.readouterr().out
    assert (output / "metrics.jsonl").read_text() == before


def test_damaged_checkpoint_is_named_and_partial_checkpoints_are_ignored(recipe, uninterrupted, tmp_path, capsys):
    import shutil

    output = tmp_path / "run"
    shutil.copytree(uninterrupted.run_dir.path, output)
    shutil.rmtree(output / "model")
    run = RunDir(output)
    run.set_status("interrupted")
    newest = output / "checkpoints" / "checkpoint-30"
    shutil.rmtree(newest)
    damaged = output / "checkpoints" / "checkpoint-20" / "optimizer.pt"
    damaged.write_bytes(damaged.read_bytes()[:100])

    assert cli("resume", output) == 2
    err = capsys.readouterr().err
    assert str(damaged) in err and "100 bytes" in err

    # a save cut off by a crash: the directory exists, the manifest does not
    partial = output / "checkpoints" / "checkpoint-25"
    shutil.copytree(output / "checkpoints" / "checkpoint-10", partial)
    (partial / checkpoints.MANIFEST).unlink()
    assert checkpoints.latest_complete(output / "checkpoints").name == "checkpoint-20"
    assert cli("resume", output, "--checkpoint", "checkpoint-10") == 0
    assert not partial.exists()
    assert run.status()["state"] == "completed"
    assert train_losses(output) == train_losses(uninterrupted.run_dir.path)


def test_nan_loss_stops_before_the_optimizer_step_and_keeps_the_last_good_checkpoint(recipe, tmp_path, capsys):
    output = tmp_path / "run"
    overrides = [
        "training.learning_rate=1e12",
        "training.max_grad_norm=0",
        "training.eval_every=1",
        "training.keep_best=false",
    ]
    code = cli("run", recipe, "--output", output, *[a for o in overrides for a in ("--set", o)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "training stopped: the loss became" in err and "before the optimizer step" in err
    run = RunDir(output)
    assert run.status()["state"] == "failed"
    assert not (output / "model").exists() and not (output / "metrics.json").exists()
    last = checkpoints.latest_complete(output / "checkpoints")
    assert last is not None and str(last) in err
    state = json.loads((last / "trainer_state.json").read_text())
    finite = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert finite and all(v == v and abs(v) != float("inf") for v in finite)


def test_resume_refuses_changed_data(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"row {i},{'ab'[i % 2]}\n" for i in range(60)))
    recipe = tiny_recipe(tmp_path / "r.toml")
    recipe.write_text(recipe.read_text().replace('type = "synthetic"\nrows = 300', 'type = "files"\npath = "d.csv"'))
    output = tmp_path / "run"
    run_recipe(recipe, output, ["training.epochs=1"])
    RunDir(output).set_status("interrupted")
    data.write_text(data.read_text() + "one more,a\n")
    assert cli("resume", output) == 2
    assert "no longer matches what the run started with" in capsys.readouterr().err


def test_resume_refuses_an_edited_recipe_unless_forced(recipe, uninterrupted, tmp_path, capsys):
    import shutil

    output = tmp_path / "run"
    shutil.copytree(uninterrupted.run_dir.path, output)
    shutil.rmtree(output / "model")
    RunDir(output).set_status("interrupted")
    resolved = output / "recipe.resolved.toml"
    resolved.write_text(resolved.read_text().replace("learning_rate = 0.003", "learning_rate = 0.002"))
    assert cli("resume", output) == 2
    assert "recipe.resolved.toml changed since the run started" in capsys.readouterr().err
    assert cli("resume", output, "--force") == 0
