"""Helpers shared by model, tokenizer and strategy plugins: heads, pad tokens, parameter counts."""

from __future__ import annotations

from typing import Any

HEADS = {
    "sequence_classification": "AutoModelForSequenceClassification",
    "causal_lm": "AutoModelForCausalLM",
    "token_classification": "AutoModelForTokenClassification",
    "seq2seq_lm": "AutoModelForSeq2SeqLM",
}


def auto_class(head: str):
    """The transformers Auto class that builds a model with this head."""
    import transformers

    return getattr(transformers, HEADS[head])


def ensure_pad_token(tokenizer) -> str | None:
    """Give a tokenizer without a pad token (GPT-2) one; return a note saying what was done.

    Reusing EOS as padding adds no new embedding. Tasks that supervise EOS must therefore mask
    padding by the attention mask, never by token id, or the model never learns to stop.
    """
    if tokenizer.pad_token is not None:
        return None
    if tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        return f"the tokenizer has no pad token: using its EOS token {tokenizer.eos_token!r} for padding"
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    return "the tokenizer has no pad or EOS token: added a new [PAD] token"


def pools_last_token(model) -> bool:
    """Whether a sequence classifier reads its input's last real token (GPT-2, Llama: a `score`
    head) rather than the first (BERT: a `classifier` head)."""
    return getattr(model, "score", None) is not None


def count_parameters(model) -> dict[str, int]:
    total = trainable = 0
    seen = set()
    for param in model.parameters():
        if id(param) in seen:  # tied weights count once
            continue
        seen.add(id(param))
        n = param.numel()
        total += n
        if param.requires_grad:
            trainable += n
    return {"total": total, "trainable": trainable}


def describe_parameters(counts: dict[str, Any]) -> str:
    total, trainable = counts["total"], counts["trainable"]
    share = 100.0 * trainable / total if total else 0.0
    return f"{trainable:,} trainable of {total:,} parameters ({share:.2f}%)"


def device_summary() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"cuda": torch.cuda.is_available(), "threads": torch.get_num_threads()}
    if info["cuda"]:
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["bf16"] = torch.cuda.is_bf16_supported()
    return info


def token_losses(logits, labels, shift: bool = True):
    """Per row: (summed token loss, number of predicted tokens), two numbers instead of a
    vocabulary of logits. Perplexity over a corpus is exp(sum of the first / sum of the second).
    `shift`: position i predicts label i+1 (decoders); False: label i (encoder-decoder outputs)."""
    import torch

    logits = logits[0] if isinstance(logits, tuple) else logits
    shift_logits = logits[:, :-1, :].float() if shift else logits.float()
    shift_labels = labels[:, 1:] if shift else labels
    losses = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=-100, reduction="none"
    ).view(shift_labels.shape)
    counts = (shift_labels != -100).sum(-1)
    return torch.stack([losses.sum(-1), counts.float()], dim=-1)
