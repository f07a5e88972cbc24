"""What the core does with every bitsandbytes-quantized model it builds or loads, on every CPU.

bitsandbytes has a second code path for 4-bit layers on a CPU with AVX512-BF16 (most current
server CPUs): `Linear4bit` notes `has_avx512bf16()` when it is built, and its first
forward in eval mode without gradients repacks the weight in place into another layout for a fused
bf16 kernel (`_convert_weight_packed_for_cpu`). The runner turns that path off on every layer
(`keep_4bit_layout`), because on that path, with bitsandbytes 0.50:

- every later matmul of the layer computes in bf16, whatever `compute_dtype` says, and keeps doing
  so once the model trains again: the baseline measurement at the start of a run packs every layer,
  and the fused kernel has no backward, so the gradient through the frozen base to the adapters
  below it is lost (with a torch warning);
- saving unpacks the layer (`_convert_weight_packed_for_cpu_inverse`) by quantizing the
  double-quantized constants anew: the saved base is not the one that was loaded, and drifts at
  each evaluate-and-save;
- under DeepSpeed ZeRO-3 the packed weight is swapped for the partitioned float storage, and saving
  a checkpoint fails (`assert packed_weight.dtype == torch.uint8`) on every rank.

Off, the layer computes as on any other CPU: dequantized to `compute_dtype` for each matmul, which
is also what a GPU does. Nothing here imports bitsandbytes: a model without 4-bit layers is only
walked when bitsandbytes is already loaded.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

# The warning bitsandbytes logs when it is imported on a CPU with AVX512-BF16 and without the optional
# `kernels` package: that package serves the repacked path above, which the runner never takes.
KERNEL_LOGGER = "bitsandbytes.backends.cpu.ops"
KERNEL_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"
# The 8-bit matmul logs on every call that it casts its inputs to fp16: its design, nothing to act on.
CAST_LOGGER = "bitsandbytes.autograd._functions"
CAST_NOTICE = "MatMul8bitLt: inputs will be cast"


def keep_4bit_layout(model: Any) -> Any:
    """Turn bitsandbytes' CPU repacking off on every 4-bit layer of `model` (see the module's
    docstring); returns `model`. Call it before the model's first forward: a layer already repacked
    is refused, since unpacking it again changes its weights."""
    bnb = sys.modules.get("bitsandbytes")
    if bnb is None or not hasattr(model, "modules"):  # no bitsandbytes loaded: no 4-bit layer exists
        return model
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = getattr(module.weight, "quant_state", None)
            if getattr(state, "packing_format_for_cpu", False):
                raise RuntimeError("a 4-bit layer was repacked for bitsandbytes' CPU kernel before the runner saw it")
            module.support_avx512bf16_for_cpu = False  # what Linear4bit.forward reads
    return model


class _Drop(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_notices() -> None:
    """Drop two records bitsandbytes logs, and only those: the notice about the missing `kernels`
    package, which would open every run, even one without quantization (transformers imports
    peft, and peft imports bitsandbytes whenever it is installed), and the 8-bit matmul's note on
    every call that it casts its inputs. Idempotent; call it before bitsandbytes is imported (a
    logger exists before its module does)."""
    for name, prefix in ((KERNEL_LOGGER, KERNEL_NOTICE), (CAST_LOGGER, CAST_NOTICE)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(prefix))


def merged_dtype(model: Any) -> Any:
    """The torch dtype a merged export of this quantized base is written in: a 4-bit base's compute
    dtype (each matmul of training dequantized the weights to it), None for other bases (their
    own dtype)."""
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    if config is None:
        return None
    if isinstance(config, dict):
        four_bit, dtype = config.get("load_in_4bit"), config.get("bnb_4bit_compute_dtype")
    else:
        four_bit, dtype = getattr(config, "load_in_4bit", False), getattr(config, "bnb_4bit_compute_dtype", None)
    if not four_bit or dtype is None:
        return None
    if isinstance(dtype, str):
        import torch

        dtype = getattr(torch, dtype.removeprefix("torch."))
    return dtype
