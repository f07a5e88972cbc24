"""Helpers shared by model, tokenizer and strategy plugins: heads, pad tokens, parameter counts."""

from __future__ import annotations

from typing import Any

from runner.components.models import HEADS


def auto_class(head: str):
    """The transformers Auto class that builds a model with this head."""
    import transformers

    return getattr(transformers, HEADS[head])


def position_limit(config) -> int | None:
    """The longest sequence a model's position embeddings allow, where its config says
    (`max_position_embeddings`, GPT-2's `n_positions`); None where it says nothing."""
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


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


def match_special_tokens(model, tokenizer) -> None:
    """Give a model built from a config (random init) the tokenizer's bos, eos and pad token ids,
    on its config and generation config: the architecture's defaults (GPT-2's 50256) name tokens a
    trained vocabulary does not have, and would be saved into config.json and generation_config.json
    of base_model/, model/ and merged/ (transformers then warns on every load)."""
    ids = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad")}
    for config in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        if config is not None:
            for key, value in ids.items():
                setattr(config, key, value)


def pools_last_token(model) -> bool:
    """Whether a sequence classifier reads its input's last real token (GPT-2, Llama: a `score`
    head) rather than the first (BERT: a `classifier` head)."""
    return getattr(model, "score", None) is not None


class _LastAttendedPosition:
    """Hooks that make a last-token classifier fed `inputs_embeds` read each row's last attended
    position: the attention mask is kept as the model is called, and the head's per-position
    output at that position is moved to the last position, which transformers then reads."""

    def __init__(self) -> None:
        self.mask = None

    def remember(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        # With input_ids transformers finds the last real token itself (by the pad id).
        self.mask = kwargs.get("attention_mask") if ids is None else None

    def move(self, module, args, output):
        import torch

        mask, self.mask = self.mask, None  # used once: a call without the first hook leaves none
        if mask is None or output.dim() != 3 or tuple(mask.shape) != tuple(output.shape[:2]):
            return None
        width = mask.shape[1]
        last = (width - 1 - mask.flip(1).argmax(1)).to(output.device)  # each row's rightmost attended position
        rows = torch.arange(output.shape[0], device=output.device)
        return torch.cat([output[:, :-1], output[rows, last].unsqueeze(1)], dim=1)


def read_last_real_token(model):
    """Make every last-token sequence classifier inside `model` (GPT-2, Llama: a `score` head)
    classify from each row's last real token, however it is fed; return `model`.

    transformers finds that token by looking for pad ids in `input_ids`. Given `inputs_embeds`
    instead, as peft's prompt tuning and p-tuning give it, it reads the last position: padding,
    for every row shorter than its batch's longest, so predictions would depend on the batch.
    The attention mask says which positions are real in either case. Installing twice is a no-op.
    """
    from transformers import PreTrainedModel

    for module in model.modules():
        installed = getattr(module, "_finetune_pooling", None) is not None
        if isinstance(module, PreTrainedModel) and pools_last_token(module) and not installed:
            hooks = _LastAttendedPosition()
            module.register_forward_pre_hook(hooks.remember, with_kwargs=True)
            module.score.register_forward_hook(hooks.move)
            module._finetune_pooling = hooks
    return model


def count_parameters(model) -> dict[str, int]:
    total = trainable = 0
    seen = set()
    for param in model.parameters():
        if id(param) in seen:  # tied weights count once
            continue
        seen.add(id(param))
        # A 4-bit weight packs two values per element; its quantization state knows the real shape.
        state = getattr(param, "quant_state", None)
        # Under ZeRO-3 a partitioned weight is empty here; DeepSpeed keeps its real size.
        n = state.shape.numel() if state is not None else getattr(param, "ds_numel", param.numel())
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
