"""LoRA layers under mixed precision skip the input copy autocast undoes (plugins/strategies/_lora_casts.py):
the same loss and adapter gradients, bit for bit, with and without the copy, and peft's cast still where
autocast is off."""

from __future__ import annotations

import pytest

from runner.testing import tiny_batch, tiny_model

torch = pytest.importorskip("torch")
pytest.importorskip("peft")


def adapted(dropout: float):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(tiny_model("llama", head="causal_lm"), config)
    for name, parameter in model.named_parameters():  # B starts at zero: give the adapters a say
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5, generator=torch.Generator().manual_seed(len(name)))
    return model


def step(model, dtype):
    batch = tiny_batch("causal_lm", rows=3, length=10)
    model.zero_grad()
    torch.manual_seed(0)  # the same dropout masks
    with torch.autocast("cpu", dtype=dtype):
        loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def copied_activations(model) -> tuple[torch.Tensor, dict, list]:
    """A bf16 autocast step, and the activations (3-d tensors) copied from 16 bits to fp32 on the way."""
    copies, original = [], torch.Tensor.to

    def counting(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.dim() == 3 and self.dtype == torch.bfloat16 and out.dtype == torch.float32:
            copies.append(tuple(self.shape))
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "to", counting)
        loss, grads = step(model, torch.bfloat16)
    return loss, grads, copies


def test_skipping_the_casts_under_autocast_changes_no_bit_of_the_loss_or_gradients():
    from plugins.strategies._lora_casts import skip_autocast_input_casts

    plain, fast = adapted(0.0), adapted(0.0)
    assert skip_autocast_input_casts(fast) == 2 * 7  # two blocks of seven linear layers
    loss, grads, before = copied_activations(plain)
    fast_loss, fast_grads, after = copied_activations(fast)
    assert torch.equal(loss, fast_loss)
    assert grads.keys() == fast_grads.keys() and all(torch.equal(grads[k], fast_grads[k]) for k in grads)
    assert len(before) == 2 * 2 and not after  # o_proj's and down_proj's 16-bit inputs were copied, now none


def test_layers_with_dropout_keep_the_cast():
    from plugins.strategies._lora_casts import skip_autocast_input_casts

    assert skip_autocast_input_casts(adapted(0.1)) == 0


def test_outside_autocast_the_adapter_still_casts_its_input():
    from plugins.strategies._lora_casts import skip_autocast_input_casts

    model = adapted(0.0)
    skip_autocast_input_casts(model)
    # bf16 activations into fp32 adapters, no autocast (a 16-bit base, generation): peft's cast is needed
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    layer.base_layer.to(torch.bfloat16)
    x = torch.randn(2, 5, layer.in_features, dtype=torch.bfloat16)
    assert layer(x).shape == (2, 5, layer.out_features)
    assert layer.cast_input_dtype_enabled


@pytest.mark.parametrize(("head", "expected"), [("causal_lm", 0.0), ("sequence_classification", 0.05)])
def test_lora_dropout_defaults_to_zero_for_language_models_only(head, expected):
    from types import SimpleNamespace

    from plugins.strategies.peft_methods import TASK_TYPES, Lora

    spec, kind, model = SimpleNamespace(head=head), TASK_TYPES[head], tiny_model("llama", head=head)
    assert Lora(Lora.Options()).peft_config(model, None, spec, kind).lora_dropout == expected
    assert Lora(Lora.Options(dropout=0.1)).peft_config(model, None, spec, kind).lora_dropout == 0.1
