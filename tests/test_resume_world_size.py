"""Resume on another number of processes: the same global batch (accumulation adjusted, and said),
the same data order and the optimizer states, so the loss curve goes on as if nothing changed.

Each chain starts one run and resumes it twice, from checkpoints written by different numbers of
processes: DDP 1 -> 2 -> 1, ZeRO-2 2 -> 1 -> 2 (sharded optimizer states, through DeepSpeed's
universal checkpoints), ZeRO-3 2 -> 1. Every resume must log the losses the uninterrupted run did.
"""

import json
import shutil

import pytest
from conftest import cli, no_dropout_recipe, run_recipe, write

from runner.errors import FinetuneError
from runner.storage import checkpoints
from runner.storage.rundir import RunDir, write_json

pytestmark = pytest.mark.slow

# 240 rows: 192 train, 12 steps of a global batch of 16 (batch_size 8 x accumulation x processes);
# a checkpoint every 4 steps.
ACCUMULATE = "training.gradient_accumulation_steps=2"
ZERO = ['distributed.engine="deepspeed"', "distributed.zero_stage={stage}"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    return no_dropout_recipe(
        tmp_path_factory.mktemp("recipe") / "r.toml",
        rows=240,
        batch_size=8,
        eval_every=4,
        extra="keep_checkpoints = 5\n",
    )


def sets(overrides: list[str]) -> list[str]:
    return [arg for override in overrides for arg in ("--set", override)]


def train_losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in RunDir(run_dir).read_metrics_log() if r["split"] == "train" and "loss" in r}


def stopped_copy(run_dir, where):
    """The run as if stopped after its last checkpoint: the final model gone, status interrupted
    (`resume --checkpoint` then drops the later checkpoints and metrics, as after a kill)."""
    shutil.copytree(run_dir, where)
    shutil.rmtree(where / "model")
    RunDir(where).set_status("interrupted")
    return where


def resume(run_dir, checkpoint, nproc, capsys) -> str:
    capsys.readouterr()
    assert cli("resume", run_dir, "--checkpoint", checkpoint, "--nproc", nproc) == 0
    status = RunDir(run_dir).status()
    assert status["state"] == "completed" and status["global_step"] == 12
    assert (RunDir(run_dir).model / "model.safetensors").is_file()
    return capsys.readouterr().out


def assert_continues(resumed, uninterrupted, after: int):
    ours, theirs = train_losses(resumed), train_losses(uninterrupted)
    assert ours.keys() == theirs.keys() == set(range(1, 13))  # each step logged once, none lost
    assert all(ours[s] == theirs[s] for s in range(1, after + 1))  # the steps before the stop, kept
    assert all(ours[s] == pytest.approx(theirs[s], rel=1e-3) for s in range(after + 1, 13)), (ours, theirs)


def changes(run_dir) -> list[dict]:
    return json.loads(RunDir(run_dir).environment.read_text())["world_size_changes"]


def test_ddp_1_to_2_to_1(recipe, tmp_path, capsys):
    """Started on one process with accumulation 2; on two, each accumulates 1."""
    uninterrupted = run_recipe(recipe, tmp_path / "one", [ACCUMULATE]).run_dir.path

    first = stopped_copy(uninterrupted, tmp_path / "first")
    out = resume(first, "checkpoint-4", 2, capsys)
    assert "resuming on 2 processes instead of 1: gradient accumulation 2 -> 1, global batch 16 unchanged" in out
    assert_continues(first, uninterrupted, 4)
    assert checkpoints.written_by(first / "checkpoints" / "checkpoint-8") == 2

    second = stopped_copy(first, tmp_path / "second")
    out = resume(second, "checkpoint-8", 1, capsys)  # a checkpoint two processes wrote, back on one
    assert "resuming on 1 process instead of 2: gradient accumulation 1 -> 2, global batch 16 unchanged" in out
    assert_continues(second, uninterrupted, 8)
    assert [(c["step"], c["world_size"], c["checkpoint_world_size"], c["gradient_accumulation_steps"])
            for c in changes(second)] == [(4, 2, 1, 1), (8, 1, 2, 2)]  # fmt: skip
    assert not any(c["deepspeed_universal_checkpoint"] for c in changes(second))


def test_zero2_2_to_1_to_2(recipe, tmp_path, capsys):
    """ZeRO-2 shards the optimizer states per rank: each change converts the checkpoint to a
    universal one, which DeepSpeed slices again for the new number of processes."""
    uninterrupted = tmp_path / "two"
    assert cli("run", recipe, "--output", uninterrupted, "--nproc", 2, *sets(z(2))) == 0

    first = stopped_copy(uninterrupted, tmp_path / "first")
    out = resume(first, "checkpoint-4", 1, capsys)
    assert "resuming on 1 process instead of 2: gradient accumulation 1 -> 2, global batch 16 unchanged" in out
    assert "checkpoint-4: converting ZeRO-2 optimizer shards of 2 processes to a DeepSpeed universal" in out
    assert_continues(first, uninterrupted, 4)
    converted = first / "checkpoints" / "checkpoint-4"
    assert (converted / "latest_universal").read_text() == "global_step4_universal"
    checkpoints.verify(converted)  # the converted files are in its manifest
    manifest = json.loads((converted / checkpoints.MANIFEST).read_text())
    assert "global_step4_universal/zero/optimizer_state.pt" in manifest["files"] and manifest["world_size"] == 2

    second = stopped_copy(first, tmp_path / "second")
    out = resume(second, "checkpoint-8", 2, capsys)  # one process's shard, on two
    assert "resuming on 2 processes instead of 1: gradient accumulation 2 -> 1, global batch 16 unchanged" in out
    assert_continues(second, uninterrupted, 8)
    assert [(c["step"], c["world_size"], c["deepspeed_universal_checkpoint"]) for c in changes(second)] == [
        (4, 1, True),
        (8, 2, True),
    ]


def test_zero3_2_to_1(recipe, tmp_path, capsys):
    """ZeRO-3 also partitions the weights: they too come back whole from the universal checkpoint."""
    uninterrupted = tmp_path / "two"
    assert cli("run", recipe, "--output", uninterrupted, "--nproc", 2, *sets(z(3))) == 0
    first = stopped_copy(uninterrupted, tmp_path / "first")
    out = resume(first, "checkpoint-8", 1, capsys)
    assert "converting ZeRO-3 optimizer shards of 2 processes" in out
    assert_continues(first, uninterrupted, 8)


def z(stage: int) -> list[str]:
    return [s.format(stage=stage) for s in ZERO]


# -- refusals, before anything trains --------------------------------------------------------------
def fake_run(tmp_path, recipe, started: int, checkpoint_world_size: int | None = None):
    """A run directory that started on `started` processes, with one complete checkpoint-4."""
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    shutil.copy(recipe, run.recipe)
    write_json(run.environment, {"world_size": started})
    checkpoint = run.checkpoints / "checkpoint-4"
    write(checkpoint / "trainer_state.json", "{}")
    checkpoints.mark_complete(checkpoint, checkpoint_world_size or started)
    run.set_status("interrupted")
    return run, checkpoint


def test_a_global_batch_the_new_world_size_cannot_keep_is_refused(recipe, tmp_path, capsys):
    from runner.cli.commands import load_and_validate
    from runner.distributed import resize

    run, checkpoint = fake_run(tmp_path, recipe, started=2)
    loaded = load_and_validate(run.recipe)
    with pytest.raises(FinetuneError) as caught:
        resize.plan(run, loaded, 3, checkpoint)  # 16 rows over 3 processes of 8
    message = caught.value.render()
    assert "global batch of 16 rows (training.batch_size 8 x gradient_accumulation_steps 1 x 2 processes)" in message
    assert "pass --nproc 1 or 2" in message
    # from the command line: exit code 2, nothing touched
    assert cli("resume", run.path, "--nproc", "3") == 2
    assert "is not a multiple of batch_size 8 x 3 processes" in capsys.readouterr().err
    assert checkpoints.is_complete(checkpoint) and "world_size_changes" not in json.loads(run.environment.read_text())


def test_the_accumulation_follows_the_start_through_a_chain_of_resumes(recipe, tmp_path):
    from runner.cli.commands import load_and_validate
    from runner.distributed import resize

    run, checkpoint = fake_run(tmp_path, recipe, started=1, checkpoint_world_size=2)
    loaded = load_and_validate(run.recipe, [ACCUMULATE])  # started on 1 process: 8 x 2 x 1 = 16 rows
    on_one = resize.plan(run, loaded, 1, checkpoint)  # written by two processes, back on the start's one
    assert on_one.overrides == [] and on_one.changed
    note = "resuming on 1 process instead of 2: gradient accumulation 1 -> 2, global batch 16 unchanged"
    assert on_one.note() == note
    on_two = resize.plan(run, loaded, 2, checkpoint)  # the checkpoint's own size, still not the start's
    assert on_two.overrides == ["training.gradient_accumulation_steps=1"] and not on_two.changed
    with pytest.raises(FinetuneError) as caught:
        resize.plan(run, loaded, 4, checkpoint)
    assert "pass --nproc 1 or 2" in caught.value.render()


def test_sharded_optimizer_states_never_load_on_another_world_size_unconverted(tmp_path):
    from plugins.trainers.hf import universal_load
    from runner.distributed import universal

    checkpoint = tmp_path / "checkpoint-4"
    for rank in (0, 1):
        write(checkpoint / "global_step4" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", "")
    write(checkpoint / "latest", "global_step4")
    config = {"zero_optimization": {"stage": 2}}
    assert universal.shard_count(checkpoint) == 2
    assert universal_load(config, checkpoint, 2) is config  # the same world size: DeepSpeed's own load
    with pytest.raises(FinetuneError, match="holds the ZeRO optimizer shards of 2 processes, and this run has 1"):
        universal_load(config, checkpoint, 1)
    write(checkpoint / "latest_universal", "global_step4_universal")
    assert universal_load(config, checkpoint, 1)["checkpoint"] == {"load_universal": True}
    with pytest.raises(FinetuneError, match="ZeRO-3 with NVMe offload"):
        universal.prepare(checkpoint, 1, 3, ("nvme", "none"))
