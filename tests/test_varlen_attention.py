"""The runner's 'varlen' attention kernel (runner/toolkit/varlen_attention.py) for packed rows.

On this CPU it computes each packed sample with sdpa on its own; the same bookkeeping (which
tokens form a sequence, cu_seqlens, unpadding) feeds the GPU kernels, whose calls are checked here
through stand-ins that compute what torch's varlen_attn and flash-attn document. A packed batch's
loss and gradients equal transformers' sdpa with its block-diagonal mask and each sample trained
alone; padded batches and generation agree with sdpa; the probe finds no mixing; the kernel is
chosen for packed rows only where it runs its flash kernel.
"""

from __future__ import annotations

import copy
import json
import sys
import types

import pytest
import torch
from conftest import run_recipe, write

from runner.errors import FinetuneError
from runner.toolkit import varlen_attention as va

VOCAB = 64
SMALL = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64)
CONFIGS = {
    "llama": dict(SMALL, num_key_value_heads=2),  # GQA: two query heads per key/value head
    "gpt2": dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    "mistral": dict(SMALL, num_key_value_heads=1, sliding_window=4),  # windows shorter than the samples
}
LENGTHS = (9, 4, 13, 6, 3)


def tiny(architecture: str, kernel: str = "sdpa"):
    from transformers import AutoConfig, AutoModelForCausalLM

    va.register()
    config = AutoConfig.for_model(
        architecture, vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2, **CONFIGS[architecture]
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=kernel)


def as_varlen(model):
    twin = copy.deepcopy(model)
    twin.set_attn_implementation("varlen")
    assert twin.config._attn_implementation == "varlen"
    return twin


def samples() -> list[list[int]]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in LENGTHS]


def packed_batch():
    """Two packed rows (the real `pack` and PackedCollator): 9+4+13 and 6+3 tokens, the second padded."""
    from datasets import Dataset

    from runner.pipeline.packing import pack
    from runner.toolkit.collate import PackedCollator

    rows = [{"input_ids": ids, "labels": ids, "length": len(ids)} for ids in samples()]
    packed = pack(Dataset.from_list(rows), max_length=26)
    assert sorted(packed["length"]) == [9, 26]
    return PackedCollator(pad_token_id=0)(list(packed))


def summed_loss_and_grads(model, batches):
    """The sum of every supervised token's loss over `batches`, and its gradient per parameter."""
    model.zero_grad()
    total = 0.0
    for batch in batches:
        count = int((batch["labels"][:, 1:] != -100).sum())
        loss = model(**batch).loss * count
        loss.backward()
        total += float(loss.detach())
    return total, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_close(found, expected, atol=1e-5):
    (loss, grads), (loss_ref, grads_ref) = found, expected
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    assert grads.keys() == grads_ref.keys()
    worst = max(float((grads[n] - grads_ref[n]).abs().max()) for n in grads)
    assert worst < atol, worst


@pytest.mark.parametrize("architecture", list(CONFIGS))
def test_a_packed_batch_trains_as_with_sdpa_and_as_each_sample_alone(architecture):
    sdpa = tiny(architecture).train()
    varlen = as_varlen(sdpa)
    batch = packed_batch()
    found = summed_loss_and_grads(varlen, [batch])
    # transformers' own block-diagonal mask, from the same position ids
    assert_close(found, summed_loss_and_grads(sdpa, [batch]))
    alone = [{"input_ids": torch.tensor([s]), "labels": torch.tensor([s])} for s in samples()]
    assert_close(found, summed_loss_and_grads(sdpa, alone))


@pytest.mark.parametrize("architecture", ["llama", "mistral"])
def test_a_padded_batch_without_packing_equals_sdpa(architecture):
    from runner.toolkit.collate import PadCollator

    sdpa = tiny(architecture).train()
    varlen = as_varlen(sdpa)
    batch = PadCollator(pad_token_id=0, sequence_labels=True)([{"input_ids": s, "labels": s} for s in samples()])
    assert not batch["attention_mask"].all()  # there is padding
    assert_close(summed_loss_and_grads(varlen, [batch]), summed_loss_and_grads(sdpa, [batch]))


def test_generation_with_left_padding_and_a_cache_equals_sdpa():
    sdpa = tiny("llama").eval()
    varlen = as_varlen(sdpa)
    prompts = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = (prompts != 0).long()
    kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(varlen.generate(prompts, **kwargs), sdpa.generate(prompts, **kwargs))


@pytest.mark.parametrize("architecture", list(CONFIGS))
def test_the_probe_finds_no_mixing_with_varlen(architecture):
    from runner.pipeline.packing import check_packing, mixing

    model = tiny(architecture, "varlen")
    assert mixing(model) == 0.0
    assert check_packing(model) == 0.0


def test_sequences_restart_at_each_sample_and_row_and_drop_padding():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    found = va.sequences(positions, None, 2, 6, "cpu")
    assert found.keep is None and found.cu_seqlens.tolist() == [0, 3, 5, 6, 10, 12] and found.max_length == 4
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    found = va.sequences(None, mask, 2, 6, "cpu")  # left and right padding, positions from the model
    assert found.keep.tolist() == [2, 3, 4, 5, 6, 7, 8] and found.cu_seqlens.tolist() == [0, 4, 7]


def varlen_attn_standin(calls):
    """torch's varlen_attn as its docstring defines it (causal iff window_size == (-1, 0); a left
    window of W keys back), computed per sequence on the CPU."""

    def varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        calls.append(dict(window_size=window_size, enable_gqa=enable_gqa, max_q=max_q, cu=cu_q.tolist()))
        assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32 and isinstance(max_q, int)
        assert enable_gqa or q.shape[1] == k.shape[1]
        assert window_size == (-1, 0) or window_size[1] == 0  # causal, with or without a window
        window = window_size[0] + 1 if window_size[0] >= 0 else None
        return va.per_sequence(q, k, v, cu_q, scale, window)

    return varlen_attn


def flash_attn_standin(calls):
    def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal, window_size):
        calls.append(dict(window_size=window_size, causal=causal, dropout_p=dropout_p))
        assert causal and dropout_p == 0.0
        window = window_size[0] + 1 if window_size[0] >= 0 else None
        return va.per_sequence(q, k, v, cu_q, softmax_scale, window)

    return types.SimpleNamespace(flash_attn_varlen_func=flash_attn_varlen_func)


@pytest.mark.parametrize("flash_attn", [False, True])
def test_the_gpu_calls_get_the_sequences_gqa_and_window(monkeypatch, flash_attn):
    """The GPU path (flash kernels stood in for, on this CPU) equals sdpa for a packed batch."""
    import torch.nn.attention.varlen as torch_varlen

    calls = []
    monkeypatch.setattr(va, "flash_ready", lambda q: True)
    monkeypatch.setattr(va, "flash_attn_installed", lambda: flash_attn)
    monkeypatch.setattr(torch_varlen, "varlen_attn", varlen_attn_standin(calls))
    sdpa = tiny("mistral").train()
    varlen, batch = as_varlen(sdpa), packed_batch()
    monkeypatch.setitem(sys.modules, "flash_attn", flash_attn_standin(calls))  # once built: only we import it
    assert_close(summed_loss_and_grads(varlen, [batch]), summed_loss_and_grads(sdpa, [batch]))
    assert calls and all(c["window_size"] == (3, 0) for c in calls)  # sliding_window 4: 3 keys back
    if not flash_attn:
        assert all(c["enable_gqa"] and c["cu"] == [0, 9, 13, 26, 32, 35, 52] for c in calls)


def test_dropout_is_refused():
    model = tiny("llama").train()
    model.config.attention_dropout = 0.1
    assert "attention dropout" in va.problems(model)[0]
    with pytest.raises(ValueError, match="no dropout"):
        va.varlen_attention_forward(model, *([torch.zeros(1, 4, 3, 8)] * 3), None, dropout=0.1)


CHOICE = dict(cuda=True, capability=(9, 0), compute_dtype="bfloat16", model_problems=[])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, "varlen"),
        ({"compute_dtype": "float16"}, "varlen"),
        ({"cuda": False, "capability": None}, None),
        ({"capability": (7, 5)}, None),
        ({"compute_dtype": "float32"}, None),
        ({"model_problems": ["it has attention dropout"]}, None),
    ],
)
def test_varlen_is_chosen_for_packed_rows_only_where_its_flash_kernel_runs(change, expected):
    assert va.choose(None, True, **{**CHOICE, **change})[0] == expected
    assert va.choose(None, False, **{**CHOICE, **change})[0] is None  # no packing: transformers' default
    assert va.choose("eager", True, **{**CHOICE, **change})[0] == "eager"  # the recipe's choice stands


def on_a_gpu(monkeypatch, flash_attn: bool = False):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(va, "flash_attn_installed", lambda: flash_attn)


@pytest.mark.parametrize("flash_attn", [False, True])
def test_the_choice_on_a_gpu_sets_the_kernel_and_names_its_backend(monkeypatch, flash_attn):
    from runner.pipeline.packing import packing_kernel

    on_a_gpu(monkeypatch, flash_attn)
    model, said = tiny("llama"), []
    assert packing_kernel(model, None, "auto", said.append) == "varlen"
    assert model.config._attn_implementation == "varlen"
    backend = "flash-attn varlen" if flash_attn else "torch varlen_attn"
    assert va.describe(model, "auto") == {"attn_implementation": "varlen", "backend": backend}
    assert backend in said[0]
    other = tiny("llama")  # in float32 without mixed precision: no flash kernel, the default stays
    assert packing_kernel(other, None, "no") is None and other.config._attn_implementation == "sdpa"
    named = tiny("llama")  # a kernel the recipe names stands
    assert packing_kernel(named, "eager", "auto") == "eager" and named.config._attn_implementation == "sdpa"


def test_a_chosen_varlen_that_mixes_is_taken_back(monkeypatch):
    import runner.pipeline.packing as packing

    on_a_gpu(monkeypatch)
    monkeypatch.setattr(packing, "mixing", lambda model: 1.0)  # a model whose attention never sees positions
    model, said = tiny("llama"), []
    assert packing.packing_kernel(model, None, "auto", said.append) is None
    assert model.config._attn_implementation == "sdpa" and "mix" in said[0]


def test_on_a_cpu_the_default_stays(monkeypatch):
    from runner.pipeline.packing import packing_kernel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = tiny("llama")
    assert packing_kernel(model, None, "auto") is None and model.config._attn_implementation == "sdpa"


RECIPE = """
[[data.sources]]
type = "synthetic"
kind = "text"
rows = 40

[tokenizer]
type = "trained"
vocab_size = 300
max_length = 32

[model]
type = "config"
architecture = "{architecture}"
attn_implementation = "varlen"
config = {config}

[task]
type = "causal_lm"
packing = true

[training]
epochs = 1
"""
LLAMA = "{ num_hidden_layers = 1, num_attention_heads = 4, num_key_value_heads = 2, hidden_size = 32 }"


def test_a_recipe_naming_varlen_trains_packed_rows_and_records_the_kernel(tmp_path):
    from runner import load_recipe

    path = write(tmp_path / "r.toml", RECIPE.format(architecture="llama", config=LLAMA))
    assert load_recipe(path).model.create().attention_kernel() == "varlen"
    result = run_recipe(path, tmp_path / "run")
    assert result.status == "completed" and result.global_step > 0
    env = json.loads(result.run_dir.environment.read_text())
    assert env["attention"] == {"attn_implementation": "varlen", "backend": "sdpa per sequence"}


def test_varlen_on_a_model_with_attention_dropout_is_refused_when_built(tmp_path):
    from runner import load_recipe
    from runner.components import ModelSpec, RunContext

    config = "{ num_hidden_layers = 1, num_attention_heads = 2, hidden_size = 32, attention_dropout = 0.1 }"
    recipe = load_recipe(write(tmp_path / "r.toml", RECIPE.format(architecture="llama", config=config)))
    spec = ModelSpec(head="causal_lm", vocab_size=50, max_length=16)
    with pytest.raises(FinetuneError) as err:
        recipe.model.create().build(RunContext(seed=0, cache_dir=tmp_path), spec)
    assert "attention dropout" in err.value.message and "sdpa" in err.value.hint


def test_packing_with_varlen_on_a_mixing_architecture_is_a_recipe_error(tmp_path):
    from runner import load_recipe
    from runner.errors import RecipeError

    config = "{ num_hidden_layers = 1, num_attention_heads = 2, hidden_size = 32, word_embed_proj_dim = 32 }"
    path = write(tmp_path / "r.toml", RECIPE.format(architecture="opt", config=config))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    [issue] = err.value.issues
    assert "packing would mix samples" in issue.message and "'varlen'" in issue.message


def test_packing_with_flash_attention_2_is_a_recipe_error(tmp_path, monkeypatch):
    import importlib.util

    from runner import load_recipe
    from runner.errors import RecipeError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else real(name, *a)
    )
    path = write(tmp_path / "r.toml", RECIPE.format(architecture="llama", config=LLAMA))
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ['model.attn_implementation="flash_attention_2"'])
    [issue] = err.value.issues
    assert issue.key == ("model", "attn_implementation") and "'varlen'" in issue.hint
    load_recipe(path, ['model.attn_implementation="flash_attention_2"', "task.packing=false"])


def test_why_transformers_flash_attention_2_mixes_several_packed_rows(monkeypatch):
    """Its dispatch, with the flash functions stood in for on this CPU: PackedCollator's batch of
    several rows (no cu_seqlens, no mask) goes to the plain causal flash function, across samples."""
    import transformers.modeling_flash_attention_utils as fa
    from transformers import AttentionInterface
    from transformers.integrations.flash_attention import flash_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    from runner.pipeline.packing import mixing

    called = set()

    def flash_fn(q, k, v, dropout_p=0.0, softmax_scale=None, causal=True):
        called.add("flash_fn")
        k, v = (x.repeat_interleave(q.shape[2] // k.shape[2], 2) for x in (k, v))
        out = torch.nn.functional.scaled_dot_product_attention(
            *(x.transpose(1, 2) for x in (q, k, v)), is_causal=causal, scale=softmax_scale
        )
        return out.transpose(1, 2)

    def flash_varlen_fn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                        softmax_scale=None, causal=True):  # fmt: skip
        called.add("flash_varlen_fn")
        return va.per_sequence(q, k, v, cu_seqlens_q, softmax_scale, None)

    imports = (flash_fn, flash_varlen_fn, None, fa._pad_input, fa._unpad_input)
    monkeypatch.setattr(fa, "_lazy_imports", lambda *a, **k: imports)
    monkeypatch.setattr(fa, "_loaded_implementation", None)
    monkeypatch.setitem(AttentionInterface._global_mapping, "fa2_standin", flash_attention_forward)
    monkeypatch.setitem(AttentionMaskInterface._global_mapping, "fa2_standin", flash_attention_mask)
    model = tiny("llama", "fa2_standin")
    assert mixing(model) > 0.01 and called == {"flash_fn"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash kernels need a CUDA GPU")
@pytest.mark.parametrize("architecture", ["llama", "mistral"])
def test_on_a_gpu_the_flash_kernel_trains_as_sdpa(architecture):
    """torch's varlen_attn (or flash-attn's, where installed) in bfloat16, against sdpa's block-diagonal mask."""
    sdpa = tiny(architecture).cuda().train()
    varlen = as_varlen(sdpa)
    assert va.describe(varlen, "bf16")["backend"] in ("torch varlen_attn", "flash-attn varlen")
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in packed_batch().items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        (loss, grads), (loss_ref, grads_ref) = (summed_loss_and_grads(m, [batch]) for m in (varlen, sdpa))
    assert loss == pytest.approx(loss_ref, rel=2e-2)
    for name, grad in grads.items():
        assert torch.allclose(grad, grads_ref[name], atol=2e-2, rtol=5e-2), name
