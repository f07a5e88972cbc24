"""Trainer `dpo` through the whole runner: on two CPU processes (gloo) DDP and DeepSpeed ZeRO-2 train
what one process trains, step for step (the losses, TRL's reward figures gathered from both ranks, the
held-out scores); a LoRA run killed with SIGKILL resumes to the same steps bitwise, and exports
merged; a sweep optimises a preference metric."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cli, write
from safetensors.torch import load_file

from runner.storage.rundir import RunDir

pytestmark = pytest.mark.slow
pytest.importorskip("trl")

# The same global batch of 16 pairs: 16 on one process, 8 on each of two. No dropout (each process
# would draw its own masks) and one thread a process, so that the runs agree to float tolerance.
RECIPE = """
[run]
seed = 5
threads = 1

[[data.sources]]
type = "synthetic"
kind = "preference"
rows = 200

[tokenizer]
type = "trained"
vocab_size = 300
max_length = 96

[model]
type = "config"
architecture = "gpt2"
config.n_layer = 1
config.n_head = 2
config.n_embd = 32
config.n_positions = 96
config.resid_pdrop = 0.0
config.embd_pdrop = 0.0
config.attn_pdrop = 0.0

[task]
type = "preference"
template = "chatml"

[training]
type = "dpo"
beta = 0.5
learning_rate = 3e-3
batch_size = 16
max_steps = 6
log_every = 1
eval_every = 3
keep_best = false
"""
TWO = ["--nproc", "2", "--set", "training.batch_size=8"]
ZERO2 = ["--set", 'distributed.engine="deepspeed"', "--set", "distributed.zero_stage=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("dpo-runs")
    recipe = write(base / "dpo.toml", RECIPE)
    variants = {"single": [], "ddp": TWO, "zero2": [*TWO, *ZERO2], "zero2-precomputed": [*TWO, *ZERO2]}
    variants["zero2-precomputed"] += ["--set", 'training.reference="precomputed"']
    out = {}
    for name, args in variants.items():
        assert cli("run", recipe, "--output", base / name, *args) == 0, name
        out[name] = RunDir(base / name)
    return out


def train_logs(run: RunDir) -> dict[int, tuple[float, float]]:
    return {
        r["step"]: (r["loss"], r["rewards/margins"])
        for r in run.read_metrics_log()
        if r["split"] == "train" and "loss" in r
    }


@pytest.mark.parametrize("variant", ["ddp", "zero2", "zero2-precomputed"])
def test_two_processes_follow_the_dpo_steps_of_one(runs, variant):
    one, two = train_logs(runs["single"]), train_logs(runs[variant])
    assert sorted(one) == list(range(1, 7)) and one.keys() == two.keys()
    assert one[1][0] == pytest.approx(0.6931, abs=1e-3)  # step 1: the policy is its reference
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-3, abs=1e-5), (step, one[step], two[step])
    ours, theirs = (json.loads(r.metrics.read_text())["test"] for r in (runs[variant], runs["single"]))
    # the held-out scores of every pair (the held-out loss is left out: transformers averages it over
    # the batches each process evaluated, whose last one is padded with repeated pairs)
    for key in ("likelihood_accuracy", "reward_accuracy", "reward_margin"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-3, abs=1e-5), key
    env = json.loads(runs[variant].environment.read_text())
    assert env["world_size"] == 2


LORA = '\n[strategy]\ntype = "lora"\nr = 4\ndropout = 0.0\n'
RESUMABLE = ["training.keep_checkpoints=5"]


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    base = tmp_path_factory.mktemp("dpo-lora")
    recipe = write(base / "lora.toml", RECIPE + LORA)
    assert cli("run", recipe, "--output", base / "run", *(x for o in RESUMABLE for x in ("--set", o))) == 0
    return recipe, RunDir(base / "run")


def test_a_killed_lora_dpo_run_resumes_to_the_same_steps_bitwise(lora, tmp_path):
    from runner.storage import checkpoints
    from tests.test_resume import start, train_losses, wait_for

    recipe, uninterrupted = lora
    output = tmp_path / "run"
    process = start(recipe, output, RESUMABLE)
    wait_for((output / "checkpoints" / "checkpoint-3" / checkpoints.MANIFEST).is_file, process, timeout=300)
    process.kill()
    process.wait()
    assert RunDir(output).status()["state"] == "running" and not (output / "model").exists()

    assert cli("resume", output) == 0
    assert RunDir(output).status()["global_step"] == 6
    assert train_losses(output) == train_losses(uninterrupted.path)  # every step, bitwise
    ours = load_file(output / "model" / "adapter_model.safetensors")
    theirs = load_file(uninterrupted.model / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    logged = [r for r in RunDir(output).read_metrics_log() if r["split"] == "train" and "loss" in r]
    assert all("rewards/margins" in r for r in logged)  # TRL's figures are logged after the resume too


def test_a_lora_dpo_run_exports_merged_to_the_adapters_logits(lora, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, run = lora
    assert cli("export", run.path, "--merge", "--output", tmp_path / "merged") == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    adapter = AutoPeftModelForCausalLM.from_pretrained(run.model)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert "<|im_start|>" in tokenizer.chat_template
    ids = tokenizer(["<|im_start|>user\nIs this post positive?<|im_end|>"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(merged(**ids).logits, adapter(**ids).logits, atol=1e-5)


def test_a_sweep_maximises_a_preference_metric(tmp_path):
    import optuna

    from tests.test_sweep import study as open_study

    sweep = """
[sweep]
sampler = "grid"
metric = "reward_accuracy"
[sweep.space]
"training.beta" = { choice = [0.1, 0.5] }
"""
    recipe = write(tmp_path / "swept.toml", RECIPE + sweep)
    assert cli("sweep", recipe, "--output", tmp_path / "study") == 0
    study = open_study(tmp_path / "study")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials = [t for t in study.trials if t.value is not None]
    assert sorted(t.params["training.beta"] for t in trials) == [0.1, 0.5]
    for trial in trials:  # each trial's value is its run's final validation reward accuracy
        run = RunDir(trial.user_attrs["run_dir"])
        assert trial.value == json.loads(run.metrics.read_text())["validation"]["reward_accuracy"]
    best = max(trials, key=lambda t: t.value)
    assert f"beta = {best.params['training.beta']}" in (tmp_path / "study" / "best.toml").read_text()
