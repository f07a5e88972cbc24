"""Encoder-decoder (T5-style) models on instruction data: training, reloading, generating."""

import pytest
import torch
from conftest import cli, run_recipe, write

pytestmark = pytest.mark.slow

RECIPE = """
[run]
seed = 1
threads = 1

[[data.sources]]
type = "synthetic"
kind = "instruction"
rows = 600

[tokenizer]
type = "trained"
vocab_size = 400
max_length = 64

[model]
type = "config"
architecture = "t5"
config = { num_layers = 1, num_decoder_layers = 1, d_model = 32, d_ff = 64, num_heads = 2, d_kv = 16 }

[task]
type = "seq2seq"

[training]
learning_rate = 3e-3
batch_size = 32
epochs = 2
eval_on_start = true
best_metric = "perplexity"
"""


def decoder_logits(model, tokenizer):
    enc = tokenizer(["What is the sentiment here?\nthe pizza was great"], return_tensors="pt")
    labels = tokenizer(["positive"], return_tensors="pt")["input_ids"]
    model.eval()
    with torch.no_grad():
        return model(**enc, labels=labels).logits


def test_t5_learns_targets_reloads_and_generates(tmp_path, capsys):
    from transformers import AutoModelForSeq2SeqLM

    result = run_recipe(write(tmp_path / "r.toml", RECIPE), tmp_path / "run")
    evals = [r for r in result.run_dir.read_metrics_log() if r["split"] == "validation"]
    assert evals[0]["step"] == 0 and evals[-1]["loss"] < evals[0]["loss"] / 2
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(result.run_dir.model)
    assert torch.equal(decoder_logits(reloaded, result.tokenizer), decoder_logits(result.model, result.tokenizer))
    assert cli("generate", result.run_dir.path, "--prompt", "Classify the sentiment of this post.\nugh") == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("response:")


def test_lora_on_t5_saves_an_adapter_plain_peft_loads(tmp_path):
    from peft import AutoPeftModelForSeq2SeqLM

    recipe = write(tmp_path / "r.toml", RECIPE.replace("epochs = 2", "epochs = 1") + '\n[strategy]\ntype = "lora"\n')
    result = run_recipe(recipe, tmp_path / "run")  # peft knows T5's attention projections
    reloaded = AutoPeftModelForSeq2SeqLM.from_pretrained(result.run_dir.model)
    assert torch.allclose(decoder_logits(reloaded, result.tokenizer), decoder_logits(result.model, result.tokenizer))
