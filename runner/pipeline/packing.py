"""Packing: several samples in one row of at most max_length tokens, kept apart.

Samples are placed best-fit-decreasing (longest first, each into the row with the least room that
still fits it), so rows come out nearly full. The first label of every sample is masked, so no
sample is trained to predict the start of the next.

Keeping the samples apart is the model's part. PackedCollator sends position ids that restart at
every sample and no attention mask. From those position ids transformers builds a block-diagonal
causal mask for the 'eager', 'sdpa' and 'flex_attention' kernels, and the runner's 'varlen' kernel
(runner.toolkit.varlen_attention, chosen for packed rows on a CUDA GPU) derives the cumulative
sequence lengths (cu_seqlens) of one variable-length flash call: no token attends to another
sample, and a sample's loss inside a packed row equals its loss alone
(tests/test_packing_kernels.py, tests/test_varlen_attention.py). transformers' 'flash_attention_2'
reads cu_seqlens from the position ids only for a batch of one row, and attends across the samples
of several: validation refuses it with packing. Not every architecture's modeling code does this (MIXES_PACKED in
runner.recipe.combinations: a mask built without the position ids, bidirectional attention, a
recurrent state), nor do peft's virtual tokens (put once in front of each row). Packing that would
mix samples is refused, never done silently:

- at validation (runner.recipe.combinations): a `config` model whose architecture is in
  MIXES_PACKED, and a strategy that adds virtual tokens;
- when the model is built (`check_packing`, before and after the strategy is applied): any model on which
  `mixing` finds one packed sample changing the other's outputs, whatever its architecture,
  kernel, dtype, quantization or strategy, pretrained ones included.

('flex_attention' keeps packed samples apart on a CPU too, but cannot train there: PyTorch has no
FlexAttention backward on a CPU, which runner.pipeline.steps refuses before the model is built.)
"""

from __future__ import annotations

import bisect
from types import SimpleNamespace

from runner.errors import FinetuneError


def best_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of total length <= capacity, best-fit decreasing."""
    bins: list[list[int]] = []
    room: dict[int, list[int]] = {}  # free space -> bins with exactly that much
    free: list[int] = []  # the distinct free spaces, sorted
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        size = min(lengths[index], capacity)
        at = bisect.bisect_left(free, size)
        if at < len(free):
            space = free[at]
            target = room[space].pop()
            if not room[space]:
                del room[space]
                free.pop(at)
        else:
            space, target = capacity, len(bins)
            bins.append([])
        bins[target].append(index)
        left = space - size
        if left not in room:
            room[left] = []
            bisect.insort(free, left)
        room[left].append(target)
    return bins


def pack(dataset, max_length: int):
    """Pack an encoded causal-LM dataset (input_ids, labels) into rows with position_ids."""
    from datasets import Dataset

    lengths = list(dataset["length"])
    rows = {"input_ids": [], "labels": [], "position_ids": [], "length": []}
    ids_column, labels_column = dataset["input_ids"], dataset["labels"]
    for group in best_fit(lengths, max_length):
        ids, labels, positions = [], [], []
        for index in sorted(group):  # keep the samples' original order within a row
            sample_ids = list(ids_column[index])[:max_length]
            ids += sample_ids
            labels += [-100, *list(labels_column[index])[1 : len(sample_ids)]]
            positions += range(len(sample_ids))
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
        rows["position_ids"].append(positions)
        rows["length"].append(len(ids))
    return Dataset.from_dict(rows)


# -- build time -------------------------------------------------------------------------------------
FIRST, SECOND = 7, 5  # lengths of the probe's two samples


def mixing(model, seed: int = 0) -> float:
    """How far one sample of a packed row moves the other's outputs: the largest change of a
    log-probability (in nats) of one sample's tokens when the other sample in its row is replaced.

    Three rows of two samples go through PackedCollator in one forward pass, in eval mode and
    without gradients: (a, b), (a', b) and (a, b'), random token ids of the model's vocabulary
    from a generator of their own (the global RNG is untouched). Where samples are kept apart, the
    other sample enters only as attention scores the mask sets to minus infinity, whose weights are
    exactly 0: the result is 0 in any dtype (measured, for every kernel that runs on CPU). The
    model is put back into the mode it was in.
    """
    import torch

    from runner.toolkit.collate import PackedCollator

    vocab, device = _vocabulary_and_device(model)
    generator = torch.Generator().manual_seed(seed)

    def sample(length: int) -> list[int]:
        return torch.randint(min(3, vocab - 1), vocab, (length,), generator=generator).tolist()

    a, a2, b, b2 = sample(FIRST), sample(FIRST), sample(SECOND), sample(SECOND)
    positions = [*range(FIRST), *range(SECOND)]
    rows = [{"input_ids": x + y, "labels": x + y, "position_ids": positions} for x, y in ((a, b), (a2, b), (a, b2))]
    batch = PackedCollator(pad_token_id=0)(rows)
    del batch["labels"]  # no loss needed
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(**batch).logits
    finally:
        model.train(training)
    # prompt methods put their virtual tokens' outputs first
    logprobs = torch.log_softmax(logits[:, -(FIRST + SECOND) :].float(), dim=-1)
    second = (logprobs[0, FIRST:] - logprobs[1, FIRST:]).abs().max()
    first = (logprobs[0, :FIRST] - logprobs[2, :FIRST]).abs().max()
    return float(torch.maximum(first, second))


def _vocabulary_and_device(model) -> tuple[int, object]:
    """How many token ids the model embeds, and where its inputs go."""
    try:
        weight = model.get_input_embeddings().weight
        if weight.shape[0] > 0:
            return weight.shape[0], weight.device
    except (AttributeError, NotImplementedError):
        pass
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return config.vocab_size, next(model.parameters()).device


def tolerance(model) -> float:
    """The largest `mixing` taken for samples kept apart: 4 epsilons of the least precise dtype the
    model computes in, at least 1e-3 (float32 1e-3, float16 0.0039, bfloat16 0.031); 0.1 for
    LLM.int8 weights.

    Kept apart, `mixing` is exactly 0 in every dtype: measured on CPU for 111 architectures with
    eager and sdpa attention (7 of them with flex_attention too). The allowance is for arithmetic
    whose rounding may depend on the other tokens of a batch on other hardware: TF32 matmuls, MoE
    experts multiplying a different number of tokens, and LLM.int8 (bitsandbytes 8 bits), which
    keeps in float16 the input columns where any token of the batch passes its outlier threshold,
    so the other sample can decide which of one's columns are rounded to int8, by up to 1/127 of a
    row's largest value: hence its larger allowance (an estimate; it needs a GPU to measure).
    Mixing, on tiny random models, moved log-probabilities by 0.002 to 3 nats for most mixing
    architectures (0.07 for a 2-layer OPT of hidden size 32, in every dtype), and by 1e-4 to 1e-3
    for a few encoder-decoder ones (marian, pegasus), which only the recipe-time table catches at
    that size; trained models, whose predictions depend on their context, mix far more visibly.
    """
    import torch

    quantization = getattr(getattr(model, "config", None), "quantization_config", None)
    if isinstance(quantization, dict):
        quantization = SimpleNamespace(**quantization)
    if getattr(quantization, "load_in_8bit", False):
        return 0.1
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    four_bit = getattr(quantization, "load_in_4bit", False)
    compute = getattr(quantization, "bnb_4bit_compute_dtype", None) if four_bit else None
    if isinstance(compute, str):
        compute = getattr(torch, compute, None)
    if isinstance(compute, torch.dtype):
        dtypes.add(compute)
    eps = max((torch.finfo(d).eps for d in dtypes), default=torch.finfo(torch.float32).eps)
    return max(1e-3, 4 * eps)


def packing_kernel(model, requested: str | None, mixed_precision: str | None, info=print) -> str | None:
    """The attention kernel a packing run trains with: the recipe's, else 'varlen' where it runs its
    flash kernel (runner.toolkit.varlen_attention.choose), set on the model; else None, transformers'
    default. A 'varlen' chosen here that lets the probe's samples mix (a model whose attention never
    sees the position ids) is taken back: the default then keeps them apart, as before."""
    from runner.toolkit import varlen_attention

    previous = getattr(model.config, "_attn_implementation", None)
    kernel, why = varlen_attention.use_for_packing(model, requested, mixed_precision)
    if requested is not None or kernel != varlen_attention.NAME:
        return requested
    try:
        apart = mixing(model) <= tolerance(model)
    except Exception:  # any failure means: not this kernel
        apart = False
    if not apart:
        model.set_attn_implementation(previous)
        info(f"attention: '{previous}' for packed rows ('{kernel}' lets this model's packed samples mix)")
        return None
    backend = varlen_attention.describe(model, mixed_precision)["backend"]
    info(f"attention: '{kernel}' for packed rows ({why}; {backend})")
    return kernel


def check_packing(model, kernel: str | None = None) -> float:
    """Refuse a packing run whose model lets packed samples mix (see `mixing`); return the measure."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None) or type(model).__name__
    kernel = getattr(config, "_attn_implementation", None) or kernel or "default"
    prompt = getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False)
    hint = "set task.packing = false" + (
        " (this strategy's virtual tokens cannot be packed)" if prompt else ", or use another attn_implementation"
    )
    try:
        difference = mixing(model)
    except Exception as exc:  # a model that cannot take a packed row at all
        raise FinetuneError(
            f"task.packing: the {model_type} model with '{kernel}' attention fails on a packed row: "
            f"{type(exc).__name__}: {str(exc)[:300]}",
            hint=hint,
        ) from exc
    allowed = tolerance(model)
    if difference > allowed:
        raise FinetuneError(
            f"task.packing would mix samples: with the {model_type} model and '{kernel}' attention, a packed "
            f"sample's log-probabilities change by up to {difference:.3g} (tolerance {allowed:.3g}) when the other "
            "sample in its row changes",
            hint=hint,
        )
    return difference
