"""Scoring raw texts with a language model: the log-likelihood audits compare (bias, forgetting)."""

from __future__ import annotations

from runner.errors import FinetuneError


def log_likelihoods(model, tokenizer, texts: list[str], max_length: int, batch: int = 16) -> list[tuple[float, int]]:
    """Per text: (sum of log p(token | earlier tokens), number of tokens predicted).

    Each text is tokenized alone (special tokens as the tokenizer adds them) and cut at
    `max_length`; its first token is not predicted. Padding is masked by the attention mask."""
    import torch

    from runner.modeling import token_losses

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if base.get_output_embeddings() is None or base.config.is_encoder_decoder:
        raise FinetuneError(f"{type(base).__name__} is not a causal language model: it gives texts no likelihood")
    model.eval()
    out: list[tuple[float, int]] = []
    for start in range(0, len(texts), batch):
        enc = [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts[start : start + batch]]
        width = max(len(ids) for ids in enc)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([row + [pad] * (width - len(row)) for row in enc], device=model.device)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in enc], device=model.device)
        labels = ids.masked_fill(mask == 0, -100)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        for loss_sum, count in token_losses(logits, labels).tolist():
            out.append((-loss_sum, int(count)))
    return out
