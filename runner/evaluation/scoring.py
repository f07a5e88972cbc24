"""Scoring raw texts with a language model: the log-likelihood audits compare (bias, forgetting)."""

from __future__ import annotations

from runner.errors import FinetuneError


def log_likelihoods(model, tokenizer, texts: list[str], max_length: int, batch: int = 16) -> list[tuple[float, int]]:
    """Per text: (sum of log p(token | earlier tokens), number of tokens predicted).

    Each text is tokenized alone (special tokens as the tokenizer adds them) and cut at
    `max_length`; its first token is not predicted. Padding is masked by the attention mask."""
    import torch

    from runner.toolkit.collate import PadCollator
    from runner.toolkit.modeling import token_losses

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if base.get_output_embeddings() is None or base.config.is_encoder_decoder:
        raise FinetuneError(f"{type(base).__name__} is not a causal language model: it gives texts no likelihood")
    model.eval()
    # The labels are the inputs, padded with -100: padding is masked, never scored.
    collate = PadCollator(tokenizer.pad_token_id or 0, sequence_labels=True)
    out: list[tuple[float, int]] = []
    for start in range(0, len(texts), batch):
        rows = []
        for text in texts[start : start + batch]:
            ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
            rows.append({"input_ids": ids, "labels": ids})
        inputs = {k: v.to(model.device) for k, v in collate(rows).items()}
        with torch.no_grad():
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        out.extend((-loss_sum, int(count)) for loss_sum, count in token_losses(logits, inputs["labels"]).tolist())
    return out
