"""Several processes on this CPU: DDP and DeepSpeed ZeRO 2/3 over gloo train what one process trains,
save models plain transformers/peft load, resume where they stopped; launch errors come first."""

import json
import os
import shutil

import pytest
import torch
from conftest import cli, no_dropout_recipe, run_recipe, write
from safetensors.torch import load_file

from runner.storage.rundir import RunDir

pytestmark = pytest.mark.slow


# The same global batch of 16 rows: 16 on one process, 8 on each of two.
TWO = ["--nproc", "2", "--set", "training.batch_size=8"]
ZERO = ["--set", 'distributed.engine="deepspeed"', "--set"]
LORA = ["--set", 'strategy.type="lora"', "--set", "strategy.dropout=0.0"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    return no_dropout_recipe(
        tmp_path_factory.mktemp("recipe") / "r.toml",
        rows=400,
        batch_size=16,
        eval_every=10,
        extra="keep_checkpoints = 5\n",
    )


@pytest.fixture(scope="module")
def runs(recipe, tmp_path_factory):
    """Each variant trained once for the whole module."""
    base = tmp_path_factory.mktemp("runs")
    lora = [arg for arg in LORA if arg != "--set"]
    out = {
        "single": run_recipe(recipe, base / "single").run_dir,
        "lora": run_recipe(recipe, base / "lora", lora).run_dir,
    }
    variants = {
        "ddp": TWO,
        "zero2": [*TWO, *ZERO, "distributed.zero_stage=2"],
        "zero3": [*TWO, *ZERO, "distributed.zero_stage=3"],
        "lora-zero3": [*TWO, *ZERO, "distributed.zero_stage=3", *LORA],
    }
    for name, args in variants.items():
        assert cli("run", recipe, "--output", base / name, *args) == 0, name
        out[name] = RunDir(base / name)
    return out


def train_losses(run: RunDir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in run.read_metrics_log() if r["split"] == "train" and "loss" in r}


def logits(model, n=8):
    ids = torch.arange(1, 1 + 3 * n).reshape(n, 3) % 300 + 5
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("variant", ["ddp", "zero2", "zero3"])
def test_two_processes_follow_the_loss_curve_of_one(runs, variant):
    one, two = train_losses(runs["single"]), train_losses(runs[variant])
    assert len(one) == 20 and one.keys() == two.keys()  # rank 0 alone logs: each step once
    assert all(two[step] == pytest.approx(one[step], rel=1e-3) for step in one)
    ours, theirs = (json.loads(r.metrics.read_text()) for r in (runs[variant], runs["single"]))
    assert ours["test"]["accuracy"] == theirs["test"]["accuracy"]
    env = json.loads(runs[variant].environment.read_text())
    assert env["world_size"] == 2 and env["distributed"]["engine"] == ("ddp" if variant == "ddp" else "deepspeed")


def test_gradient_accumulation_follows_the_loss_curve_of_one_batch(recipe, runs, tmp_path):
    # transformers skips the division by accumulation steps for models whose forward takes
    # **kwargs; a classifier with a plain mean loss then trained on twice the gradient.
    split = run_recipe(recipe, tmp_path / "run", ["training.batch_size=8", "training.gradient_accumulation_steps=2"])
    one, two = train_losses(runs["single"]), train_losses(split.run_dir)
    assert one.keys() == two.keys() and all(two[s] == pytest.approx(one[s], rel=1e-4) for s in one)


def test_zero3_model_is_one_plain_safetensors_model(runs):
    from transformers import AutoModelForSequenceClassification

    model_dir = runs["zero3"].model
    assert not list(model_dir.glob("global_step*")) and (model_dir / "model.safetensors").is_file()
    weights = load_file(model_dir / "model.safetensors")
    assert all(t.numel() > 0 for t in weights.values())  # gathered, not ZeRO-3's empty shards
    ours = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    theirs = AutoModelForSequenceClassification.from_pretrained(runs["single"].model).eval()
    assert torch.allclose(logits(ours), logits(theirs), atol=1e-3)


def test_lora_under_zero3_saves_a_full_adapter_that_reloads_to_the_same_logits(runs):
    from peft import AutoPeftModelForSequenceClassification

    zero3 = load_file(runs["lora-zero3"].model / "adapter_model.safetensors")
    single = load_file(runs["lora"].model / "adapter_model.safetensors")
    assert zero3.keys() == single.keys() and any("lora_A" in k for k in zero3)
    for key, tensor in zero3.items():
        assert tensor.shape == single[key].shape and tensor.numel() > 0, key
        assert torch.allclose(tensor, single[key], atol=1e-3), key

    def load(run):
        return AutoPeftModelForSequenceClassification.from_pretrained(run.model, num_labels=3, pad_token_id=0).eval()

    assert torch.allclose(logits(load(runs["lora-zero3"])), logits(load(runs["lora"])), atol=1e-3)


def test_resume_of_a_zero_run_continues_from_its_checkpoint(runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs["zero2"].path, run_dir)
    run = RunDir(run_dir)
    shutil.rmtree(run.model)
    run.set_status("interrupted")

    assert cli("resume", run_dir, "--nproc", "3") == 2  # 16 rows cannot split into batches of 8 over 3 processes
    assert cli("resume", run_dir, "--nproc", "2", "--checkpoint", "checkpoint-10") == 0
    status = run.status()
    assert status["state"] == "completed" and status["global_step"] == 20
    resumed, original = train_losses(run), train_losses(runs["zero2"])
    assert min(resumed) == 1 and resumed.keys() == original.keys()
    assert all(resumed[s] == pytest.approx(original[s], rel=1e-4) for s in range(11, 21))
    assert (run.model / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nproc", "64"], "this machine has only"),
        (["--nnodes", "2", "--output", "x"], "--nnodes > 1 needs --master-addr"),
        (["--nnodes", "2", "--master-addr", "10.0.0.1"], "needs --output DIR on a filesystem every machine shares"),
        ([*ZERO, "distributed.deepspeed_config={zero_optimization={stagee=1}}"], "not a valid DeepSpeed config"),
    ],
)
def test_launch_errors_come_before_any_process_starts(recipe, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert cli("run", recipe, *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


def test_a_hostfile_that_does_not_parse_names_its_line(recipe, tmp_path, capsys):
    hostfile = write(tmp_path / "hosts", "# machines\nworker-1 slots=2\nworker-2 slots two\n")
    assert cli("run", recipe, "--hostfile", hostfile, "--output", tmp_path / "out") == 2
    assert f"{hostfile}:3: expected 'HOSTNAME slots=N'" in capsys.readouterr().err


def test_a_host_listed_twice_is_refused_with_the_line_to_write_instead(recipe, tmp_path, capsys):
    # DeepSpeed's launcher keys machines by name: two lines for one host cannot be two machines
    hostfile = write(tmp_path / "hosts", "localhost slots=1\nworker-2 slots=2\nlocalhost slots=3\n")
    assert cli("run", recipe, "--hostfile", hostfile, "--output", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"{hostfile}:3: host 'localhost' is listed twice (first on line 1)" in err
    assert "'localhost slots=4'" in err and "--nnodes N --node-rank I" in err
    assert not (tmp_path / "out").exists()


def test_a_zero_stage_the_strategy_cannot_use_is_a_recipe_error(recipe, capsys):
    import types

    from runner import Strategy, hookimpl
    from runner.plugins import manager

    class Replicated(Strategy):
        """Every weight trains, but not when ZeRO-3 partitions them (a strategy of this test)."""

        name = "replicated"
        max_zero_stage = 2

    plugin = types.ModuleType("replicated_strategy")
    plugin.register_strategies = hookimpl(lambda register: register(Replicated))
    previous = manager.get_plugins()
    manager.reset_plugins(manager.Plugins(extra=[plugin]))
    try:
        args = ["--set", 'strategy.type="replicated"', *ZERO, "distributed.zero_stage=3"]
        assert cli("validate", recipe, *args) == 2
    finally:
        manager.reset_plugins(previous)
    out = capsys.readouterr().out
    assert "distributed.zero_stage: strategy 'replicated' does not work under ZeRO stage 3" in out


def test_nproc_with_a_hostfile_replaces_every_machines_slots(tmp_path):
    from runner.distributed.launch import Launch

    hostfile = write(tmp_path / "hosts", "worker-1 slots=2\nworker-2 slots=4\n")
    assert Launch(hostfile=hostfile).world_size() == 2 + 4
    launch = Launch(nproc=5, hostfile=hostfile)
    command = launch.command(["worker", "run"])
    assert command[command.index("--num_gpus") + 1] == "5"  # DeepSpeed starts 5 on every machine
    assert launch.world_size() == 5 * 2


# Loaded by every worker through PYTHONPATH: rank R sleeps before step S (FINETUNE_TEST_STALL="R:S").
STALL = """
import os
rank, step = os.environ.get("FINETUNE_TEST_STALL", ":").split(":")
if rank and os.environ.get("RANK") == rank:
    import time
    import transformers.trainer as trainer

    original = trainer.Trainer.training_step

    def training_step(self, *args, **kwargs):
        if self.state.global_step + 1 == int(step):
            time.sleep(600)
        return original(self, *args, **kwargs)

    trainer.Trainer.training_step = training_step
"""


def test_a_stalled_process_fails_the_run_within_the_timeout_naming_rank_and_step(recipe, tmp_path, capfd, monkeypatch):
    import time

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(STALL)
    monkeypatch.setenv("PYTHONPATH", f"{hook}:{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("FINETUNE_TEST_STALL", "1:3")
    start = time.monotonic()
    code = cli("run", recipe, "--output", tmp_path / "run", *TWO, "--set", "distributed.timeout=15")
    took = time.monotonic() - start
    out = capfd.readouterr()
    assert code != 0 and took < 300  # rank 1 sleeps 600 s: nobody waited for it
    assert "rank 0: a collective waited more than 15 s for the other processes in step 3" in out.out + out.err
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "failed"


# What only libraries print, none of it about the run: torch's deprecation notes for the collectives
# DeepSpeed calls, DeepSpeed's guess of the CPU and its shared-memory op's "built successfully",
# the other ranks' transformers notes, bitsandbytes' missing `kernels` package.
LIBRARY_NOISE = ("FutureWarning", "real_accelerator", "built successfully", "[transformers]", "kernels-community")
# What `finetune resume --nproc M` does first for a DeepSpeed checkpoint of another number of processes.
CONVERT = (
    "from pathlib import Path\nfrom plugins.engines import _universal\n_universal._convert(Path('x'), Path('y'), 2)"
)


def test_a_deepspeed_run_prints_only_the_runs_own_output(recipe, tmp_path):
    """In fresh processes, as a user starts them (no DS_ACCELERATOR): a 2-process ZeRO-3 run whose
    deepspeed_config DeepSpeed checks in `finetune` itself; then the import of DeepSpeed that
    converting a checkpoint for a resize makes in `finetune` (the conversion itself fails here)."""
    import subprocess

    from conftest import finetune_subprocess

    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    config = "distributed.deepspeed_config={ wall_clock_breakdown = false }"
    args = ["run", recipe, "--output", tmp_path / "run", *TWO, *ZERO, "distributed.zero_stage=3", "--set", config]
    args += ["--set", "training.max_steps=4", "--set", "training.eval_every=2"]
    done = subprocess.run(
        [*finetune_subprocess(), *map(str, args)], env=env, capture_output=True, text=True, timeout=600
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "- training" in out and "model saved to" in out  # the run's own lines are all there
    assert [noise for noise in LIBRARY_NOISE if noise in out] == [], out

    python = finetune_subprocess()[0]
    done = subprocess.run([python, "-c", CONVERT], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert "FinetuneError: cannot convert x (ZeRO-2)" in done.stderr  # DeepSpeed was imported, and tried
    assert "real_accelerator" not in done.stdout + done.stderr
