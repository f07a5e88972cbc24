"""The 'varlen' attention kernel: each sample of a packed row attends only to itself, through a
variable-length (cu_seqlens) kernel instead of a dense block-diagonal mask.

transformers keeps packed samples apart for 'sdpa' by building a (batch, 1, seq, seq) block-diagonal
mask from the position ids; with a mask, sdpa cannot use its flash kernel on a GPU. Its
'flash_attention_2' takes the cu_seqlens path only for a batch of one row (flattened samples): with
several packed rows a batch, it attends causally across the whole row. This kernel derives the
sequences from the position ids (a new one wherever they do not go up by one, and at every row) and
the padding mask, over the whole batch, and computes them in one call:

- on a CUDA GPU in bfloat16/float16 (or float32 under autocast, cast to the autocast dtype as
  transformers' flash integration does): FlashAttention's `flash_attn_varlen_func` when the
  flash-attn package is installed, else torch's `torch.nn.attention.varlen.varlen_attn` (PyTorch's
  own flash kernel, CUDA only, sm80 and later);
- elsewhere (a CPU, float32 without autocast): the same sequences with sdpa, one sequence at a time.
  Correct, not fast: it is what makes the GPU path's bookkeeping testable on a CPU.

Registered with transformers' AttentionInterface, and with its mask interface as FlashAttention's
mask (the 2D padding mask, or None): no dense mask is built. GQA, the softmax scale, a causal
sliding window and padded (unpacked) batches are honoured; attention dropout, logit soft-capping,
attention sinks and bidirectional attention are refused (`problems`), since torch's varlen kernel
has no dropout and none of the paths computes the others. Decoding with a cache (generation) takes
a dense masked sdpa call: its queries are not whole sequences.

Importing this module does not import torch or transformers.
"""

from __future__ import annotations

import importlib.util
import weakref
from dataclasses import dataclass
from typing import Any

NAME = "varlen"
# (major, minor) CUDA capability from which PyTorch's and FlashAttention's flash kernels run.
MIN_CAPABILITY = (8, 0)
HALF = ("bfloat16", "float16")


def register() -> None:
    """Make 'varlen' an attn_implementation transformers accepts (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(NAME, varlen_attention_forward)
    # The 2D padding mask where there is padding, else None: what the kernel reads the sequences from.
    AttentionMaskInterface.register(NAME, flash_attention_mask)


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def backend(device_type: str, dtype: str) -> str:
    """Which computation a call with tensors on `device_type` computing in `dtype` takes."""
    if device_type != "cuda" or dtype not in HALF:
        return "sdpa per sequence"
    return "flash-attn varlen" if flash_attn_installed() else "torch varlen_attn"


# -- the kernel -------------------------------------------------------------------------------------
@dataclass
class Sequences:
    """The sequences of a batch as a flat list of its kept tokens."""

    keep: Any  # flat indices (into batch * seq) of the tokens kept, or None: all of them
    cu_seqlens: Any  # int32, (sequences + 1,): where each sequence starts among the kept tokens
    max_length: int


_last: dict[str, Any] = {}  # one entry: every layer of a forward pass reads the same position ids


def sequences(position_ids, attention_mask, batch: int, length: int, device) -> Sequences:
    """The sequences of a (batch, length) input: a new one at every row, wherever the position ids
    of consecutive kept tokens do not go up by one (a packed row's next sample), and padding (mask
    0) dropped. Without position ids, each row's kept tokens are one sequence."""
    import torch

    key = (position_ids, attention_mask)
    cached = _last.get("key")
    if (
        cached is not None
        and all((a() if a is not None else None) is b for a, b in zip(cached[0], key, strict=True))
        and cached[1] == tuple(t._version if t is not None else None for t in key)
        and cached[2] == (batch, length, device)
    ):
        return _last["value"]
    rows = torch.arange(batch, device=device).repeat_interleave(length)
    if position_ids is None:
        positions = torch.arange(length, device=device).repeat(batch)
    else:  # sometimes (1, length) for a whole batch; with a cache, the last `length` ones are these tokens'
        positions = position_ids[..., -length:].to(device).expand(batch, length).reshape(-1)
    keep = None
    if attention_mask is not None:
        keep = attention_mask[:, -length:].reshape(-1).nonzero().squeeze(1)
        rows, positions = rows[keep], positions[keep]
    starts = torch.ones(rows.shape[0], dtype=torch.bool, device=device)
    starts[1:] = (positions[1:] - positions[:-1] != 1) | (rows[1:] != rows[:-1])
    first = starts.nonzero().squeeze(1)
    cu_seqlens = torch.cat([first, first.new_tensor([rows.shape[0]])]).to(torch.int32)
    max_length = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if rows.shape[0] else 0
    found = Sequences(keep, cu_seqlens, max_length)
    refs = tuple(weakref.ref(t) if t is not None else None for t in key)
    versions = tuple(t._version if t is not None else None for t in key)
    _last.update(key=(refs, versions, (batch, length, device)), value=found)
    return found


def varlen_attention_forward(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    is_causal: bool | None = None,
    s_aux=None,
    **kwargs,
):
    """transformers' attention-function signature: query (batch, heads, q_len, dim), key and value
    (batch, kv_heads, kv_len, dim); returns (batch, q_len, heads, v_dim) and no weights."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if dropout:
        raise ValueError(f"'{NAME}' attention has no dropout (attention_dropout = {dropout}); use 'sdpa'")
    if softcap or s_aux is not None or not causal:
        what = "soft-capped logits" if softcap else ("attention sinks" if s_aux is not None else "bidirectional")
        raise ValueError(f"'{NAME}' attention computes causal attention only, not {what}; use 'sdpa'")
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(f"'{NAME}' attention takes a 2D padding mask, not a {attention_mask.dim()}D mask")
    batch, heads, length, dim = query.shape
    if key.shape[2] != length:  # decoding with a cache
        return _dense(query, key, value, attention_mask, scaling, sliding_window), None
    found = sequences(kwargs.get("position_ids"), attention_mask, batch, length, query.device)
    q, k, v = (x.transpose(1, 2).reshape(batch * length, x.shape[1], x.shape[3]) for x in (query, key, value))
    if found.keep is not None:
        q, k, v = q[found.keep], k[found.keep], v[found.keep]
    out = attend(q, k, v, found.cu_seqlens, found.max_length, scaling, sliding_window)
    if found.keep is not None:  # padding's outputs are zeros, as FlashAttention's unpadding leaves them
        out = out.new_zeros(batch * length, *out.shape[1:]).index_copy(0, found.keep, out)
    return out.view(batch, length, heads, value.shape[-1]), None


def attend(q, k, v, cu_seqlens, max_length: int, scaling, sliding_window):
    """Causal attention of each sequence (q, k, v: (tokens, heads, dim)) to itself."""
    import torch

    if q.shape[0] == 0:
        return q.new_zeros(0, q.shape[1], v.shape[-1])
    dtype = q.dtype
    if q.is_cuda and dtype == torch.float32 and torch.is_autocast_enabled("cuda"):
        half = torch.get_autocast_dtype("cuda")
        q, k, v = q.to(half), k.to(half), v.to(half)
    if not flash_ready(q):
        return per_sequence(q, k, v, cu_seqlens, scaling, sliding_window).to(dtype)
    v_dim = v.shape[-1]
    if v_dim < q.shape[-1]:  # flash kernels need one head dim: pad values (MLA), crop below
        v = torch.nn.functional.pad(v, [0, q.shape[-1] - v_dim])
    left = sliding_window - 1 if sliding_window and sliding_window < max_length else -1
    if flash_attn_installed():
        from flash_attn import flash_attn_varlen_func

        out = flash_attn_varlen_func(
            q, k, v, cu_seqlens, cu_seqlens, max_length, max_length,
            dropout_p=0.0, softmax_scale=scaling, causal=True, window_size=(left, 0),
        )  # fmt: skip
    else:
        from torch.nn.attention.varlen import varlen_attn

        # a tuple: varlen_attn tells causal from (-1, 0) by equality with a tuple
        out = varlen_attn(
            q, k, v, cu_seqlens, cu_seqlens, max_length, max_length,
            scale=scaling, window_size=(left, 0), enable_gqa=q.shape[1] != k.shape[1],
        )  # fmt: skip
    return out[..., :v_dim].to(dtype)


def flash_ready(q) -> bool:
    """Whether the flash kernels can take `q`: on a CUDA GPU, in 16 bits."""
    import torch

    return q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)


def per_sequence(q, k, v, cu_seqlens, scaling, sliding_window):
    """What `attend` computes, with sdpa one sequence at a time (any device and dtype)."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    groups = q.shape[1] // k.shape[1]
    outs = []
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        qs, ks, vs = (x[start:end].transpose(0, 1) for x in (q, k, v))
        if groups > 1:  # as transformers' repeat_kv: query head h reads key/value head h // groups
            ks, vs = ks.repeat_interleave(groups, 0), vs.repeat_interleave(groups, 0)
        if sliding_window and sliding_window < end - start:
            i = torch.arange(end - start, device=q.device)
            allowed = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < sliding_window)
            out = sdpa(qs, ks, vs, attn_mask=allowed, scale=scaling)
        else:
            out = sdpa(qs, ks, vs, is_causal=True, scale=scaling)
        outs.append(out.transpose(0, 1))
    return torch.cat(outs)


def _dense(query, key, value, attention_mask, scaling, sliding_window):
    """Queries at the end of their keys (a cache holds the earlier ones), masked for padding."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    q_len, kv_len = query.shape[2], key.shape[2]
    i = torch.arange(q_len, device=query.device)[:, None] + (kv_len - q_len)
    j = torch.arange(kv_len, device=query.device)[None, :]
    allowed = j <= i
    if sliding_window:
        allowed = allowed & (i - j < sliding_window)
    allowed = allowed[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, -kv_len:].bool()
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    out = sdpa(query, key, value.to(query.dtype), attn_mask=allowed, scale=scaling)
    return out.transpose(1, 2).contiguous()


# -- what a model needs for it, and when it is chosen ------------------------------------------------
def problems(model) -> list[str]:
    """Why `model` cannot use the kernel: its attention does not go through transformers'
    AttentionInterface, or it asks for what the kernel does not compute."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    found = []
    can_set = getattr(model, "_can_set_attn_implementation", None)
    if can_set is not None and not can_set():
        found.append(f"the {config.model_type} model's attention does not go through transformers' AttentionInterface")
    for name in ("attention_dropout", "attn_pdrop", "attention_probs_dropout_prob"):
        if (getattr(config, name, 0) or 0) > 0:
            found.append(f"it has attention dropout ({name} = {getattr(config, name)}), which varlen_attn cannot do")
    for name in ("attn_logit_softcapping",):
        if getattr(config, name, None):
            found.append(f"it soft-caps attention logits ({name})")
    if not getattr(config, "is_causal", True) or getattr(config, "is_encoder_decoder", False):
        found.append("its attention is not causal decoder attention")
    return found


def choose(
    requested: str | None,
    packing: bool,
    *,
    cuda: bool,
    capability: tuple[int, int] | None,
    compute_dtype: str | None,
    model_problems: list[str],
) -> tuple[str | None, str]:
    """The attention kernel to build with, and why: `requested` where the recipe names one; 'varlen'
    for packed rows where it runs its flash kernel (a CUDA GPU of capability 8.0 or later, a 16-bit
    compute dtype) and the model can take it; else None, transformers' default."""
    if requested is not None:
        return requested, "model.attn_implementation"
    if not packing:
        return None, "no packing: transformers' default"
    if not cuda:
        return None, "packing without a CUDA GPU: transformers' default (block-diagonal mask)"
    if capability is not None and tuple(capability) < MIN_CAPABILITY:
        return None, f"packing on a GPU of capability {capability[0]}.{capability[1]}: no flash kernel below 8.0"
    if compute_dtype not in HALF:
        return None, f"packing in {compute_dtype}: flash kernels compute in bfloat16 or float16 only"
    if model_problems:
        return None, f"packing, but {model_problems[0]}"
    return NAME, "packing on a CUDA GPU in " + compute_dtype


def compute_dtype(model, mixed_precision: str | None, cuda: bool, bf16_supported: bool) -> str:
    """The dtype attention computes in: the trainer's mixed precision (training.mixed_precision; 'auto'
    resolves as plugins/trainers/hf.py does), else the weights' dtype."""
    if mixed_precision == "auto":
        mixed_precision = ("bf16" if bf16_supported else "fp16") if cuda else "no"
    if mixed_precision in ("bf16", "fp16"):
        return {"bf16": "bfloat16", "fp16": "float16"}[mixed_precision]
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    return str(dtype).removeprefix("torch.") if dtype is not None else "float32"


def use_for_packing(model, requested: str | None, mixed_precision: str | None) -> tuple[str | None, str]:
    """Pick the kernel for a packing run's built model (see `choose`), set it on the model if it is
    this one, and say why (runner.pipeline.packing.packing_kernel checks the choice)."""
    import torch

    cuda = torch.cuda.is_available()
    kernel, why = choose(
        requested,
        True,
        cuda=cuda,
        capability=torch.cuda.get_device_capability() if cuda else None,
        compute_dtype=compute_dtype(model, mixed_precision, cuda, cuda and torch.cuda.is_bf16_supported()),
        model_problems=problems(model) if requested is None else [],
    )
    if kernel == NAME and requested is None:
        register()
        model.set_attn_implementation(NAME)
    return kernel, why


def describe(model, mixed_precision: str | None = None) -> dict[str, Any]:
    """The attention kernel a built model runs, as the run records it (and, for 'varlen', which
    computation its calls take on this machine)."""
    config = getattr(model, "config", None)
    kernel = getattr(config, "_attn_implementation", None)
    record: dict[str, Any] = {"attn_implementation": kernel}
    if kernel == NAME:
        import torch

        cuda = torch.cuda.is_available()
        dtype = compute_dtype(model, mixed_precision, cuda, cuda and torch.cuda.is_bf16_supported())
        record["backend"] = backend("cuda" if cuda else "cpu", dtype)
    return record
