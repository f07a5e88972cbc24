"""Trainer `grpo` through the whole runner, from a recipe: the built-in rewards score sampled answers to
generated arithmetic, every step logs each reward and the reward-hacking check, the evaluation scores the
base and the tuned model's answers to held-out prompts with the rewards (with intervals and examples), a
LoRA run killed with SIGKILL resumes to the same steps bitwise (the sampling included), and ZeRO-2 on two
processes trains."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cli, write
from safetensors.torch import load_file

from runner.storage.rundir import RunDir

pytestmark = pytest.mark.slow
pytest.importorskip("trl")

RECIPE = """
[run]
seed = 3
threads = 1

[[data.sources]]
type = "synthetic"
kind = "arithmetic"
rows = 160

[tokenizer]
type = "trained"
vocab_size = 200
max_length = 48

[model]
type = "config"
architecture = "gpt2"
config = { n_layer = 1, n_head = 2, n_embd = 32, n_positions = 48 }

[task]
type = "instruction"
format = "alpaca"
template = "chatml"
max_new_tokens = 8

[[rewards]]
type = "answer_match"

[[rewards]]
type = "format"
pattern = '\\d+ [+-] \\d+ = \\d+'
weight = 0.5

[evaluation]
generation_rows = 16
bootstrap = 200

[training]
type = "grpo"
learning_rate = 1e-2
batch_size = 8
generations = 4
max_steps = 6
log_every = 1
save_every = 3
keep_checkpoints = 5
"""
LORA = '\n[strategy]\ntype = "lora"\nr = 4\ndropout = 0.0\n'


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    base = tmp_path_factory.mktemp("grpo")
    recipe = write(base / "grpo.toml", RECIPE + LORA)
    assert cli("run", recipe, "--output", base / "run") == 0
    return recipe, RunDir(base / "run")


def train_logs(path) -> list[dict]:
    return [r for r in RunDir(path).read_metrics_log() if r["split"] == "train" and "loss" in r]


def test_a_grpo_run_logs_its_rewards_and_scores_held_out_answers_before_and_after(lora):
    _, run = lora
    logs = train_logs(run.path)
    assert [r["step"] for r in logs] == list(range(1, 7))
    for key in ("rewards/answer_match/mean", "rewards/format/std", "reward", "frac_reward_zero_std"):
        assert all(key in r for r in logs), key
    assert all("suspect/favoured_without_answer" in r and "suspect/favoured_when_cut" in r for r in logs)
    evaluation = json.loads((run.path / "evaluation.json").read_text())
    base = next(b for b in evaluation["baselines"] if b["name"] == "base model")["test"]
    tuned = evaluation["finetuned"]["test"]
    for scores in (base, tuned):
        assert {"reward/answer_match", "reward/format", "reward"} <= set(scores)
        assert 0 <= scores["pass_rate"] <= 1 and "loss" in scores
    interval = evaluation["intervals"]["test"]["reward"]
    assert interval["low"] <= tuned["reward"] <= interval["high"]
    before = next(b for b in evaluation["baselines"] if b["name"] == "base model")["intervals"]["test"]["pass_rate"]
    assert before["low"] <= base["pass_rate"] <= before["high"]  # the base model's answers resampled too
    examples = evaluation["reward_examples"]["test"]
    assert examples and {"prompt", "reference", "before", "after", "before_scores", "after_scores"} <= set(examples[0])
    assert set(examples[0]["after_scores"]["scores"]) == {"answer_match", "format"}
    report = (run.path / "report.html").read_text()
    assert "Rewarded answers" in report and examples[0]["reference"] in report


def test_eval_of_a_finished_grpo_run_scores_its_answers_with_the_rewards_again(lora):
    _, run = lora
    assert cli("eval", run.path, "--split", "test") == 0
    (saved,) = (run.path / "evaluations").glob("test-*.json")
    again = json.loads(saved.read_text())
    reported = json.loads((run.path / "evaluation.json").read_text())["finetuned"]["test"]
    for key in ("reward/answer_match", "reward/format", "reward", "pass_rate", "exact_match", "loss"):
        assert again[key] == pytest.approx(reported[key]), key  # the reloaded model answers alike


def test_a_killed_lora_grpo_run_resumes_to_the_same_steps_bitwise(lora, tmp_path):
    from runner.storage import checkpoints
    from tests.test_resume import start, wait_for

    recipe, uninterrupted = lora
    output = tmp_path / "run"
    process = start(recipe, output, [])
    wait_for((output / "checkpoints" / "checkpoint-3" / checkpoints.MANIFEST).is_file, process, timeout=300)
    process.kill()
    process.wait()
    assert RunDir(output).status()["state"] == "running" and not (output / "model").exists()

    assert cli("resume", output) == 0
    keys = ("loss", "grad_norm", "reward", "rewards/answer_match/mean", "completions/mean_length")
    ours = {r["step"]: [r[k] for k in keys] for r in train_logs(output)}
    theirs = {r["step"]: [r[k] for k in keys] for r in train_logs(uninterrupted.path)}
    assert ours == theirs  # every step, bitwise: the answers sampled after the resume too
    mine = load_file(output / "model" / "adapter_model.safetensors")
    other = load_file(uninterrupted.model / "adapter_model.safetensors")
    assert mine.keys() == other.keys() and all(torch.equal(mine[k], other[k]) for k in mine)


def test_grpo_trains_under_zero2_on_two_processes(tmp_path):
    recipe = write(tmp_path / "grpo.toml", RECIPE.replace("max_steps = 6", "max_steps = 2"))
    zero2 = ["--set", 'distributed.engine="deepspeed"', "--set", "distributed.zero_stage=2"]
    two = ["--nproc", "2", "--set", "training.batch_size=4"]
    assert cli("run", recipe, "--output", tmp_path / "run", *two, *zero2) == 0
    logs = train_logs(tmp_path / "run")
    assert [r["step"] for r in logs] == [1, 2] and all("rewards/answer_match/mean" in r for r in logs)
    assert json.loads((tmp_path / "run" / "environment.json").read_text())["world_size"] == 2


@pytest.mark.parametrize("avx512bf16", [False, True], ids=["cpu", "cpu-avx512bf16"])
def test_grpo_trains_lora_adapters_on_a_4bit_base_on_either_cpu_path(avx512bf16, tmp_path, monkeypatch):
    """QLoRA: the answers are sampled from, and the loss computed through, the 4-bit base with its adapters,
    on both of bitsandbytes' CPU paths (forced either way: this machine has one of them)."""
    from runner import open_run
    from tests.test_quantization import LLAMA, force_avx512bf16, four_bit_layers

    force_avx512bf16(monkeypatch, avx512bf16)
    model = "config = { n_layer = 1, n_head = 2, n_embd = 32, n_positions = 48 }"
    quantized = f'config = {LLAMA}\nquantization = {{ bits = 4, type = "nf4", compute_dtype = "float32" }}'
    text = RECIPE.replace(model, quantized).replace('architecture = "gpt2"', 'architecture = "llama"')
    text = (
        text.replace("max_steps = 6", "max_steps = 2")
        + '\n[strategy]\ntype = "lora"\nr = 4\ntarget_modules = "all-linear"\n'
    )
    recipe = write(tmp_path / "qlora.toml", text)
    assert cli("run", recipe, "--output", tmp_path / "run") == 0
    logs = train_logs(tmp_path / "run")
    assert [r["step"] for r in logs] == [1, 2] and all(r["completions/mean_length"] > 0 for r in logs)
    loaded = open_run(tmp_path / "run").load().model
    assert four_bit_layers(loaded) and all("lora_" in n for n, p in loaded.named_parameters() if p.requires_grad)


def test_the_offline_quickstart_pair_raises_the_pass_rate_clear_of_the_sft_model(tmp_path, monkeypatch):
    """recipes/quickstart-arithmetic.toml, then recipes/quickstart-grpo.toml from its model, as shipped
    (about 80 s): the held-out pass rate's interval after GRPO lies above the SFT model's, and the mean
    reward of the sampled answers rises over training."""
    from conftest import ROOT

    monkeypatch.chdir(tmp_path)  # the GRPO recipe finds the SFT run under ./runs, as a user runs them
    assert cli("run", ROOT / "recipes" / "quickstart-arithmetic.toml") == 0
    assert cli("run", ROOT / "recipes" / "quickstart-grpo.toml") == 0
    (run,) = (tmp_path / "runs" / "quickstart-grpo").iterdir()
    evaluation = json.loads((run / "evaluation.json").read_text())
    base = next(b for b in evaluation["baselines"] if b["name"] == "base model")
    before, after = base["intervals"]["test"]["pass_rate"], evaluation["intervals"]["test"]["pass_rate"]
    assert after["low"] > before["high"], (before, after)
    rewards = [r["reward"] for r in train_logs(run)]
    assert sum(rewards[-5:]) / 5 > rewards[0] + 0.2, rewards
