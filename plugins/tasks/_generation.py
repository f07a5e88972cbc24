"""Greedy generation in batches, shared by the generating tasks (instruction, seq2seq).

A decoder-only model continues each prompt from its last token, so prompts are padded on the
left: every prompt then ends at the last position and the attention mask hides the padding.
An encoder-decoder model reads the padded prompt with its encoder and starts each answer
afresh, so its prompts are padded on the right, as in training. The padding is built here
from token ids: the tokenizer's own padding side and truncation side are never changed.
Prompts are batched by length (less padding) and answers returned in the prompts' order.
"""

from __future__ import annotations

from runner import position_limit


def greedy(
    model, tokenizer, inputs: list[list[int]], max_new_tokens: int, stop: list[int], batch_size: int = 16
) -> list[str]:
    """Greedy answers to tokenized prompts, decoded without special tokens and cut at the first
    stop token. For a decoder-only model with a position limit, prompt and answer must fit in it
    together: a prompt keeps its last (limit - max_new_tokens) tokens, so that every answer has
    the same room, alone or in a batch."""
    import torch

    decoder_only = not getattr(model.config, "is_encoder_decoder", False)
    pad = tokenizer.pad_token_id
    if pad is None:  # padding is masked out: any id will do
        pad = stop[0] if stop else 0
    limit = position_limit(model.config) if decoder_only else None
    if limit:
        max_new_tokens = min(max_new_tokens, limit - 1)
        inputs = [ids[-(limit - max_new_tokens) :] for ids in inputs]
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    answers: list[str] = [""] * len(inputs)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            longest = max(len(inputs[i]) for i in batch)
            if longest == 0:  # only empty prompts (the batches go by length): nothing to continue
                continue
            ids = torch.full((len(batch), longest), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), longest), dtype=torch.long)
            for row, i in enumerate(batch):
                n = len(inputs[i])
                cols = slice(longest - n, longest) if decoder_only else slice(0, n)
                ids[row, cols] = torch.tensor(inputs[i], dtype=torch.long)
                mask[row, cols] = 1
            with torch.no_grad():
                generated = model.generate(
                    input_ids=ids.to(model.device),
                    attention_mask=mask.to(model.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    eos_token_id=stop or None,
                    pad_token_id=pad,
                )
            # A decoder-only output repeats the prompt; an encoder-decoder one starts with the
            # decoder start token.
            new = generated[:, longest:] if decoder_only else generated[:, 1:]
            for row, i in enumerate(batch):
                tokens = new[row].tolist()
                end = next((k for k, token in enumerate(tokens) if token in stop), len(tokens))
                answers[i] = tokenizer.decode(tokens[:end], skip_special_tokens=True).strip()
    finally:
        model.train(was_training)
    return answers
