"""Trainer `hf`'s causal-LM loss without the batch x sequence x vocabulary logits (`training.loss`).

The plain path has the model compute every position's logits, and transformers' loss upcasts them
to fp32: 4 bytes per token and vocabulary entry for the log-probabilities and 4 more for their
gradient, alive together with every layer's activations (2 GiB a 4k-token micro-batch at
Llama-3's 128k vocabulary). Here the model returns its final hidden states instead, and:

- "chunked" (plain torch, any device): the shifted cross-entropy of the scored tokens only
  (labels -100 cost nothing), a chunk of tokens at a time through the model's own output layer.
  Each chunk runs under `torch.utils.checkpoint`, so its logits are dropped after the forward
  pass and recomputed in backward: only one chunk's logits exist at once. Calling the output
  layer (not reading its `.weight`) keeps LoRA on it, peft's modules_to_save copies, tied
  embeddings and autocast working as in the plain path. torchtune's chunked output and TRL's
  chunked entropy split the same way; the chunk size is Liger Kernel's rule (below).
- "liger": Liger Kernel's `LigerFusedLinearCrossEntropyLoss` (Triton, CUDA), which computes the
  gradients chunk by chunk in its forward pass; it reads the output layer's weight, so it serves a
  plain `nn.Linear` head only.

Both keep transformers' token weighting exactly: with `num_items_in_batch` (the tokens scored in
the whole optimizer step, over every micro-batch and process) the sum divided by it, else the mean
over this micro-batch's scored tokens; the trainer then scales as it does for a model's own loss.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from dataclasses import dataclass

LOSSES = ("auto", "plain", "chunked", "liger")
IGNORE = -100  # transformers' ignore_index

# Causal LMs whose forward is exactly `logits = output_embeddings(final hidden state)`, nothing
# after (Gemma 2/3 soft-cap their logits, Cohere and Granite scale them, MoE models add a router
# loss): read in their transformers modeling code, and their final hidden state is the last entry
# of `hidden_states` (transformers' `capture_outputs` ties it to the normed `last_hidden_state`).
LINEAR_HEADS = frozenset(
    {
        "gpt2", "gpt_neox", "gptj", "gpt_bigcode", "llama", "mistral", "qwen2", "qwen3", "phi", "phi3",
        "olmo", "olmo2", "gemma", "starcoder2", "stablelm", "smollm3", "opt",
    }
)  # fmt: skip

# "auto" chunks from this vocabulary up: the fp32 logits and their gradient (8 bytes a token and
# entry, 256 KiB a token here) then outweigh what a transformer layer of the hidden sizes such
# vocabularies come with keeps per token, and every current LLM tokenizer is above it (Llama 2:
# 32,000; Mistral: 32,768; GPT-2: 50,257; Llama 3: 128,256; Qwen: 151,936). Below it the logits
# are small beside the activations, and the extra forward of the output layer that chunking costs
# (about a third of the head's work) buys little.
AUTO_MIN_VOCAB = 32_000


@dataclass(frozen=True)
class LossChoice:
    """The loss a run computes, and why (recorded in environment.json and shown by `plan`)."""

    name: str  # "plain" | "chunked" | "liger"
    why: str

    def describe(self) -> str:
        return f"{LABELS[self.name]} ({self.why})"


LABELS = {
    "plain": "plain: the model's own cross-entropy over all the logits",
    "chunked": "chunked cross-entropy: the logits of a chunk of tokens at a time",
    "liger": "liger: Liger Kernel's fused linear cross-entropy",
}


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def _base(model):
    """The transformers model inside peft's wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _prompt_learning(model) -> bool:
    """peft's virtual-token adapters (prompt, prefix, p-tuning) add positions the labels lack."""
    configs = getattr(model, "peft_config", None) or {}
    return any(getattr(c, "is_prompt_learning", False) for c in configs.values())


def _linear_head(head) -> bool:
    import torch

    return type(head) is torch.nn.Linear  # not a peft wrapper around one


def unsupported(model) -> str | None:
    """Why a chunked loss cannot be computed from this model's hidden states (None when it can)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    base = _base(model)
    if type(base).__name__ not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        return f"{type(base).__name__} is not a causal language model"
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    if model_type not in LINEAR_HEADS:
        return f"the {model_type} architecture is not known to compute its logits as output layer(hidden states)"
    if not hasattr(base, "get_output_embeddings") or base.get_output_embeddings() is None:
        return "the model has no output layer"
    if _prompt_learning(model):
        return "virtual-token adapters add positions the labels do not have"
    return None


def choose(requested: str, model, *, cuda: bool, zero_stage: int) -> LossChoice:
    """The loss `training.loss = requested` computes for this model on this machine.

    "auto": Liger's kernel on CUDA where it is installed and applies, else the chunked loss for a
    causal LM whose vocabulary reaches AUTO_MIN_VOCAB, else plain. An explicit "chunked" or
    "liger" that cannot apply is a FinetuneError (a recipe error), never a silent change."""
    from runner import FinetuneError

    if requested == "plain":
        return LossChoice("plain", "as set")
    why_not = unsupported(model)
    if why_not is not None:
        if requested == "auto":
            return LossChoice("plain", why_not)
        raise FinetuneError(
            f"training.loss = '{requested}' cannot be used here: {why_not}", hint="use 'auto' or 'plain'"
        )
    if zero_stage == 3 and requested != "liger":
        # ZeRO-3 gathers the output layer's weights at each of its calls, a collective every process must
        # join; the chunks follow each process's own count of scored tokens, so the calls would differ in
        # number and the processes wait for one another for ever (seen with packed rows).
        why = "ZeRO-3 gathers the output layer at each call, and each process would call it a different number of times"
        if requested == "auto":
            return LossChoice("plain", f"auto: {why}")
        raise FinetuneError(f"training.loss = 'chunked' cannot be used here: {why}", hint="use 'auto' or 'plain'")
    head = _base(model).get_output_embeddings()
    liger_why = _liger_unusable(head, cuda, zero_stage)
    if requested == "liger":
        if liger_why:
            raise FinetuneError(f"training.loss = 'liger' cannot be used here: {liger_why}", hint="use 'chunked'")
        return LossChoice("liger", "as set: Liger Kernel's fused linear cross-entropy")
    if requested == "chunked":
        return LossChoice("chunked", "as set")
    if not liger_why:
        return LossChoice("liger", "auto: Liger Kernel is installed and the head is a plain linear layer on CUDA")
    vocab = vocabulary(head)
    if vocab < AUTO_MIN_VOCAB:
        return LossChoice("plain", f"auto: a vocabulary of {vocab:,} (< {AUTO_MIN_VOCAB:,}) keeps small logits")
    return LossChoice("chunked", f"auto: a vocabulary of {vocab:,} entries")


def _liger_unusable(head, cuda: bool, zero_stage: int) -> str | None:
    if not liger_installed():
        return "the liger-kernel package is not installed (pip install liger-kernel; it needs Triton and CUDA)"
    if not cuda:
        return "Liger Kernel's Triton kernels need a CUDA GPU"
    if not _linear_head(head):
        return "the output layer is wrapped (an adapter on it), and Liger reads a plain layer's weight"
    if zero_stage == 3:
        # The chunked loss calls the layer, whose hooks gather it (checked: equal to the plain loss
        # on 2 processes, every weight partitioned); Liger reads the weight, empty outside a gather.
        return "under ZeRO-3 the output layer's weight is partitioned, and Liger reads it whole"
    return None


def vocabulary(head) -> int:
    """The output layer's width; under ZeRO-3 its weight is partitioned (empty outside a gather), and
    DeepSpeed keeps the whole shape in `ds_shape`."""
    weight = head.weight
    return int((getattr(weight, "ds_shape", None) or weight.shape)[0])


def chunk_tokens(tokens: int, vocab: int, hidden: int) -> int:
    """Tokens per chunk, Liger Kernel's rule: chunks whose logits hold about as many elements as the
    hidden states of all `tokens` (V/H chunks), rounded up to a power of two."""
    chunks = max(1, math.ceil(vocab / max(1, hidden)))
    return 1 << max(0, math.ceil(math.log2(max(1, math.ceil(tokens / chunks)))))


def _shifted(labels):
    """The label each position predicts (the next token's), -100 after the last: as transformers'
    ForCausalLMLoss shifts them; a packed row's first label is -100, so no sample predicts the next."""
    import torch.nn.functional as F

    return F.pad(labels, (0, 1), value=IGNORE)[..., 1:].reshape(-1)


def chunked_cross_entropy(head, hidden, labels, num_items_in_batch=None, chunk: int | None = None):
    """transformers' causal-LM loss of `head(hidden)` against `labels`, one chunk of scored tokens at
    a time, each chunk's logits recomputed in backward (see the module docstring)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    targets = _shifted(labels).to(hidden.device)
    scored = (targets != IGNORE).nonzero().squeeze(1)
    states = hidden.reshape(-1, hidden.shape[-1]).index_select(0, scored)
    targets = targets.index_select(0, scored)

    def chunk_loss(x, y):
        return F.cross_entropy(head(x).float(), y, reduction="sum")

    size = chunk or chunk_tokens(len(scored), vocabulary(head), hidden.shape[-1])
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, len(scored), size):
        x, y = states[start : start + size], targets[start : start + size]
        # No RNG state to keep: an output layer draws no random numbers.
        total = total + checkpoint(chunk_loss, x, y, use_reentrant=False, preserve_rng_state=False)
    return _reduced(total, len(scored), num_items_in_batch)


def _reduced(total, scored: int, num_items_in_batch):
    import torch

    if num_items_in_batch is None:
        return total / scored  # no scored token: 0/0 = nan, as transformers' mean gives
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def liger_cross_entropy(head, hidden, labels, num_items_in_batch=None):
    """The same loss through Liger Kernel's fused linear cross-entropy (CUDA)."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    targets = _shifted(labels).to(hidden.device)
    scored = int((targets != IGNORE).sum())
    loss = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE, reduction="sum")
    total = loss(head.weight, hidden.reshape(-1, hidden.shape[-1]), targets, head.bias).float()
    return _reduced(total, scored, num_items_in_batch)


def _takes(model, name: str) -> bool:
    try:
        return name in inspect.signature(_base(model).forward).parameters
    except (TypeError, ValueError):
        return False


def fused_loss(trainer, model, inputs: dict, num_items_in_batch, choice: LossChoice):
    """`Trainer.compute_loss` for a training step with `choice` "chunked" or "liger": the model's
    final hidden states (its logits computed for one position only, where it can), then the loss,
    scaled as transformers' `compute_loss` scales a model's own loss."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    unwrapped = trainer.model  # peft's or transformers' model; `model` may be DDP's or compile's wrapper
    extra = {"output_hidden_states": True}
    if _takes(unwrapped, "logits_to_keep"):
        extra["logits_to_keep"] = 1  # the plain logits of the last position only: nothing to keep
    outputs = model(**inputs, **extra)
    hidden = outputs.hidden_states[-1]
    if hidden.shape[:2] != labels.shape[:2]:
        raise RuntimeError(f"final hidden states {tuple(hidden.shape)} do not match labels {tuple(labels.shape)}")
    head = _base(unwrapped).get_output_embeddings()
    # transformers hands num_items_in_batch to the model only where it takes loss kwargs; otherwise
    # the model's loss is a mean and the trainer divides by the accumulation steps itself.
    items = num_items_in_batch if trainer.model_accepts_loss_kwargs else None
    compute = liger_cross_entropy if choice.name == "liger" else chunked_cross_entropy
    # accelerate autocasts the model's forward only (mixed precision without DeepSpeed): the output
    # layer runs in the same precision as it does inside the model's forward in the plain path.
    with trainer.accelerator.autocast():
        loss = compute(head, hidden, labels, items)
    args = trainer.args
    if args.average_tokens_across_devices and trainer.model_accepts_loss_kwargs and num_items_in_batch is not None:
        scale = trainer.accelerator.num_processes // trainer.get_tp_size()
        loss = loss * (scale if args.n_gpu <= 1 else args.n_gpu)
    return loss
