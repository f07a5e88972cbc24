"""Task `causal_lm`: language modelling on raw text (domain adaptation).

Each text becomes one row, truncated to max_length, with EOS appended and supervised; batches are
padded dynamically and padding is masked by position (never by token id, so EOS stays supervised
even when the tokenizer pads with EOS). `mode = "chunk"` instead concatenates the texts, separated
by EOS, into full rows of max_length tokens: no padding at all, the standard for continued
pre-training on long documents, but a row's tokens attend across the document boundary.

Evaluation reports token-level perplexity exactly: the sum of token losses over the number of
predicted tokens, not the mean of batch means.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from runner import ModelSpec, Options, PackedCollator, PadCollator, Task, hookimpl, token_losses


class CausalLMOptions(Options):
    mode: Literal["sample", "chunk"] = Field(
        default="sample",
        description="'sample': one text per row, padded per batch; 'chunk': texts joined into full rows.",
    )
    add_eos: bool = Field(default=True, description="End every text with the EOS token, supervised.")
    packing: bool = Field(
        default=False,
        description="With mode = 'sample': pack several texts into each row of max_length tokens, kept apart.",
    )
    sample_prompts: list[str] = Field(
        default_factory=list, description="Texts continued after training; written to samples.jsonl."
    )
    max_new_tokens: int = Field(default=40, gt=0, description="Longest generated continuation (samples, predict).")

    @model_validator(mode="after")
    def _packing_needs_samples(self):
        if self.packing and self.mode == "chunk":
            raise ValueError("packing applies to mode = 'sample'; 'chunk' rows are full already")
        return self


class CausalLM(Task):
    """Causal language modelling on raw text; reports perplexity."""

    name = "causal_lm"
    Options = CausalLMOptions
    produces = "tokens"
    head = "causal_lm"
    columns = ("text",)
    default_metrics = ({"type": "perplexity"},)

    def model_spec(self, tokenizer, max_length: int) -> ModelSpec:
        return ModelSpec(
            head=self.head,
            vocab_size=len(tokenizer),
            max_length=max_length,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )

    def encode(self, dataset, tokenizer, max_length: int):
        eos = [tokenizer.eos_token_id] if self.options.add_eos and tokenizer.eos_token_id is not None else []
        if self.options.mode == "sample":

            def fn(batch):
                ids = tokenizer(batch["text"], add_special_tokens=True)["input_ids"]
                ids = [(row + eos)[:max_length] for row in ids]
                return {"input_ids": ids, "labels": ids, "length": [len(r) for r in ids]}

        else:
            carry: list[int] = []

            def fn(batch):
                nonlocal carry
                stream = carry
                for row in tokenizer(batch["text"], add_special_tokens=True)["input_ids"]:
                    stream = stream + row + eos
                full = len(stream) // max_length * max_length
                rows = [stream[i : i + max_length] for i in range(0, full, max_length)]
                carry = stream[full:]
                return {"input_ids": rows, "labels": rows, "length": [max_length] * len(rows)}

        encoded = dataset.map(fn, batched=True, remove_columns=dataset.column_names, desc="tokenizing")
        return encoded.filter(lambda row: row["length"] > 1, desc="dropping empty rows")

    def collator(self, tokenizer, pad_to: int | None):
        if self.options.packing:
            return PackedCollator(tokenizer.pad_token_id)
        return PadCollator(tokenizer.pad_token_id, pad_to=pad_to, sequence_labels=True)

    def preprocess_logits(self, logits, labels):
        return token_losses(logits, labels)

    def metric_inputs(self, predictions, label_ids):
        import numpy as np

        values = np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)
        return values[:, 0], values[:, 1]

    def predict(self, model, tokenizer, texts, max_length, max_new_tokens: int | None = None):
        import torch

        model.eval()
        out = []
        for text in texts:
            enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length).to(model.device)
            with torch.no_grad():
                generated = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens or self.options.max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = generated[0, enc["input_ids"].shape[1] :]
            out.append({"prompt": text, "completion": tokenizer.decode(new, skip_special_tokens=True)})
        return out

    def samples(self, model, tokenizer, max_length) -> list[dict]:
        prompts = self.options.sample_prompts
        return self.predict(model, tokenizer, prompts, max_length) if prompts else []


@hookimpl
def register_tasks(register):
    register(CausalLM)
