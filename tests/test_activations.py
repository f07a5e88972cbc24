"""The plan's activation estimate against what torch really keeps for the backward pass.

runner.distributed.activations reckons, from a model's modules, the bytes per token one layer keeps.
Here torch counts them: every tensor autograd saves during a forward pass goes through
`saved_tensors_hooks`; those that have a token dimension are activations (weights and their 16-bit
copies have none). One layer's share is the difference between a 4-layer and a 2-layer model.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from runner.distributed.activations import blocks, estimate, layer_widths  # noqa: E402

BATCH, SEQ = 3, 100  # no weight of the models below has either size, so a token dimension is unambiguous


def _model(kind: str, layers: int, attention: str = "sdpa", lora=None):
    torch.manual_seed(0)
    if kind == "gpt2":
        sizes = dict(n_embd=128, n_layer=layers, n_head=4, n_positions=256)
        config = transformers.GPT2Config(vocab_size=500, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, **sizes)
    else:
        config = transformers.LlamaConfig(
            hidden_size=128, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=352, vocab_size=500, max_position_embeddings=256, tie_word_embeddings=False,
        )  # fmt: skip
    config._attn_implementation = attention
    model = transformers.AutoModelForCausalLM.from_config(config)
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, target_modules=lora, lora_dropout=0.0))
    return model.train(), config


def _saved_bytes(model, autocast: bool) -> int:
    """Bytes of the distinct storages autograd saves that have a token dimension."""
    seen: dict[int, int] = {}

    def pack(tensor):
        if BATCH * SEQ in tensor.shape or (BATCH in tensor.shape and SEQ in tensor.shape):
            storage = tensor.untyped_storage()
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    ids = torch.randint(0, 500, (BATCH, SEQ))
    saving = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with saving, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(input_ids=ids, labels=ids)
    return sum(seen.values())


def _per_layer(kind, attention, lora, autocast) -> tuple[float, int]:
    """(measured, estimated) bytes per token of one layer."""
    two, config = _model(kind, 2, attention, lora)
    four, _ = _model(kind, 4, attention, lora)
    measured = (_saved_bytes(four, autocast) - _saved_bytes(two, autocast)) / 2 / (BATCH * SEQ)
    block, _ = blocks(two)[0]
    widths = layer_widths(block, config.hidden_size, config.num_attention_heads)
    compute = 2 if autocast else 4
    return measured, widths.bytes_per_token(compute, 4, SEQ, fused_attention=attention != "eager")


@pytest.mark.parametrize(
    "kind, attention, lora, autocast, tolerance",
    [
        ("llama", "sdpa", None, True, 0.05),  # grouped-query attention, gated MLP, RMSNorm
        ("llama", "sdpa", None, False, 0.05),  # fp32: q, k and v read one tensor
        ("llama", "sdpa", "all-linear", True, 0.1),  # LoRA: frozen bases keep no input, adapters do
        ("llama", "sdpa", ["q_proj", "v_proj"], True, 0.05),  # most projections keep nothing
        ("gpt2", "sdpa", None, True, 0.1),  # fused c_attn, LayerNorm, a tanh-approximated GELU
        ("llama", "eager", None, True, 0.1),  # the s x s softmax an eager kernel keeps
    ],
)
def test_layer_estimate_matches_what_autograd_saves(kind, attention, lora, autocast, tolerance):
    measured, estimated = _per_layer(kind, attention, lora, autocast)
    assert estimated == pytest.approx(measured, rel=tolerance), (measured, estimated)


def test_estimate_counts_layers_logits_and_checkpointing():
    model, config = _model("llama", 4)
    block, count = blocks(model)[0]
    assert count == 4
    per_layer = layer_widths(block, 128, 4).bytes_per_token(2, 4, SEQ)
    full = estimate(model, BATCH, SEQ, 4, 128, 500)
    assert full == BATCH * SEQ * (4 * per_layer + 8 * 500)
    # Checkpointing keeps each layer's fp32 input, and one layer's activations during its recompute.
    checkpointed = estimate(model, BATCH, SEQ, 4, 128, 500, checkpointing=True)
    assert checkpointed == BATCH * SEQ * (4 * 4 * 128 + per_layer + 8 * 500)
    assert checkpointed < full


def test_a_model_without_attention_blocks_has_no_estimate():
    assert estimate(torch.nn.Sequential(torch.nn.Linear(4, 4)), 1, 8, 1, 4, 4) is None
