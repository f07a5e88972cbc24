"""No input copies that autocast undoes, in LoRA layers under mixed precision.

peft's LoRA layer casts its input to the adapter's dtype before the adapter's matmuls
(`_cast_input_dtype`). Under bf16/fp16 autocast the adapters stay in fp32, and an input that arrives
in 16 bits — the attention output before `o_proj`, the MLP's product before `down_proj` — is copied
to fp32, only for autocast to cast it straight back to 16 bits for `lora_A`'s matmul: two passes
over a batch x sequence x width tensor in every such layer, each step, forward and backward, for
nothing (the 16-bit value round-trips exactly).

`skip_autocast_input_casts` turns the cast off only while autocast is on for the input's device (a
forward pre-hook decides at each call), so the adapter's matmul sees the same 16-bit input, bit for
bit, and a call outside autocast (generation or evaluation of an fp32 model, a quantized base with
16-bit activations) still casts as peft does. Only layers without dropout are covered: a dropout
between the cast and the matmul scales the input in fp32 there and in 16 bits here, which rounds
differently (measured: the loss moved in its last bits). Layers with a variant (DoRA) compute more
than the matmuls with the input and keep peft's cast too.
"""

from __future__ import annotations


def skip_autocast_input_casts(model) -> int:
    """Install the pre-hook on every plain LoRA layer of `model`; the number of layers it covers."""
    import torch
    from peft.tuners.lora import LoraLayer

    def decide(module, args):
        x = args[0] if args else None
        if isinstance(x, torch.Tensor):
            module.cast_input_dtype_enabled = not torch.is_autocast_enabled(x.device.type)

    covered = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", {})
        plain = all(isinstance(d, torch.nn.Identity) for d in dropouts.values())
        if isinstance(module, LoraLayer) and plain and not getattr(module, "lora_variant", None):
            module.register_forward_pre_hook(decide)
            covered += 1
    return covered
