"""`[model] type = "run"` and `[tokenizer] type = "run"`: a recipe that starts from an earlier run's
final model (SFT, then DPO from it)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import runner
from tests.conftest import cli, run_recipe, write

# A tiny instruction-tuning run (full fine-tuning of a config GPT-2): the first step.
SFT = """
[run]
seed = 3
threads = 1

[[data.sources]]
type = "synthetic"
kind = "chat"
rows = 240

[tokenizer]
type = "trained"
vocab_size = 400
max_length = 96

[model]
type = "config"
architecture = "gpt2"
config = {{ n_layer = 1, n_head = 2, n_embd = 32, n_positions = 96 }}

[task]
type = "instruction"
format = "chat"
template = "chatml"

[training]
learning_rate = 3e-3
batch_size = 16
epochs = 1
log_every = 5
{extra}
"""

# The second step: the same data and task, tokenizer and model from the first run.
FROM_RUN = SFT.replace(
    """[tokenizer]
type = "trained"
vocab_size = 400
max_length = 96""",
    """[tokenizer]
type = "run"
path = "{path}"
max_length = 96""",
).replace(
    """[model]
type = "config"
architecture = "gpt2"
config = {{ n_layer = 1, n_head = 2, n_embd = 32, n_positions = 96 }}""",
    """[model]
type = "run"
path = "{path}\"""",
)


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sft")
    return run_recipe(write(folder / "sft.toml", SFT.format(extra="")), folder / "runs" / "sft" / "20260101-000000")


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora")
    recipe = write(folder / "lora.toml", SFT.format(extra='\n[strategy]\ntype = "lora"\nr = 4\n'))
    return run_recipe(recipe, folder / "run", ["training.learning_rate=2e-2"])


def from_run(tmp_path, path, extra="", overrides=None):
    recipe = write(tmp_path / "second.toml", FROM_RUN.format(path=path, extra=extra))
    return run_recipe(recipe, tmp_path / "second", ["training.max_steps=1", *(overrides or [])])


def logits(model, tokenizer):
    batch = tokenizer(["Classify the sentiment of this post.\nthe pizza was great"], return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_a_second_recipe_starts_from_the_first_runs_model_and_tokenizer(sft, tmp_path):
    assert sft.status == "completed"
    second = from_run(tmp_path, sft.path)
    assert second.status == "completed", second.message
    # Its base model is the first run's final model: the same validation loss, to float precision.
    base = next(b for b in second.baselines if b["name"] == "base model")
    assert base["note"] == f"the final model of run {sft.path.resolve()}, untouched by this run, prompted zero-shot"
    assert base["validation"]["loss"] == pytest.approx(sft.metrics["validation"]["loss"], rel=1e-5)

    first, then = runner.open_run(sft.path).load(), runner.open_run(second.path)
    tokenizer = second.tokenizer
    assert tokenizer.get_vocab() == first.tokenizer.get_vocab()
    assert tokenizer.chat_template == first.tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template

    # The weights it started from, recorded: the run and a hash of its weights.
    env = json.loads((second.path / "environment.json").read_text())
    assert env["model_source"]["run"] == str(sft.path.resolve())
    assert len(env["model_source"]["weights_sha256"]) == 64
    meta = json.loads((then.model_dir / "finetune.json").read_text())
    assert meta["base_model"] == str(sft.path.resolve() / "model")


def test_the_built_model_computes_what_the_first_run_saved(sft, tmp_path):
    from plugins.models.from_run import FromRun, FromRunModelOptions
    from runner import RunContext

    first = runner.open_run(sft.path).load()
    notes: list[str] = []
    ctx = RunContext(seed=0, cache_dir=tmp_path, info=notes.append)
    model = FromRun(FromRunModelOptions(path=str(sft.path))).build(ctx, first.spec)
    assert torch.equal(logits(model, first.tokenizer), logits(first.model, first.tokenizer))
    assert any(str(sft.path.resolve()) in note for note in notes)


def test_a_lora_run_is_merged_into_its_base(lora, tmp_path):
    from plugins.models.from_run import FromRun, FromRunModelOptions
    from runner import RunContext

    first = runner.open_run(lora.path).load()  # base with its adapter, unmerged
    assert first.meta["adapter"]
    component = FromRun(FromRunModelOptions(path=str(lora.path)))
    model = component.build(RunContext(seed=0, cache_dir=tmp_path, info=lambda _: None), first.spec)
    assert not hasattr(model, "peft_config")  # plain weights: the new recipe's strategy applies to them
    merged = logits(model, first.tokenizer)
    assert torch.allclose(merged, logits(first.model, first.tokenizer), atol=1e-5)
    # and the adapter changed something: not the untouched base
    assert not torch.allclose(merged, logits(first.base(), first.tokenizer), atol=1e-3)
    assert component.base_reference() == str(lora.path.resolve() / "merged")

    second = from_run(tmp_path, lora.path, overrides=["strategy.type=lora"])
    assert second.status == "completed", second.message
    base = next(b for b in second.baselines if b["name"] == "base model")
    assert base["validation"]["loss"] == pytest.approx(lora.metrics["validation"]["loss"], rel=1e-5)


def test_a_folder_of_runs_gives_its_newest_completed_run(sft, tmp_path):
    from plugins.models.from_run import find_run

    folder = tmp_path / "runs"
    older = shutil.copytree(sft.path, folder / "20260101-000000")
    newer = shutil.copytree(sft.path, folder / "20260102-000000")
    unfinished = shutil.copytree(sft.path, folder / "20260103-000000")
    for run, finished in ((older, "2026-01-01T00:10:00"), (newer, "2026-01-02T00:10:00")):
        status = json.loads((run / "status.json").read_text())
        (run / "status.json").write_text(json.dumps({**status, "finished": finished}))
    (unfinished / "status.json").write_text(json.dumps({"state": "interrupted"}))
    (folder / "notes").mkdir()  # not a run: ignored
    assert find_run(str(folder)) == newer.resolve()

    # A run that started from the older one (its environment.json says so) keeps to it when it is
    # resumed or loaded again, whatever completed in the folder since.
    from plugins.models.from_run import FromRun, FromRunModelOptions
    from runner import RunContext

    started = tmp_path / "started"
    write(started / "environment.json", json.dumps({"model_source": {"run": str(older.resolve())}}))
    component = FromRun(FromRunModelOptions(path=str(folder)))
    spec = runner.open_run(sft.path).load().spec
    component.build(RunContext(seed=0, cache_dir=tmp_path, run_dir=started, info=lambda _: None), spec)
    assert component.source()["run"] == str(older.resolve())
    assert component.base_reference() == str(older.resolve() / "model")


def test_bad_paths_are_clear_errors(sft, tmp_path, capsys):
    # no such path: an error when the run starts, naming it
    recipe = write(tmp_path / "missing.toml", FROM_RUN.format(path=tmp_path / "nowhere", extra=""))
    assert cli("validate", recipe) == 0  # the step before may make it
    assert cli("run", recipe, "--output", tmp_path / "out") == 2
    out = capsys.readouterr()
    assert f"no such run directory: {tmp_path / 'nowhere'}" in out.out + out.err
    assert "Traceback" not in out.out + out.err

    # a folder without runs, and a run that did not complete: recipe errors at validation
    (tmp_path / "empty").mkdir()
    recipe = write(tmp_path / "empty.toml", FROM_RUN.format(path=tmp_path / "empty", extra=""))
    assert cli("validate", recipe) == 2
    text = capsys.readouterr().out
    assert "model.path" in text and "tokenizer.path" in text and "no run directories" in text

    stopped = shutil.copytree(sft.path, tmp_path / "stopped")
    (stopped / "status.json").write_text(json.dumps({"state": "interrupted"}))
    recipe = write(tmp_path / "stopped.toml", FROM_RUN.format(path=stopped, extra=""))
    assert cli("validate", recipe) == 2
    text = capsys.readouterr().out
    assert "did not complete (state: interrupted)" in text and f"finetune resume {stopped}" in text


def test_a_task_needing_another_head_is_refused(sft, tmp_path, capsys):
    recipe = write(tmp_path / "cls.toml", FROM_RUN.format(path=sft.path, extra=""))
    recipe.write_text(
        recipe.read_text()
        .replace('type = "instruction"\nformat = "chat"\ntemplate = "chatml"', 'type = "classification"')
        .replace('kind = "chat"', 'kind = "sentiment"')
    )
    assert cli("run", recipe, "--output", tmp_path / "out") == 2
    out = capsys.readouterr()
    assert "trained a causal_lm model" in out.out + out.err and "sequence_classification" in out.out + out.err
    assert "Traceback" not in out.out + out.err


def test_a_lock_pins_the_run_and_its_weights_and_refuses_another(sft, tmp_path, capsys):
    """`finetune lock` records which run `path` resolves to and a hash of its weights; a newer run
    completed in the folder since is a difference `--locked` refuses, naming the key."""
    folder = sft.path.parent
    recipe = write(tmp_path / "second.toml", FROM_RUN.format(path=folder, extra=""))
    assert cli("lock", recipe) == 0
    lock = json.loads(recipe.with_suffix(".lock").read_text())
    pinned = lock["inputs"]["model.source"]
    assert pinned == {"run": str(sft.path.resolve()), "weights_sha256": pinned["weights_sha256"]}
    assert len(pinned["weights_sha256"]) == 64
    capsys.readouterr()

    newer = folder / "20270101-000000"
    shutil.copytree(sft.path, newer)
    try:
        assert cli("run", recipe, "--locked", "--output", tmp_path / "refused") == 2
        err = capsys.readouterr().err
        assert "model.source" in err and str(newer) in err, err
    finally:
        shutil.rmtree(newer)
