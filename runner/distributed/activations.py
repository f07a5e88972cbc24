"""Activation memory of a transformer, reckoned from its modules, for `finetune plan`.

Autograd keeps, for the backward pass of every layer, the inputs of the matmuls whose weights
train (in the 16-bit compute dtype under mixed precision), what the attention kernel needs (q, k,
v and its output), what the MLP's activation function needs, and what the norms need (in the
residual stream's dtype, fp32 while the weights are fp32). This module walks one block of the
model (on the meta device: nothing is computed) and adds those widths up, so that the count
follows the architecture: grouped-query attention, gated MLPs, fused q/k/v projections, adapters.
tests/test_activations.py compares it with the tensors torch really saves, counted with
`torch.autograd.graph.saved_tensors_hooks`.

Korthikanti et al. 2022's 34*s*b*h assumes GPT-style blocks and, on top, the s^2 attention
matrix that fused kernels (sdpa, FlashAttention) do not keep: on a Llama-style 1B model that
estimate was 44% over the peak measured on an H200 (docs/benchmarks.md), this one within 2%.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The loss keeps the fp32 log-probabilities (4 bytes per vocabulary entry and token); at the start
# of the backward pass their gradient (4 more) is alive beside every layer's activations.
LOGIT_BYTES = 8
MASK_BYTES = 1  # a dropout mask on a GPU is a bool per element


@dataclass(frozen=True)
class LayerWidths:
    """Elements per token that one block keeps for the backward pass, by what holds them."""

    matmul_inputs: int  # inputs of matmuls with trainable weights (the compute dtype)
    shared_inputs: int  # of those, inputs q/k/v or gate/up read from one tensor: one copy when nothing casts
    attention: int  # q, k, v and the output the attention kernel keeps (the compute dtype)
    mlp: int  # the MLP activation function's inputs and outputs (the compute dtype)
    norms: int  # the norms' inputs and outputs (the residual stream's dtype)
    masks: int  # adapter dropout masks (MASK_BYTES each)
    heads: int  # attention heads: the s^2 matrix an eager kernel keeps is heads x s per token

    def bytes_per_token(self, compute: int, residual: int, seq: int, fused_attention: bool = True) -> int:
        # Autocast makes a 16-bit copy of a matmul's input for each matmul; without it, the
        # projections that read one tensor keep that one tensor.
        inputs = self.matmul_inputs - (self.shared_inputs if compute == residual else 0)
        kept = compute * (inputs + self.attention + self.mlp) + residual * self.norms + MASK_BYTES * self.masks
        if not fused_attention:
            # The s x s softmax an eager kernel keeps per head (1.5 x the compute dtype, measured:
            # its output, and the 16-bit copy the matmul with v reads).
            kept += round(1.5 * compute * self.heads * seq)
        return kept


def _is_linear(module) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"  # GPT-2's transposed linear


def _in_out(module) -> tuple[int, int]:
    if type(module).__name__ == "Conv1D":
        rows, cols = module.weight.shape  # Conv1D stores (in, out)
        return int(rows), int(cols)
    return int(module.in_features), int(module.out_features)


def _trains(module) -> bool:
    weight = getattr(module, "weight", None)
    return weight is not None and bool(weight.requires_grad)


def blocks(model) -> list[tuple[Any, int]]:
    """The stacks of repeated layers: (first block, how many), one per stack (an encoder-decoder has two)."""
    import torch

    stacks = []
    for module in model.modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(child) for child in module}
        first = module[0]
        if len(kinds) == 1 and any(_is_linear(m) for m in first.modules()) and _attention(first):
            stacks.append((first, len(module)))
    return stacks


def _attention(block) -> list:
    """The outermost attention modules of a block (self- and cross-attention)."""
    found = []
    for name, module in block.named_modules():
        if "Attention" in type(module).__name__ and not any(name.startswith(f"{seen}.") for seen, _ in found):
            found.append((name, module))
    return [module for _, module in found]


def _primary(module) -> list:
    """The model's own linears in `module`, in order, without peft's adapter matrices."""
    return [m for name, m in module.named_modules() if _is_linear(m) and "lora_" not in name]


# Activations written as several tensor operations (GPT-2's tanh approximation) keep several
# inner-width tensors; one torch op (nn.GELU, SiLU) keeps its input only. Counted on CPU.
COMPOSITE_ACTIVATIONS = {"NewGELUActivation": 4, "FastGELUActivation": 4, "QuickGELUActivation": 2}


def _activation_keeps(block) -> int:
    for module in block.modules():
        if type(module).__name__ in COMPOSITE_ACTIVATIONS:
            return COMPOSITE_ACTIVATIONS[type(module).__name__]
    return 1


def _adapter_dropout(wrapper) -> float:
    """The dropout probability of a LoRA wrapper's adapters (0 when none, or no wrapper)."""
    dropouts = getattr(wrapper, "lora_dropout", None) or {}
    return max((getattr(d, "p", 0.0) for d in dropouts.values()), default=0.0)


def layer_widths(block, hidden: int, heads: int) -> LayerWidths:
    """What one block keeps per token, from its modules (see the module docstring)."""
    import torch

    attention = _attention(block)
    in_attention = {id(m) for a in attention for m in a.modules()}
    outputs = {id(_primary(a)[-1]) for a in attention if _primary(a)}  # o_proj: registered last
    matmul = shared = kernel = masks = 0
    for a in attention:
        kernel += sum(_in_out(m)[1] for m in _primary(a))  # q, k, v and the output o_proj reads
    mlp_linears = [m for m in _primary(block) if id(m) not in in_attention]
    wrappers = {id(m.base_layer): m for m in block.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")}
    # Projections that read one tensor: q, k, v (all but an attention's output) and the MLP's first ones.
    groups = [[m for m in _primary(a) if id(m) not in outputs] for a in attention] + [mlp_linears[:-1]]
    for linear in _primary(block):
        width = _in_out(linear)[0]
        wrapper = wrappers.get(id(linear))
        trains = _trains(linear) or (wrapper is not None and any(_trains(m) for m in wrapper.lora_A.values()))
        dropout = _adapter_dropout(wrapper)
        masks += width if dropout else 0
        # The output projection reads the attention output, which the kernel keeps already, unless
        # an adapter's dropout makes a copy of it for its own matmul.
        if trains and (id(linear) not in outputs or dropout):
            matmul += width
            shared += width if not dropout and any(linear is m and linear is not g[0] for g in groups for m in g) else 0
    mlp = 0
    if mlp_linears:
        inner = _in_out(mlp_linears[-1])[0]  # the down projection reads the MLP's inner width
        gated = len(mlp_linears) >= 3 or any(_in_out(m)[1] == 2 * inner for m in mlp_linears)
        mlp = 3 * inner if gated else inner * _activation_keeps(block)  # gate, act(gate), up | act's tensors
    norms = 0
    for module in block.modules():
        kind = type(module).__name__
        if isinstance(module, torch.nn.LayerNorm):
            norms += hidden  # its input; mean and rstd are one number per token
        elif kind.endswith("Norm") and getattr(module, "weight", None) is not None:
            norms += hidden * (2 if _trains(module) else 1)  # input, and the normalized input a trained weight needs
    return LayerWidths(matmul, shared, kernel, mlp, norms, masks, heads)


def autocast_copies(model) -> int:
    """Bytes of the 16-bit copies of the linear weights that autocast makes for one forward pass."""
    return sum(2 * m.weight.numel() for m in model.modules() if _is_linear(m) and m.weight.is_floating_point())


def estimate(
    model,
    batch: int,
    seq: int,
    heads: int,
    hidden: int,
    output_width: int,
    compute: int = 2,
    residual: int = 4,
    checkpointing: bool = False,
    fused_attention: bool = True,
) -> int | None:
    """Activation bytes of one process for a batch of `batch` x `seq` tokens; None when the model has
    no recognisable stack of attention blocks (then the caller falls back to Korthikanti's formula).

    `compute` is the bytes of the compute dtype (2 under 16-bit mixed precision), `residual` of the
    residual stream (4 while the weights are fp32). With gradient checkpointing each layer keeps its
    input only, and one layer's full activations exist while it is recomputed."""
    stacks = blocks(model)
    if not stacks:
        return None
    tokens = batch * seq
    total = largest = 0
    for block, count in stacks:
        per_layer = layer_widths(block, hidden, heads).bytes_per_token(compute, residual, seq, fused_attention)
        largest = max(largest, per_layer)
        total += count * (residual * hidden if checkpointing else per_layer)
    if checkpointing:
        total += largest
    return tokens * (total + LOGIT_BYTES * output_width)
