"""Task `seq2seq`: encoder-decoder models (T5-style) that read a source text and write a target.

Rows are instructions with responses (`format = "alpaca"`: instruction, input, output) or plain
pairs (`format = "pairs"`: source, target). The encoder reads the source (after an optional T5-style
`prefix`); the decoder is trained on the target and its EOS, so it learns to stop. Evaluation
reports the target tokens' perplexity; `finetune generate` writes targets for new sources.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from runner import DataError, ModelSpec, Options, Task, hookimpl
from runner.collate import PadCollator
from runner.modeling import token_losses


class Seq2SeqOptions(Options):
    format: Literal["alpaca", "pairs"] = Field(
        default="alpaca", description="'alpaca': instruction, input, output columns; 'pairs': source, target."
    )
    prefix: str = Field(default="", description="Text put before every source, e.g. 'summarize: ' (T5 style).")
    max_target_length: int | None = Field(default=None, gt=0, description="Cut targets here (default: max_length).")
    sample_prompts: list[str] = Field(default_factory=list, description="Sources answered after training.")
    max_new_tokens: int = Field(default=64, gt=0, description="Longest generated target (samples, generate).")


class Seq2Seq(Task):
    """Sequence to sequence (T5-style encoder-decoder): source text in, target text out."""

    name = "seq2seq"
    Options = Seq2SeqOptions
    produces = "tokens"
    default_metrics = ({"type": "perplexity"},)

    @property
    def columns(self):
        return ("source", "target") if self.options.format == "pairs" else ("instruction", "output")

    @property
    def optional_columns(self):
        return () if self.options.format == "pairs" else ("input",)

    def source(self, row: dict) -> str:
        if self.options.format == "pairs":
            text = row["source"]
        else:
            text = row["instruction"] + (f"\n{row['input']}" if row.get("input") else "")
        return self.options.prefix + text

    def target(self, row: dict) -> str:
        return row["target"] if self.options.format == "pairs" else row["output"]

    def fit(self, splits) -> None:
        for raws in splits.values():
            for raw in raws:
                for i, row in enumerate(raw.dataset):
                    for column in self.columns:
                        if not isinstance(row.get(column), str) or not row[column].strip():
                            raise DataError(f"{raw.where(i)}: '{column}' is empty")

    def training_texts(self, dataset):
        for row in dataset:
            yield self.source(row)
            yield self.target(row)

    def model_spec(self, tokenizer, max_length: int) -> ModelSpec:
        return ModelSpec(
            head="seq2seq_lm",
            vocab_size=len(tokenizer),
            max_length=max_length,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,  # the T5 convention
        )

    def _with_eos(self, ids: list[int], tokenizer, limit: int) -> list[int]:
        eos = tokenizer.eos_token_id
        ids = ids if ids and ids[-1] == eos else [*ids, eos]
        return ids[: limit - 1] + [eos] if len(ids) > limit else ids

    def encode(self, dataset, tokenizer, max_length: int):
        target_limit = self.options.max_target_length or max_length

        def fn(batch):
            rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
            enc = tokenizer([self.source(r) for r in rows], truncation=True, max_length=max_length)
            targets = tokenizer([self.target(r) for r in rows], add_special_tokens=True)["input_ids"]
            enc["labels"] = [self._with_eos(t, tokenizer, target_limit) for t in targets]
            enc["length"] = [len(ids) for ids in enc["input_ids"]]
            return enc

        return dataset.map(fn, batched=True, remove_columns=dataset.column_names, desc="tokenizing")

    def collator(self, tokenizer, pad_to: int | None):
        return PadCollator(tokenizer.pad_token_id, pad_to=pad_to, sequence_labels=True, side=tokenizer.padding_side)

    def preprocess_logits(self, logits, labels):
        return token_losses(logits, labels, shift=False)

    def metric_inputs(self, predictions, label_ids):
        import numpy as np

        values = np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)
        return values[:, 0], values[:, 1]

    def predict(self, model, tokenizer, texts, max_length, max_new_tokens: int | None = None):
        import torch

        model.eval()
        out = []
        for text in texts:
            source = self.options.prefix + text
            enc = tokenizer(source, return_tensors="pt", truncation=True, max_length=max_length).to(model.device)
            with torch.no_grad():
                generated = model.generate(
                    **enc, max_new_tokens=max_new_tokens or self.options.max_new_tokens, do_sample=False
                )
            out.append({"prompt": text, "response": tokenizer.decode(generated[0], skip_special_tokens=True).strip()})
        return out

    def samples(self, model, tokenizer, max_length) -> list[dict]:
        prompts = self.options.sample_prompts
        return self.predict(model, tokenizer, prompts, max_length) if prompts else []

    def state(self) -> dict[str, Any]:
        return {"format": self.options.format, "prefix": self.options.prefix}


@hookimpl
def register_tasks(register):
    register(Seq2Seq)
