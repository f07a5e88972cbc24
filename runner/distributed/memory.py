"""Memory estimates for `finetune plan`: model states and activations per device, and the device.

Estimates, not measurements: model states as the ZeRO paper (Rajbhandari et al. 2020) counts
them; activations from the model's own modules (runner/distributed/activations.py), with
Korthikanti et al. 2022's formula (`activation_bytes`) for a model whose blocks it cannot read.
On the CPU the plan adds the footprint of the libraries and data it
measures in its own process (`resident_bytes`, about 0.5 GiB with torch and transformers loaded).
Left out: on a GPU the CUDA context, allocator fragmentation, temporary buffers and communication
buckets, which add some hundreds of MiB to a few GiB. They are for telling whether a recipe can
fit at all, and which setting to change when it cannot. (Measured on 2 CPU cores: a 57M-parameter
GPT-2 full fine-tune, batch 32 x 48 tokens, estimated 1.5 GiB + 0.5 GiB footprint, peaked at
2.0 GiB resident.)

Pure arithmetic except `detect_accelerator`, `host_memory` and `quantized_weights`; torch is imported
only inside them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")
OFFLOADS = ("none", "cpu", "nvme")


@dataclass(frozen=True)
class StateBytes:
    """Model-state bytes of one process (weights, gradients, optimizer states), by where they live."""

    weights: int  # on the device
    gradients: int
    optimizer: int
    host: int = 0  # offloaded to CPU memory
    nvme: int = 0  # offloaded to disk

    @property
    def device(self) -> int:
        return self.weights + self.gradients + self.optimizer


@dataclass(frozen=True)
class Accelerator:
    """The device training would use, and the host's memory (where offloaded states go)."""

    name: str
    memory: int  # bytes; for the CPU, the host's RAM (all processes share it)
    host_memory: int  # bytes of RAM; 0 when unknown
    cuda: bool = False
    bf16: bool = False


def _per_param(precision: str) -> tuple[int, int, int]:
    """Bytes per trainable parameter: (weights, gradients, optimizer states) for Adam.

    Mixed precision keeps 16-bit weights and gradients and an fp32 master copy with Adam's m and v
    (4 + 4 + 4 = 12 bytes, the ZeRO paper's K = 12); fp32 needs no master copy, only m and v.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return (4, 4, 8) if precision == "fp32" else (2, 2, 12)


def _shard(n: int, parts: int) -> int:
    """One process's share of n bytes split over `parts`: ZeRO pads partitions to equal size."""
    return -(-n // parts)


def quantized_bytes_per_param(bits: int, double_quant: bool = False) -> float:
    """Bytes one quantized weight takes with its share of the quantization constants.

    bitsandbytes' 4-bit weights (NF4/FP4) hold two per byte, plus an fp32 absmax per block of 64
    (4/64 byte each); double quantization stores those absmax in 8 bits with an fp32 constant per
    256 blocks (1/64 + 4/(64*256)). 8-bit weights (LLM.int8()) take a byte plus an fp32 scale per
    output row, which is left out (under 0.1% for rows of 4096).
    """
    if bits == 8:
        return 1.0
    if bits != 4:
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    return 0.5 + (1 / 64 + 4 / (64 * 256) if double_quant else 4 / 64)


def quantized_weights(model) -> int:
    """How many weights bitsandbytes would quantize in `model` as built: those of its frozen linear
    layers, the output layer excepted (embeddings, norms and what trains keep their dtype). Counted
    on the unquantized model, e.g. on the meta device; imports torch."""
    import torch

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return sum(
        module.weight.numel()
        for module in model.modules()
        if isinstance(module, torch.nn.Linear) and module is not output and not module.weight.requires_grad
    )


def model_state_bytes(
    total: int,
    trainable: int,
    world_size: int = 1,
    zero_stage: int = 0,
    offload_optimizer: str = "none",
    offload_params: str = "none",
    precision: str = "bf16",
    quantized: int = 0,
    quantized_bytes: float = 0.0,
) -> StateBytes:
    """Model-state bytes per process for Adam, by the ZeRO paper's accounting.

    Every parameter needs its weights (2 bytes in 16-bit, 4 in fp32); a trainable one also a gradient
    and optimizer states (see `_per_param`). Stage 1 shards the optimizer states over the
    `world_size` processes, stage 2 also the gradients, stage 3 also the weights (all of them,
    frozen ones included). An offloaded optimizer (ZeRO-Offload) keeps its states, fp32 master
    weights included, and from stage 2 on the fp32 gradient partition it steps on, in CPU memory
    or on NVMe; offloaded weights (stage 3) likewise. `quantized` frozen parameters (a QLoRA base)
    take `quantized_bytes` each instead (see `quantized_bytes_per_param`).
    """
    if not 0 <= zero_stage <= 3:
        raise ValueError(f"zero_stage must be 0-3, got {zero_stage}")
    if offload_optimizer not in OFFLOADS or offload_params not in OFFLOADS:
        raise ValueError(f"offload must be one of {OFFLOADS}")
    if not 0 <= trainable <= total:
        raise ValueError(f"trainable ({trainable}) must be between 0 and total ({total})")
    if not 0 <= quantized <= total - trainable:
        raise ValueError(f"quantized ({quantized}) must be between 0 and the frozen ({total - trainable})")
    d = max(1, world_size)
    w, g, o = _per_param(precision)
    weights = w * (total - quantized) + round(quantized_bytes * quantized)
    gradients = g * trainable
    optimizer = o * trainable
    if zero_stage >= 1:
        optimizer = _shard(optimizer, d)
    if zero_stage >= 2:
        gradients = _shard(gradients, d)
    if zero_stage >= 3:
        weights = _shard(weights, d)
    away = {"cpu": 0, "nvme": 0}  # bytes moved off the device, by destination
    if offload_optimizer != "none":
        away[offload_optimizer] += optimizer
        optimizer = 0
        if zero_stage >= 2:
            # The device reduces gradients in buckets and hands them to the CPU optimizer, which
            # accumulates them in fp32 (4 bytes) next to its master weights.
            away[offload_optimizer] += 4 * _shard(trainable, d)
            gradients = 0
    if offload_params != "none":
        away[offload_params] += weights
        weights = 0
    return StateBytes(weights, gradients, optimizer, host=away["cpu"], nvme=away["nvme"])


def activation_bytes(
    batch: int,
    seq: int,
    hidden: int,
    layers: int,
    heads: int,
    vocab: int,
    bytes_per_element: int = 2,
    checkpointing: bool = False,
) -> int:
    """Activation bytes one process keeps for the backward pass of a transformer (an estimate; the
    plan's fallback when runner.distributed.activations finds no attention blocks).

    Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", eq. 1:
    a layer keeps s*b*h*(34 + 5*a*s/h) bytes in 16-bit without recomputation (scaled by
    bytes_per_element/2 for fp32). With activation checkpointing only each layer's input is kept,
    2*s*b*h bytes, plus one layer's full activations while it is recomputed. Add the logits,
    b*s*V*4 bytes (the loss reads them in fp32). `vocab` is the output layer's width: the vocabulary
    for language-model heads, the number of labels for classifiers. The 5*a*s/h term is the
    attention matrix; fused (flash) attention does not keep it, so the estimate is high there.
    Encoder-decoder models: pass encoder plus decoder layers.
    """
    scale = bytes_per_element / 2
    per_layer = seq * batch * hidden * (34 + 5 * heads * seq / hidden) * scale
    # Checkpointing keeps each layer's input, and one layer's activations while it is recomputed.
    kept = layers * 2 * seq * batch * hidden * scale + per_layer if checkpointing else layers * per_layer
    logits = batch * seq * vocab * 4
    return int(kept + logits)


def chunked_loss_bytes(tokens: int, vocab: int, hidden: int, bytes_per_element: int = 2) -> int:
    """Bytes a chunked cross-entropy (trainer hf's training.loss = 'chunked' or 'liger') holds in
    place of the logits of `tokens` tokens: the final hidden states of the scored tokens, gathered
    (in the compute dtype) and kept for the recomputation in backward, and one chunk's logits with
    their gradient, 8 bytes an entry as `activation_bytes` counts the plain logits. A chunk is
    Liger Kernel's (plugins/trainers/_fused_loss.chunk_tokens): about V/H chunks, a power of two
    tokens each, so a chunk's logits hold about as many elements as the hidden states. An upper
    bound: tokens whose label is -100 are left out before chunking."""
    chunks = max(1, math.ceil(vocab / max(1, hidden)))
    chunk = 1 << max(0, math.ceil(math.log2(max(1, math.ceil(tokens / chunks)))))
    return tokens * hidden * bytes_per_element + min(chunk, tokens) * vocab * 8


def largest_layer(model) -> int:
    """Parameters of the largest module's own weights (its children's not counted): what zero.Init
    holds whole while it builds and initialises that module, and what the streamed ZeRO-3 save
    gathers at once."""
    return max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)


def startup_bytes(total: int, largest: int, world_size: int, zero_stage: int, width: int) -> int:
    """Weight bytes one process holds at most while the model is built (and while the final model
    is saved). Under ZeRO-3 on several processes the model is built under zero.Init: its shard of
    every weight plus the largest layer whole. Otherwise every process builds the whole model."""
    if zero_stage == 3 and world_size > 1:
        return (_shard(total, world_size) + largest) * width
    return total * width


@dataclass(frozen=True)
class Shape:
    """The sizes of a transformer that activations depend on."""

    hidden: int
    layers: int
    heads: int
    vocab: int


def _first(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def transformer_shape(config: Any) -> Shape | None:
    """Hidden size, layers, heads and vocabulary from a transformers config (GPT-2's n_embd,
    T5's d_model and num_layers...); None when the config does not say."""
    hidden = _first(config, "hidden_size", "n_embd", "d_model", "dim")
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers", "encoder_layers", "n_layers")
    heads = _first(config, "num_attention_heads", "n_head", "num_heads", "encoder_attention_heads", "n_heads")
    vocab = _first(config, "vocab_size") or 0
    if not (hidden and layers and heads):
        return None
    if getattr(config, "is_encoder_decoder", False):
        layers += _first(config, "num_decoder_layers", "decoder_layers") or layers
    return Shape(hidden, layers, heads, vocab)


def resolve_precision(mixed_precision: str, accelerator: Accelerator) -> str:
    """The precision "auto"/"no"/"bf16"/"fp16" means on this accelerator: "auto" is bf16 on a CUDA
    GPU that has it, fp16 on other GPUs and fp32 on the CPU (as the hf trainer decides)."""
    if mixed_precision == "no":
        return "fp32"
    if mixed_precision in ("bf16", "fp16"):
        return mixed_precision
    if not accelerator.cuda:
        return "fp32"
    return "bf16" if accelerator.bf16 else "fp16"


def host_memory() -> int:
    """Total RAM in bytes, 0 when it cannot be told."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def resident_bytes() -> int:
    """This process's resident memory now, 0 when it cannot be told (Linux's /proc only)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def detect_accelerator() -> Accelerator:
    """The device training would use: CUDA GPU 0 if there is one, else the CPU with the host's RAM."""
    import torch

    host = host_memory()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Accelerator(props.name, props.total_memory, host, cuda=True, bf16=torch.cuda.is_bf16_supported())
    return Accelerator("CPU", host, host)


def format_bytes(n: float) -> str:
    """Binary units: "1.5 GiB", "384 MiB", "12 B"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            break
        n /= 1024
    return f"{n:.1f} {unit}" if unit != "B" and abs(n) < 100 else f"{n:.0f} {unit}"
