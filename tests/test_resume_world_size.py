"""Resume on another number of processes: the same global batch (accumulation adjusted, and said),
the same data order and the optimizer states, so the loss curve goes on as if nothing changed; and,
with the recipe's defaults (`keep_best`), the run ends with the weights of its best evaluation,
whichever number of processes wrote that checkpoint.

Each chain starts one run and resumes it twice, from checkpoints written by different numbers of
processes: DDP 1 -> 2 -> 1, ZeRO-2 and ZeRO-3 2 -> 1 -> 2 (sharded optimizer states, through
DeepSpeed's universal checkpoints). Every resume must log the losses the uninterrupted run did,
and leave a model/ that plain transformers loads, holding the best checkpoint's weights: one
written after the resize (loaded as DeepSpeed wrote it) or before it (by the other number of
processes: through its universal conversion), as each resume arranges with `set_best`.
"""

import json
import shutil

import pytest
import torch
from conftest import cli, no_dropout_recipe, run_recipe, write
from safetensors.torch import load_file

from runner.errors import FinetuneError
from runner.storage import checkpoints
from runner.storage.rundir import RunDir, write_json

pytestmark = pytest.mark.slow

# 240 rows: 192 train, 12 steps of a global batch of 16 (batch_size 8 x accumulation x processes);
# an evaluation and a checkpoint every 2 steps.
ACCUMULATE = "training.gradient_accumulation_steps=2"
ZERO = ['distributed.engine="deepspeed"', "distributed.zero_stage={stage}"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = no_dropout_recipe(
        tmp_path_factory.mktemp("recipe") / "r.toml",
        rows=240,
        batch_size=8,
        eval_every=2,
        extra="keep_checkpoints = 6\n",
    )
    text = path.read_text()
    assert "keep_best = false\n" in text
    return write(path, text.replace("keep_best = false\n", ""))  # the recipe default: keep_best on


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
    code = cli("resume", run_dir, "--checkpoint", checkpoint, "--nproc", nproc)
    out = capsys.readouterr()
    assert code == 0, out.out[-3000:] + out.err[-3000:]
    status = RunDir(run_dir).status()
    assert status["state"] == "completed" and status["global_step"] == 12
    assert (RunDir(run_dir).model / "model.safetensors").is_file()
    return out.out


def set_best(run_dir, resumed: str, best: str | None):
    """Make the trainer state saved in checkpoint `resumed` record checkpoint `best` as the best
    evaluation so far, with a loss no later evaluation beats; with None, a loss every later one
    beats, so that the run ends with the best of the checkpoints written after the resume. (The
    tiny model's validation loss hardly moves: which checkpoint is best is set, not left to it.)
    The checkpoint's manifest is written again, for the processes that wrote it."""
    checkpoint = run_dir / "checkpoints" / resumed
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    if best is None:
        state["best_metric"] = 1e9
    else:
        assert checkpoints.is_complete(checkpoint.parent / best)
        step = checkpoints.step_of(checkpoint.parent / best)
        state.update(best_metric=-1.0, best_global_step=step, best_model_checkpoint=str(checkpoint.parent / best))
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    checkpoints.mark_complete(checkpoint, checkpoints.written_by(checkpoint))


def checkpoint_weights(checkpoint) -> dict[str, torch.Tensor]:
    """A checkpoint's weights: its model.safetensors, or, from DeepSpeed's ZeRO shards (a ZeRO-3
    checkpoint has no whole model), the fp32 weights DeepSpeed's own zero_to_fp32 assembles."""
    if (checkpoint / f"global_step{checkpoints.step_of(checkpoint)}").is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))
    return load_file(checkpoint / "model.safetensors")


def assert_ends_with_best(run_dir, best: str | None = None, written_by: int | None = None) -> str:
    """model/ loads with plain transformers and holds the weights of the checkpoint the run
    recorded as best (`best`, when given; written by `written_by` processes, when given)."""
    from transformers import AutoModelForSequenceClassification

    last = run_dir / "checkpoints" / "checkpoint-12"
    state = json.loads((last / "trainer_state.json").read_text())
    recorded = last.parent / f"checkpoint-{state['best_global_step']}"
    assert best is None or recorded.name == best, (recorded.name, best)
    assert written_by is None or checkpoints.written_by(recorded) == written_by
    expected = checkpoint_weights(recorded)
    saved = load_file(run_dir / "model" / "model.safetensors")
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
    loaded = model.state_dict()
    assert saved.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(saved[key], tensor) and torch.equal(loaded[key], tensor), key
    with torch.no_grad():  # the reloaded model runs
        assert model(input_ids=torch.tensor([[5, 6, 7]])).logits.shape == (1, 3)
    return recorded.name


def assert_continues(resumed, uninterrupted, after: int, same_until: int | None = None):
    """The resumed run logged every step once: those up to `same_until` (default `after`: the ones
    the processes of the uninterrupted run trained) exactly as that run did, the others within float
    noise (another number of processes sums the gradients in another order)."""
    ours, theirs = train_losses(resumed), train_losses(uninterrupted)
    assert ours.keys() == theirs.keys() == set(range(1, 13))  # each step logged once, none lost
    same_until = after if same_until is None else same_until
    assert all(ours[s] == theirs[s] for s in range(1, same_until + 1))  # the steps before the stop, kept
    assert all(ours[s] == pytest.approx(theirs[s], rel=1e-3) for s in range(same_until + 1, 13)), (ours, theirs)


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
    assert_ends_with_best(first)

    second = stopped_copy(first, tmp_path / "second")
    set_best(second, "checkpoint-8", "checkpoint-6")
    out = resume(second, "checkpoint-8", 1, capsys)  # a checkpoint two processes wrote, back on one
    assert "resuming on 1 process instead of 2: gradient accumulation 1 -> 2, global batch 16 unchanged" in out
    assert_continues(second, uninterrupted, 8)
    assert [(c["step"], c["world_size"], c["checkpoint_world_size"], c["gradient_accumulation_steps"])
            for c in changes(second)] == [(4, 2, 1, 1), (8, 1, 2, 2)]  # fmt: skip
    assert not any(c["deepspeed_universal_checkpoint"] for c in changes(second))
    assert_ends_with_best(second, "checkpoint-6", written_by=2)


def test_a_moved_run_ends_with_its_own_best_checkpoint(recipe, tmp_path, capsys):
    """transformers records the best checkpoint by its path: in a run directory copied elsewhere
    (and the original gone) that path names nothing, and the run ended with its last weights."""
    original = run_recipe(recipe, tmp_path / "original", [ACCUMULATE]).run_dir.path
    set_best(original, "checkpoint-12", "checkpoint-4")  # the path recorded: the original's
    moved = stopped_copy(original, tmp_path / "moved")
    shutil.rmtree(original)
    resume(moved, "checkpoint-12", 1, capsys)  # killed after its last checkpoint: nothing left to train
    assert_ends_with_best(moved, "checkpoint-4")
    best, last = (checkpoint_weights(moved / "checkpoints" / c) for c in ("checkpoint-4", "checkpoint-12"))
    assert not torch.equal(best["score.weight"], last["score.weight"])  # not the last weights by chance


def test_zero2_2_to_1_to_2(recipe, tmp_path, capsys):
    """ZeRO-2 shards the optimizer states per rank: each change converts the checkpoint to a
    universal one, which DeepSpeed slices again for the new number of processes."""
    uninterrupted = tmp_path / "two"
    assert cli("run", recipe, "--output", uninterrupted, "--nproc", 2, *sets(z(2))) == 0

    first = stopped_copy(uninterrupted, tmp_path / "first")
    set_best(first, "checkpoint-4", None)  # the best will be written after the resize, by one process
    out = resume(first, "checkpoint-4", 1, capsys)
    assert "resuming on 1 process instead of 2: gradient accumulation 1 -> 2, global batch 16 unchanged" in out
    assert "checkpoint-4: converting ZeRO-2 optimizer shards of 2 processes to a DeepSpeed universal" in out
    assert_continues(first, uninterrupted, 4)
    converted = first / "checkpoints" / "checkpoint-4"
    assert (converted / "latest_universal").read_text() == "global_step4_universal"
    checkpoints.verify(converted)  # the converted files are in its manifest
    manifest = json.loads((converted / checkpoints.MANIFEST).read_text())
    assert "global_step4_universal/zero/optimizer_state.pt" in manifest["files"] and manifest["world_size"] == 2
    assert_ends_with_best(first, written_by=1)  # native: not loaded as universal

    second = stopped_copy(first, tmp_path / "second")
    set_best(second, "checkpoint-8", "checkpoint-6")  # written before the resize, and not resumed from
    out = resume(second, "checkpoint-8", 2, capsys)  # one process's shard, on two
    assert "resuming on 2 processes instead of 1: gradient accumulation 2 -> 1, global batch 16 unchanged" in out
    assert "checkpoint-6 (the best evaluation so far, whose weights the run ends with): converting ZeRO-2" in out
    assert_continues(second, uninterrupted, 8)
    assert [(c["step"], c["world_size"], c["deepspeed_universal_checkpoint"]) for c in changes(second)] == [
        (4, 1, True),
        (8, 2, True),
    ]
    assert_ends_with_best(second, "checkpoint-6", written_by=1)  # through its universal conversion


def test_zero3_2_to_1_to_2(recipe, tmp_path, capsys):
    """ZeRO-3 also partitions the weights: they too come back whole from the universal checkpoint."""
    uninterrupted = tmp_path / "two"
    assert cli("run", recipe, "--output", uninterrupted, "--nproc", 2, *sets(z(3))) == 0

    first = stopped_copy(uninterrupted, tmp_path / "first")
    set_best(first, "checkpoint-6", "checkpoint-4")  # written before the resize, and not resumed from
    out = resume(first, "checkpoint-6", 1, capsys)
    assert "converting ZeRO-3 optimizer shards of 2 processes" in out
    assert "checkpoint-4 (the best evaluation so far, whose weights the run ends with): converting ZeRO-3" in out
    assert_continues(first, uninterrupted, 6)
    assert_ends_with_best(first, "checkpoint-4", written_by=2)  # through its universal conversion

    second = stopped_copy(first, tmp_path / "second")
    set_best(second, "checkpoint-8", None)  # the best will be written after the resize, by two processes
    out = resume(second, "checkpoint-8", 2, capsys)
    assert "resuming on 2 processes instead of 1: gradient accumulation 2 -> 1, global batch 16 unchanged" in out
    assert_continues(second, uninterrupted, 8, same_until=6)  # steps 7 and 8: one process's
    assert_ends_with_best(second, written_by=2)  # native: not loaded as universal


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
    from runner import load_recipe
    from runner.distributed import resize

    run, checkpoint = fake_run(tmp_path, recipe, started=2)
    loaded = load_recipe(run.recipe)
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
    from runner import load_recipe
    from runner.distributed import resize

    run, checkpoint = fake_run(tmp_path, recipe, started=1, checkpoint_world_size=2)
    loaded = load_recipe(run.recipe, [ACCUMULATE])  # started on 1 process: 8 x 2 x 1 = 16 rows
    on_one = resize.plan(run, loaded, 1, checkpoint)  # written by two processes, back on the start's one
    assert on_one.overrides == [] and on_one.changed
    note = "resuming on 1 process instead of 2: gradient accumulation 1 -> 2, global batch 16 unchanged"
    assert on_one.note() == note
    on_two = resize.plan(run, loaded, 2, checkpoint)  # the checkpoint's own size, still not the start's
    assert on_two.overrides == ["training.gradient_accumulation_steps=1"] and not on_two.changed
    with pytest.raises(FinetuneError) as caught:
        resize.plan(run, loaded, 4, checkpoint)
    assert "pass --nproc 1 or 2" in caught.value.render()


def deepspeed_engine(stage: int = 2, **options):
    """The `deepspeed` engine component, as a recipe's `[distributed]` creates it."""
    from plugins.engines.deepspeed_zero import DeepSpeed, DeepSpeedOptions

    return DeepSpeed(DeepSpeedOptions(zero_stage=stage, **options))


def test_sharded_optimizer_states_never_load_on_another_world_size_unconverted(tmp_path, monkeypatch):
    from plugins.engines import _universal

    checkpoint = tmp_path / "checkpoint-4"
    for rank in (0, 1):
        write(checkpoint / "global_step4" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", "")
    write(checkpoint / "latest", "global_step4")
    engine = deepspeed_engine()
    assert engine.checkpoint_world_size(checkpoint) == 2
    monkeypatch.setenv("WORLD_SIZE", "2")  # the same world size: DeepSpeed's own load
    assert "checkpoint" not in engine.trainer_settings("transformers", checkpoint)["deepspeed"]
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(FinetuneError, match="holds the ZeRO shards of 2 processes and no universal checkpoint that 1"):
        engine.trainer_settings("transformers", checkpoint)
    write(checkpoint / "latest_universal", "global_step4_universal")
    settings = engine.trainer_settings("transformers", checkpoint)["deepspeed"]
    assert settings["checkpoint"] == {"load_universal": True} and settings["zero_optimization"]["stage"] == 2
    with pytest.raises(FinetuneError, match="ZeRO-3 with NVMe offload"):
        _universal.prepare(checkpoint, 1, 3, ("nvme", "none"))


def zero_checkpoint(path, ranks: int, universal: bool = False):
    """A checkpoint folder with the ZeRO optimizer shards of `ranks` processes (empty files)."""
    for rank in range(ranks):
        write(path / "global_step4" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", "")
    write(path / "latest", "global_step4")
    if universal:
        write(path / "latest_universal", "global_step4_universal")
    return path


class FakeEngine:
    """What transformers' best-model load calls on DeepSpeed's engine, noting the setting it saw."""

    def __init__(self, built_with: bool, fails: Exception | None = None):
        from types import SimpleNamespace

        self._config = SimpleNamespace(load_universal_checkpoint=built_with)
        self.seen, self.fails = [], fails

    def load_checkpoint(self, path, **kwargs):
        self.seen.append(self._config.load_universal_checkpoint)
        if self.fails:
            raise self.fails
        return path, {}


def load_best(best, engine):
    """The `hf` trainer's end-of-training load of the best checkpoint, under DeepSpeed."""
    from transformers.trainer_callback import TrainerState

    from plugins.trainers._hf_trainer import make_trainer_class

    trainer = object.__new__(make_trainer_class())  # only what the load reads
    trainer.is_deepspeed_enabled, trainer.model_wrapped, trainer.model = True, engine, torch.nn.Linear(1, 1)
    trainer.run_engine = deepspeed_engine()  # the run's engine, which says how to load the checkpoint
    trainer.state = TrainerState(best_model_checkpoint=str(best))
    trainer._load_best_model()


def test_the_best_checkpoint_loads_as_it_was_written_whatever_the_engine_was_built_with(tmp_path, monkeypatch):
    """`load_universal` follows the best checkpoint, not the one resumed from: one this number of
    processes wrote is never loaded as universal, one of another number only through its conversion;
    a load that fails is one message from rank 0, never a traceback on every rank."""
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    native = zero_checkpoint(tmp_path / "checkpoint-8", 1)
    foreign = zero_checkpoint(tmp_path / "checkpoint-4", 2, universal=True)
    for best, universal in ((native, False), (foreign, True)):
        for built_with in (False, True):
            engine = FakeEngine(built_with)
            load_best(best, engine)
            assert engine.seen == [universal] and engine._config.load_universal_checkpoint is built_with

    unconverted = zero_checkpoint(tmp_path / "checkpoint-2", 2)
    engine = FakeEngine(True)
    with pytest.raises(FinetuneError) as caught:
        load_best(unconverted, engine)
    assert "holds the ZeRO shards of 2 processes and no universal checkpoint that 1 can load" in caught.value.render()
    assert "finetune resume RUN --nproc 1" in caught.value.render() and engine.seen == []

    engine = FakeEngine(True, fails=ValueError("Invalid for universal checkpoint"))
    with pytest.raises(FinetuneError) as caught:
        load_best(native, engine)
    assert "could not be loaded to end the run with: ValueError: Invalid for universal checkpoint" in str(caught.value)
    assert engine._config.load_universal_checkpoint is True  # restored
    from runner import PeerFailed

    monkeypatch.setenv("RANK", "1")  # the other ranks stop without repeating it (the worker exits quietly)
    with pytest.raises(PeerFailed):
        load_best(native, FakeEngine(True, fails=ValueError("Invalid for universal checkpoint")))


def test_the_best_checkpoint_a_resume_converts_is_found_in_the_run_directory(tmp_path):
    from plugins.trainers._hf_trainer import recorded_best

    resumed, best = tmp_path / "checkpoints" / "checkpoint-8", tmp_path / "checkpoints" / "checkpoint-4"
    moved_from = "/elsewhere/checkpoints/checkpoint-4"  # the path recorded is where the run was
    write(resumed / "trainer_state.json", json.dumps({"best_global_step": 4, "best_model_checkpoint": moved_from}))
    assert recorded_best(resumed) is None  # checkpoint-4 is not complete
    write(best / "trainer_state.json", "{}")
    checkpoints.mark_complete(best, 2)
    assert recorded_best(resumed) == best
    write(resumed / "trainer_state.json", json.dumps({"best_model_checkpoint": moved_from}))  # older states
    assert recorded_best(resumed) == best
    write(resumed / "trainer_state.json", json.dumps({"best_global_step": None}))
    assert recorded_best(resumed) is None
