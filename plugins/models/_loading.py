"""What the `pretrained` and `config` models share about loading: a quantized base (bitsandbytes,
QLoRA) and the attention kernel.

A quantized base keeps its frozen weights in 4 or 8 bits; only adapters beside it train (the core
refuses `full` and `freeze` on one, at `strategy.type`). Nothing here imports torch or
bitsandbytes at validation: `finetune validate` stays fast and works without either installed.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Literal

from pydantic import Field, model_validator

from runner import FinetuneError, Options, register_varlen_attention, varlen_attention_problems

COMPUTE_DTYPES = Literal["float32", "bfloat16", "float16"]
KERNELS = Literal["eager", "sdpa", "flash_attention_2", "flex_attention", "varlen"]
# The packages a kernel needs beyond torch, and the pip name that provides each.
KERNEL_PACKAGES = {"flash_attention_2": ("flash_attn", "flash-attn")}
# Options that mean something for 4-bit weights only.
FOUR_BIT_ONLY = ("type", "double_quant", "compute_dtype", "quant_storage")


class Quantization(Options):
    """`[model] quantization`: load the base's linear layers quantized by bitsandbytes."""

    bits: Literal[4, 8] = Field(description="4 (QLoRA: NF4 or FP4 weights) or 8 (LLM.int8()).")
    type: Literal["nf4", "fp4"] = Field(
        default="nf4", description="4-bit data type: 'nf4' (normal float, QLoRA's choice) or 'fp4'."
    )
    double_quant: bool = Field(
        default=True, description="Quantize the quantization constants too (about 0.4 bits per weight saved)."
    )
    compute_dtype: COMPUTE_DTYPES = Field(
        default="bfloat16",
        description="dtype the 4-bit weights are dequantized to for each matmul, and an export merges in.",
    )
    quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = Field(
        default="uint8",
        description="dtype the packed 4-bit weights are stored in; DeepSpeed ZeRO-3 needs it equal to compute_dtype.",
    )

    @model_validator(mode="after")
    def _four_bit_options(self):
        if self.bits == 8:
            given = [key for key in FOUR_BIT_ONLY if key in self.model_fields_set]
            if given:
                raise ValueError(f"{', '.join(given)} applies to 4-bit weights only (bits = 4)")
        return self

    def bnb_config(self):
        """transformers' BitsAndBytesConfig for these options."""
        import torch
        from transformers import BitsAndBytesConfig

        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.type,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, self.compute_dtype),
            bnb_4bit_quant_storage=getattr(torch, self.quant_storage),
        )


class LoadingOptions(Options):
    """The options of a model that loads through transformers: quantization and attention kernel."""

    quantization: Quantization | None = Field(
        default=None,
        description="Load the base quantized (bitsandbytes, the `quantization` extra): "
        "{ bits = 4 } for QLoRA, { bits = 8 }. Only adapter strategies train on it.",
    )
    attn_implementation: KERNELS | None = Field(
        default=None,
        description="Attention kernel: 'eager', 'sdpa', 'flash_attention_2' (CUDA, the flash-attn package), "
        "'flex_attention', or the runner's 'varlen' (packed rows through a variable-length flash kernel on CUDA; "
        "sdpa per sample elsewhere). Default: 'varlen' for packed rows on a CUDA GPU in 16 bits where the "
        "model can take it, else transformers' choice for the architecture.",
    )


class Loading:
    """What a model component whose options subclass LoadingOptions says about them."""

    options: LoadingOptions

    def quantization_bits(self) -> int | None:
        return self.options.quantization.bits if self.options.quantization is not None else None

    def attention_kernel(self) -> str | None:
        return self.options.attn_implementation


def check_loading(options) -> list[tuple[tuple, str]]:
    """Recipe problems of `quantization` and `attn_implementation`: a package they need that is not
    installed is named, with what installs it."""
    problems = []
    if options.quantization is not None and importlib.util.find_spec("bitsandbytes") is None:
        problems.append(
            (
                ("quantization",),
                "a quantized base needs bitsandbytes, which is not installed; "
                "install the extra: pip install 'finetune-runner[quantization]'",
            )
        )
    needed = KERNEL_PACKAGES.get(options.attn_implementation or "")
    if needed and importlib.util.find_spec(needed[0]) is None:
        problems.append(
            (
                ("attn_implementation",),
                f"'{options.attn_implementation}' needs the {needed[1]} package (and a CUDA GPU), which is not "
                f"installed: pip install {needed[1]}, or use 'sdpa'",
            )
        )
    return problems


def kernel(options) -> str | None:
    """The attn_implementation to build with, made known to transformers first where it is the
    runner's own ('varlen': runner.toolkit.varlen_attention)."""
    if options.attn_implementation == "varlen":
        register_varlen_attention()
    return options.attn_implementation


def check_kernel(model, options):
    """Refuse a built model that cannot run the kernel the recipe names; return the model."""
    if options.attn_implementation == "varlen":
        found = varlen_attention_problems(model)
        if found:
            raise FinetuneError(
                f"model.attn_implementation = 'varlen' cannot run this model: {'; '.join(found)}",
                hint="use attn_implementation = 'sdpa' (or leave it unset)",
            )
    return model


def loading_kwargs(options) -> dict[str, Any]:
    """Keyword arguments of `from_pretrained` for the attention kernel and quantization."""
    kwargs: dict[str, Any] = {}
    if options.attn_implementation:
        kwargs["attn_implementation"] = kernel(options)
    if options.quantization is not None:
        kwargs["quantization_config"] = options.quantization.bnb_config()
        kwargs["device_map"] = {"": _this_device()}
    return kwargs


def _this_device() -> str:
    """Where this process's quantized weights go: bitsandbytes quantizes as they are placed, and a
    quantized model cannot be moved to another device afterwards."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"
