"""training.loss: the chunked causal-LM loss gives the plain loss and its gradients, and is chosen,
named and refused where it should be (plugins/trainers/_fused_loss.py)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cli, run_recipe, tiny_recipe, write

from plugins.trainers._fused_loss import (
    AUTO_MIN_VOCAB,
    choose,
    chunk_tokens,
    chunked_cross_entropy,
)
from runner import FinetuneError

VOCAB = 512
CONFIGS = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
                 attn_pdrop=0.0),  # GPT-2 ties its output layer to the token embeddings
}  # fmt: skip


def causal_lm(architecture: str, vocab: int = VOCAB, lora: bool = False):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(architecture, vocab_size=vocab, **CONFIGS[architecture])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    if lora:
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "v_proj", "lm_head"] if architecture == "llama" else ["c_attn"]
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
        for name, p in model.named_parameters():  # LoRA's B starts at zero: give it values, so A gets gradients
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    return model.train()


def packed_batch(rows: int = 2, length: int = 24, seed: int = 1):
    """Rows of two packed samples each: position ids restart, the second's first label is -100, and
    the first 3 tokens of each sample are a prompt (-100), as the instruction task masks them."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (rows, length), generator=generator)
    half = length // 2
    positions = torch.cat([torch.arange(half), torch.arange(length - half)]).repeat(rows, 1)
    labels = ids.clone()
    for start in (0, half):
        labels[:, start : start + 3] = -100
    return {"input_ids": ids, "position_ids": positions}, labels


def base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def plain_step(model, inputs, labels, items=None):
    model.zero_grad()
    extra = {"num_items_in_batch": items} if items is not None else {}
    loss = model(**inputs, labels=labels, **extra).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def chunked_step(model, inputs, labels, items=None, chunk=5):
    model.zero_grad()
    hidden = model(**inputs, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
    loss = chunked_cross_entropy(base(model).get_output_embeddings(), hidden, labels, items, chunk=chunk)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(plain, chunked):
    (loss_a, grads_a), (loss_b, grads_b) = plain, chunked
    assert torch.allclose(loss_a, loss_b, rtol=1e-5, atol=1e-6), (loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
@pytest.mark.parametrize("lora", [False, True])
def test_chunked_loss_and_gradients_equal_the_plain_ones(architecture, lora):
    model = causal_lm(architecture, lora=lora)
    if architecture == "gpt2":
        assert base(model).lm_head.weight is base(model).transformer.wte.weight  # tied: both uses add up
    inputs, labels = packed_batch()
    plain = plain_step(model, inputs, labels)
    chunked = chunked_step(model, inputs, labels)
    assert_same(plain, chunked)
    if not (lora and architecture == "gpt2"):  # that LoRA adapts attention only
        assert any("lm_head" in n or "wte" in n for n in plain[1]), "the output layer (or its adapter) trains"


def test_token_weighting_over_two_micro_batches_equals_the_plain_one():
    """Gradient accumulation: each micro-batch's summed loss divided by the tokens of the whole step
    (num_items_in_batch), the gradients added up: the same as the plain path's."""
    model = causal_lm("llama")
    batches = [packed_batch(seed=1), packed_batch(rows=3, length=16, seed=2)]
    batches[1][1][0, :10] = -100  # micro-batches with different numbers of scored tokens
    items = sum(int((labels[:, 1:] != -100).sum()) for _, labels in batches)

    def accumulated(step):
        total, grads = 0.0, {}
        for inputs, labels in batches:
            loss, g = step(model, inputs, labels, torch.tensor(items))
            total += loss
            grads = {n: grads.get(n, 0) + v for n, v in g.items()}
        return total, grads

    assert_same(accumulated(plain_step), accumulated(chunked_step))


def test_a_batch_with_no_scored_token_is_nan_as_in_the_plain_path():
    model = causal_lm("llama")
    inputs, labels = packed_batch()
    labels[:] = -100
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states[-1]
        assert torch.isnan(chunked_cross_entropy(model.lm_head, hidden, labels))
        assert torch.isnan(model(**inputs, labels=labels).loss)


def test_chunks_hold_about_as_many_logits_as_the_hidden_states():
    from runner.distributed.memory import chunked_loss_bytes

    # Liger's rule: V/H chunks, rounded up to a power of two
    assert chunk_tokens(16384, 128256, 2048) == 512
    assert chunk_tokens(10, 500, 32) == 1
    assert chunk_tokens(0, 500, 32) == 1
    for tokens, vocab, hidden in [(16384, 128256, 2048), (640, 300, 32), (3, 50257, 768)]:
        # plan counts the chunks the loss makes
        chunk = min(chunk_tokens(tokens, vocab, hidden), tokens)
        assert chunked_loss_bytes(tokens, vocab, hidden, 2) == tokens * hidden * 2 + chunk * vocab * 8


def test_the_vocabulary_of_a_partitioned_output_layer_is_its_whole_width():
    from plugins.trainers._fused_loss import vocabulary

    head = torch.nn.Linear(8, 300, bias=False)
    assert vocabulary(head) == 300
    head.weight.data = torch.empty(0)  # as ZeRO-3 leaves a partitioned weight outside a gather
    head.weight.ds_shape = torch.Size([300, 8])
    assert vocabulary(head) == 300


def test_auto_chooses_chunked_for_a_large_vocabulary_and_plain_otherwise():
    from transformers import AutoConfig, AutoModelForSequenceClassification

    with torch.device("meta"):
        large, small = causal_lm("llama", vocab=AUTO_MIN_VOCAB), causal_lm("llama", vocab=AUTO_MIN_VOCAB - 1)
        config = AutoConfig.for_model("llama", vocab_size=VOCAB, **CONFIGS["llama"])
        classifier = AutoModelForSequenceClassification.from_config(config)
    assert choose("auto", large, cuda=False, zero_stage=0).name == "chunked"
    assert choose("auto", small, cuda=False, zero_stage=0).name == "plain"
    assert choose("auto", classifier, cuda=False, zero_stage=0).name == "plain"
    assert choose("auto", large, cuda=False, zero_stage=3).name == "plain"  # unequal gathers (test_packing_zero3)
    assert choose("chunked", small, cuda=False, zero_stage=0).name == "chunked"
    with pytest.raises(FinetuneError, match="not a causal language model"):
        choose("chunked", classifier, cuda=False, zero_stage=0)


RECIPE = """
[run]
seed = 3
threads = 1

[[data.sources]]
type = "synthetic"
kind = "instruction"
rows = 64

[tokenizer]
type = "trained"
vocab_size = 300
max_length = 160

[model]
type = "config"
architecture = "llama"
config = { hidden_size = 32, intermediate_size = 64, num_hidden_layers = 1, num_attention_heads = 2, \
num_key_value_heads = 1 }

[task]
type = "instruction"
template = "plain"
packing = true

[training]
learning_rate = 3e-3
batch_size = 4
gradient_accumulation_steps = 2
max_steps = 4
log_every = 1
eval_every = 4
keep_best = false
mixed_precision = "bf16"
loss = "{loss}"

[evaluation]
baseline = false
"""


def _losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r.get("split") == "train" and "loss" in r]


def test_a_chunked_run_trains_as_the_plain_one_step_by_step(tmp_path, monkeypatch):
    from plugins.trainers import _fused_loss

    calls = {"plain": 0, "chunked": 0}
    loss = "plain"

    def counted(*args, **kwargs):
        calls[loss] += 1
        # bf16 mixed precision: the output layer runs under the autocast the model's forward runs under
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        return chunked_cross_entropy(*args, **kwargs)

    monkeypatch.setattr(_fused_loss, "chunked_cross_entropy", counted)
    outcomes = {}
    for loss in ("plain", "chunked"):
        recipe = write(tmp_path / f"{loss}.toml", RECIPE.replace("{loss}", loss))
        outcomes[loss] = run_recipe(recipe, tmp_path / loss)
    assert calls["plain"] == 0 and calls["chunked"] >= 4  # every training step; evaluation takes the plain path
    plain, chunked = (_losses(outcomes[k].run_dir.path) for k in ("plain", "chunked"))
    assert len(plain) == 4 and plain == pytest.approx(chunked, rel=1e-4)
    assert plain[-1] < plain[0]  # it trains
    environment = json.loads((outcomes["chunked"].run_dir.path / "environment.json").read_text())
    assert environment["training_speed"] == {"loss": "chunked", "loss_why": "as set", "compile": False}


def test_plan_names_the_loss_and_its_smaller_memory(tmp_path, capsys, monkeypatch):
    import re

    monkeypatch.setenv("COLUMNS", "250")  # one table row a line
    units = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    shown, activations = {}, {}
    for loss in ("plain", "chunked"):
        assert cli("plan", write(tmp_path / f"{loss}.toml", RECIPE.replace("{loss}", loss))) == 0
        shown[loss] = capsys.readouterr().out
        value, unit = re.search(r"activations ([\d.]+) (\w+) ", shown[loss]).groups()
        activations[loss] = float(value) * units[unit]
    assert "loss              │ chunked: as set" in shown["chunked"] and "chunked loss" in shown["chunked"]
    assert "loss              │ plain: as set" in shown["plain"]
    assert activations["chunked"] < 0.7 * activations["plain"]  # the logits term is most of this tiny model's


def test_liger_without_the_package_is_a_recipe_error(tmp_path, capsys):
    recipe = write(tmp_path / "liger.toml", RECIPE.replace("{loss}", "liger"))
    assert cli("validate", recipe) == 2
    out = capsys.readouterr()
    assert "training.loss" in out.out + out.err and "pip install liger-kernel" in out.out + out.err


def test_a_chunked_loss_for_a_classifier_is_a_recipe_error(tmp_path, capsys):
    assert cli("validate", tiny_recipe(tmp_path / "r.toml", extra='loss = "chunked"\n')) == 2
    out = capsys.readouterr()
    assert "training.loss: 'chunked' is a causal language model's loss" in out.out + out.err


def test_auto_takes_liger_on_cuda_where_it_applies(monkeypatch):
    from plugins.trainers import _fused_loss

    monkeypatch.setattr(_fused_loss, "liger_installed", lambda: True)
    with torch.device("meta"):
        model, adapted = causal_lm("llama", vocab=AUTO_MIN_VOCAB), causal_lm("llama", vocab=AUTO_MIN_VOCAB, lora=True)
    assert choose("auto", model, cuda=True, zero_stage=0).name == "liger"
    assert choose("auto", model, cuda=False, zero_stage=0).name == "chunked"
    assert choose("auto", model, cuda=True, zero_stage=3).name == "plain"  # Liger would read a partitioned weight
    assert choose("auto", adapted, cuda=True, zero_stage=0).name == "chunked"  # LoRA on the output layer
    with pytest.raises(FinetuneError, match="CUDA"):
        choose("liger", model, cuda=False, zero_stage=0)


def test_the_liger_path_shifts_and_weights_tokens_as_the_plain_one(monkeypatch):
    """Liger's kernel needs CUDA: a stand-in with its signature (plain torch) checks what is handed to it."""
    import sys
    import types

    import torch.nn.functional as F

    from plugins.trainers._fused_loss import liger_cross_entropy

    class StandIn(torch.nn.Module):
        def __init__(self, ignore_index=-100, reduction="mean"):
            super().__init__()
            self.ignore_index, self.reduction = ignore_index, reduction

        def forward(self, lin_weight, _input, target, bias=None):
            logits = F.linear(_input, lin_weight, bias).float()
            return F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction=self.reduction)

    module = types.ModuleType("liger_kernel.transformers")
    module.LigerFusedLinearCrossEntropyLoss = StandIn
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", module)
    model = causal_lm("llama")
    inputs, labels = packed_batch()
    for items in (None, torch.tensor(50)):
        plain = plain_step(model, inputs, labels, items)
        model.zero_grad()
        hidden = model(**inputs, output_hidden_states=True).hidden_states[-1]
        loss = liger_cross_entropy(model.lm_head, hidden, labels, items)
        loss.backward()
        assert_same(plain, (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))


SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
             n_embd=32, n_layer=1, n_head=4, n_inner=64, ffn_dim=64, word_embed_proj_dim=32, n_positions=64,
             max_position_embeddings=64, vocab_size=200, pad_token_id=0, head_dim=8, rotary_dim=4)  # fmt: skip


def test_every_listed_architecture_computes_its_logits_from_its_last_hidden_state():
    """The chunked loss is offered only where logits = output layer(hidden_states[-1]): each listed
    architecture, as this transformers builds it, gives the plain loss."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from plugins.trainers._fused_loss import LINEAR_HEADS

    for model_type in sorted(LINEAR_HEADS):
        config = AutoConfig.for_model(model_type)
        for key, value in SMALL.items():
            if hasattr(config, key):
                setattr(config, key, value)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
        ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))
        labels = ids.clone()
        labels[:, :3] = -100
        with torch.no_grad():
            plain = model(input_ids=ids, labels=labels).loss
            hidden = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
            chunked = chunked_cross_entropy(model.get_output_embeddings(), hidden, labels, chunk=4)
        assert torch.allclose(plain, chunked, atol=1e-5), model_type


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("loss", ["chunked", "liger"])
def test_on_a_gpu_the_fused_losses_equal_the_plain_one_in_less_memory(loss):
    """bf16 autocast as the trainer runs it, a Llama-3-sized vocabulary: the same loss and output-layer
    gradient as the plain path, and a lower peak of GPU memory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from plugins.trainers._fused_loss import liger_cross_entropy, liger_installed

    if loss == "liger" and not liger_installed():
        pytest.skip("liger-kernel is not installed")
    config = LlamaConfig(vocab_size=128256, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).cuda().train()
    ids = torch.randint(3, 128256, (4, 1024), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    labels = ids.clone()
    labels[:, :256] = -100
    compute = liger_cross_entropy if loss == "liger" else chunked_cross_entropy
    results = {}
    for name in ("plain", loss):
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if name == "plain":
                value = model(input_ids=ids, labels=labels).loss
            else:
                hidden = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]
                value = compute(model.lm_head, hidden, labels)
        value.backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - start
        results[name] = (value.detach().float(), model.lm_head.weight.grad.float().clone(), peak)
    (plain, plain_grad, plain_peak), (fused, fused_grad, fused_peak) = results["plain"], results[loss]
    print(f"{loss}: peak {fused_peak / 2**20:.0f} MiB against plain {plain_peak / 2**20:.0f} MiB")
    assert torch.allclose(plain, fused, rtol=2e-3)
    assert (plain_grad - fused_grad).norm() <= 2e-2 * plain_grad.norm()
    assert fused_peak < 0.6 * plain_peak
