"""The real loading path (a Hub id or a local directory), exercised on a tiny model saved locally."""

import pytest
import torch
from conftest import cli, run_recipe, save_tiny_hub_model, tiny_recipe, with_pretrained, write

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_model(tmp_path_factory):
    """A small GPT-2 causal LM and its tokenizer saved as a Hub repository would hold them."""
    from transformers import GPT2Config, GPT2LMHeadModel

    def gpt2(vocab_size):
        return GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64, vocab_size=vocab_size))

    return save_tiny_hub_model(tmp_path_factory.mktemp("hub") / "tiny-gpt2", gpt2)


def pretrained_recipe(tmp_path, model_dir, extra=""):
    path = tiny_recipe(tmp_path / "r.toml", rows=200, epochs=1, extra=extra)
    return write(path, with_pretrained(path.read_text(), model_dir))


def test_fine_tunes_a_local_pretrained_model(local_model, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    result = run_recipe(pretrained_recipe(tmp_path, local_model), tmp_path / "run")
    assert result.model.config.num_labels == 3 and result.model.config.pad_token_id is not None
    pretrained = load_file(local_model / "model.safetensors")["transformer.wpe.weight"]
    reloaded = AutoModelForSequenceClassification.from_pretrained(result.run_dir.model)
    tuned = reloaded.state_dict()["transformer.wpe.weight"]
    assert tuned.shape == pretrained.shape and not torch.equal(tuned, pretrained)  # it started there and moved
    assert (result.run_dir.model / "finetune.json").read_text().count(str(local_model)) == 1


def test_lora_adapter_over_a_local_base_loads_with_plain_peft(local_model, tmp_path):
    import json

    from peft import AutoPeftModelForSequenceClassification

    result = run_recipe(pretrained_recipe(tmp_path, local_model, '[strategy]\ntype = "lora"\n'), tmp_path / "run")
    adapter = result.run_dir.model
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(local_model)
    assert not (result.run_dir.path / "base_model").exists()  # the base is loadable: no copy is kept
    # the base knows nothing of the new head: tell it what the run's finetune.json records
    head = {"num_labels": 3, "pad_token_id": result.tokenizer.pad_token_id}
    reloaded = AutoPeftModelForSequenceClassification.from_pretrained(adapter, **head)
    enc = result.tokenizer(["the pizza was great", "the bus was okay"], padding=True, return_tensors="pt")
    reloaded.eval()
    result.model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**enc).logits, result.model(**enc).logits, atol=1e-6)


def test_pickled_weights_are_refused(local_model, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(local_model, pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    code = cli("run", pretrained_recipe(tmp_path, pickled), "--output", tmp_path / "run")
    err = capsys.readouterr().err
    assert code == 2
    assert "has no safetensors weights; pickled weights are refused" in err


@pytest.mark.parametrize("strategy", ["prompt_tuning", "p_tuning", "prefix_tuning"])
def test_virtual_tokens_on_a_pretrained_base_predict_a_row_alike_alone_and_batched(
    local_model, tmp_path, capsys, strategy
):
    from runner.running.saved import load_finished

    extra = f'[strategy]\ntype = "{strategy}"\nnum_virtual_tokens = 4\n'
    result = run_recipe(pretrained_recipe(tmp_path, local_model, extra), tmp_path / "run")
    done = load_finished(result.run_dir)
    texts = ["so happy today", "this is the worst service I have ever had, never again", "ok", "fine I guess"]
    batched = done.task.predict(done.model, done.tokenizer, texts, done.meta["max_length"])
    alone = [done.task.predict(done.model, done.tokenizer, [t], done.meta["max_length"])[0] for t in texts]
    for one_of_many, one in zip(batched, alone, strict=True):
        assert one_of_many["scores"] == pytest.approx(one["scores"], abs=1e-5)
    card = (result.run_dir.model / "README.md").read_text()
    assert ("one text at a time" in card) == (strategy != "prefix_tuning")  # plain peft feeds embeddings
    capsys.readouterr()
    assert cli("export", result.run_dir.path, "--merge") == 2
    assert "cannot be merged: its virtual tokens are extra inputs" in capsys.readouterr().err


def test_prefix_tuning_trains_on_two_processes_under_zero3_and_checkpoints(local_model, tmp_path):
    from safetensors.torch import load_file

    from runner.running.saved import load_finished
    from runner.storage.rundir import RunDir

    extra = '[strategy]\ntype = "prefix_tuning"\nnum_virtual_tokens = 4\n'
    path = pretrained_recipe(tmp_path, local_model, extra)
    zero3 = ["--set", 'distributed.engine="deepspeed"', "--set", "distributed.zero_stage=3"]
    # A bounded timeout: were ranks ever out of step (saving a checkpoint used to hang), the run
    # would fail within it, not hang.
    args = ["--nproc", "2", "--set", "training.batch_size=16", *zero3, "--set", "distributed.timeout=120"]
    assert cli("run", path, "--output", tmp_path / "run", *args) == 0
    final = load_file(tmp_path / "run" / "model" / "adapter_model.safetensors")
    (checkpoint,) = (tmp_path / "run" / "checkpoints").glob("checkpoint-*/adapter_model.safetensors")
    saved = load_file(checkpoint)  # the end-of-epoch checkpoint, saved by rank 0 with the prefix gathered
    assert final["prompt_embeddings"].abs().sum() > 0
    assert all(torch.equal(saved[k], final[k]) for k in final)
    done = load_finished(RunDir(tmp_path / "run"))
    (prediction,) = done.task.predict(done.model, done.tokenizer, ["so happy today"], done.meta["max_length"])
    assert sum(prediction["scores"].values()) == pytest.approx(1.0)
