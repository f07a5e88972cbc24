"""Checks of the model a run builds that need no recipe: a kernel this machine cannot train with
(before the model is loaded for nothing), and a max_length beyond the model's positions."""

from __future__ import annotations

from runner.errors import FinetuneError


def check_attention_kernel(kernel: str | None) -> None:
    """Refuse to train with a kernel this machine cannot train with (before the model is built)."""
    if kernel != "flex_attention":
        return
    import torch

    if not torch.cuda.is_available():
        raise FinetuneError(
            "model.attn_implementation = 'flex_attention' cannot train on this machine: PyTorch implements "
            "FlexAttention's backward pass only on CUDA GPUs, and none is available",
            hint="use attn_implementation = 'sdpa' (or 'eager'), or run on a CUDA GPU",
        )


def check_positions(model, max_length: int, extra: int = 0) -> None:
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) if config is not None else None
    if isinstance(limit, int) and max_length + extra > limit:
        also = f" plus {extra} virtual tokens" if extra else ""
        raise FinetuneError(
            f"tokenizer.max_length = {max_length}{also} exceeds the model's {limit} positions",
            hint=f"set tokenizer.max_length <= {limit - extra}",
        )
