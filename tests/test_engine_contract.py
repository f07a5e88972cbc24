"""The engine owns distribution: a third-party engine, registered in this process, is driven by the
core through the `Engine` contract alone (runner/components/training.py) at launch, build, train,
save and resume, with no DeepSpeed in sight; a trainer and an engine pair up by what their classes
declare (`Trainer.framework`, `Engine.frameworks`), never by a list of names."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import types

import pytest
from conftest import cli, tiny_recipe

from runner import Audit, AuditResult, Engine, EngineOptions, FinetuneError, hookimpl
from runner.storage import checkpoints
from runner.storage.rundir import RunDir

CALLS: list[tuple] = []  # what the core asked the engine (and the audit saw), in order
WHOLE: list[bool] = []  # set while the engine's whole_model context is entered


class Recording(Engine):
    """A third party's engine: DDP's behaviour (the defaults), every call noted."""

    name = "recording"
    Options = EngineOptions
    needs_launcher = False  # one process trains in `finetune` itself
    frameworks = ("transformers",)  # the built-in `hf` trainer's

    def launch_environment(self):
        CALLS.append(("launch_environment",))
        return {"FINETUNE_TEST_ENGINE": "from the engine"}

    def check_launch(self, world_size):
        CALLS.append(("check_launch", world_size))

    def checkpoint_world_size(self, checkpoint):
        CALLS.append(("checkpoint_world_size", checkpoint.name))
        return None

    def prepare_checkpoint(self, checkpoint, world_size, say, why="", instead=""):
        CALLS.append(("prepare_checkpoint", checkpoint.name, world_size, why, instead))
        return False

    @contextlib.contextmanager
    def building(self, model, trainer):
        CALLS.append(("building", model.name, trainer.name))
        yield

    def trainer_settings(self, framework, checkpoint):
        CALLS.append(("trainer_settings", framework, checkpoint.name if checkpoint else None))
        return {"ddp_timeout": 1801}  # a TrainingArguments keyword the trainer does not set itself

    @contextlib.contextmanager
    def whole_model(self, model):
        CALLS.append(("whole_model",))
        WHOLE.append(True)
        try:
            yield
        finally:
            WHOLE.pop()

    def save_model(self, model, strategy, directory, write_rest, publish):
        CALLS.append(("save_model", strategy.name if strategy else None, directory.name))
        super().save_model(model, strategy, directory, write_rest, publish)


class Launched(Recording):
    """The same, started through the launcher even on one process; its own check stops the run."""

    name = "recording_launched"
    needs_launcher = True

    def check_launch(self, world_size):
        super().check_launch(world_size)
        raise FinetuneError("engine 'recording_launched': checked before any process starts")


class OtherFramework(Recording):
    """An engine that sets up trainers of another library only."""

    name = "other_framework"
    frameworks = ("someone-elses-loop",)


class Looks(Audit):
    """A model audit that notes whether the fine-tuned model was measured inside `whole_model`."""

    name = "looks"

    def measure(self, subject, data, ctx):
        CALLS.append(("measure", subject.label, bool(WHOLE)))
        return {"measured": 1}

    def judge(self, base, finetuned):
        return AuditResult(passed=True, summary="looked")


@pytest.fixture(autouse=True)
def engines(monkeypatch):
    from runner.plugins import manager

    plugin = types.ModuleType("recording_engine")
    plugin.register_engines = hookimpl(lambda register: [register(c) for c in (Recording, Launched, OtherFramework)])
    plugin.register_audits = hookimpl(lambda register: register(Looks))
    manager.reset_plugins(manager.Plugins(extra=[plugin]))
    monkeypatch.delenv("FINETUNE_TEST_ENGINE", raising=False)
    CALLS.clear()
    yield
    CALLS.clear()


def recipe(tmp_path, engine: str = "recording"):
    extra = f'keep_checkpoints = 5\n\n[distributed]\nengine = "{engine}"\n\n[[audits]]\ntype = "looks"\n'
    return tiny_recipe(tmp_path / "r.toml", rows=120, epochs=1, eval_every=1, extra=extra)


def names(calls) -> list[str]:
    return [call[0] for call in calls]


def test_a_third_party_engine_trains_with_the_built_in_trainer_through_the_contract(tmp_path, monkeypatch):
    from plugins.trainers import hf

    seen = []
    arguments = hf.HF._arguments
    monkeypatch.setattr(hf.HF, "_arguments", lambda self, *a: seen.append(arguments(self, *a)) or seen[-1])
    lora = ["--set", 'strategy.type="lora"']  # an adapter on a random-init base: the base is saved too
    assert cli("run", recipe(tmp_path), "--output", tmp_path / "run", *lora) == 0
    calls = list(CALLS)
    assert calls[0] == ("building", "config", "hf")  # the model is built inside the engine's context
    assert ("save_model", None, "base_model") in calls  # the base an adapter needs, saved by the engine
    assert ("trainer_settings", "transformers", None) in calls  # the trainer asked, in its framework's terms
    # and passed the engine's settings to transformers (the baselines, evaluated before, have no engine)
    assert [args.ddp_timeout for args in seen][-1] == 1801
    assert ("measure", "finetuned", True) in calls and ("measure", "base", False) in calls
    assert calls[-1] == ("save_model", "lora", "model")  # the final model, saved by the engine
    assert "launch_environment" not in names(calls)  # one process, no launcher: nothing to launch
    run = RunDir(tmp_path / "run")
    assert (run.model / "adapter_model.safetensors").is_file() and (run.path / "base_model").is_dir()

    # Resume: the engine readies the checkpoint resumed from and the best one the trainer ends with.
    copy = tmp_path / "copy"
    shutil.copytree(run.path, copy)
    shutil.rmtree(copy / "model")
    RunDir(copy).set_status("interrupted")
    resumed = copy / "checkpoints" / "checkpoint-2"
    state = json.loads((resumed / "trainer_state.json").read_text())
    state.update(best_global_step=1, best_metric=-1.0)  # checkpoint-1 is the best so far
    (resumed / "trainer_state.json").write_text(json.dumps(state))
    checkpoints.mark_complete(resumed, 1)
    manifest = json.loads((resumed / checkpoints.MANIFEST).read_text())
    del manifest["world_size"]  # as manifests were before they recorded it: the engine is asked
    (resumed / checkpoints.MANIFEST).write_text(json.dumps(manifest))
    CALLS.clear()
    assert cli("resume", copy, "--checkpoint", "checkpoint-2") == 0
    calls = list(CALLS)
    assert ("checkpoint_world_size", "checkpoint-2") in calls
    why = "the best evaluation so far, whose weights the run ends with"
    assert calls[names(calls).index("prepare_checkpoint") :][:2] == [
        ("prepare_checkpoint", "checkpoint-2", 1, "", ""),
        ("prepare_checkpoint", "checkpoint-1", 1, why, "set training.keep_best = false"),
    ]
    assert ("trainer_settings", "transformers", "checkpoint-2") in calls
    assert calls[-1] == ("save_model", "lora", "model") and RunDir(copy).status()["state"] == "completed"


def test_the_launch_asks_the_engine_for_its_environment_and_checks(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli("run", recipe(tmp_path, "recording_launched"), "--output", out) == 2  # needs_launcher, on 1 process
    assert "engine 'recording_launched': checked before any process starts" in capsys.readouterr().err
    assert names(CALLS) == ["launch_environment", "check_launch"] and CALLS[1] == ("check_launch", 1)
    assert os.environ["FINETUNE_TEST_ENGINE"] == "from the engine"  # set before the check; the workers inherit it
    assert not out.exists()


def test_an_engine_that_cannot_set_up_the_trainer_is_a_recipe_error(tmp_path, capsys):
    assert cli("validate", recipe(tmp_path, "other_framework")) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "distributed.engine: trainer 'hf' cannot train under engine 'other_framework'" in out
    assert "the engine sets up trainers built on someone-elses-loop; 'hf' is built on transformers" in out
    assert cli("validate", recipe(tmp_path)) == 0  # a third party's engine the built-in trainer declares nothing for
