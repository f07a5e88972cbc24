"""Task `seq2seq`: encoder-decoder models (T5-style) that read a source text and write a target.

Rows are instructions with responses (`format = "alpaca"`: instruction, input, output) or plain
pairs (`format = "pairs"`: source, target). The encoder reads the source (after an optional T5-style
`prefix`); the decoder is trained on the target and its EOS, so it learns to stop. Evaluation
reports the target tokens' perplexity; `finetune generate` writes targets for new sources.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from runner import DataError, ModelSpec, Options, PadCollator, Task, hookimpl, token_losses


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
    head = "seq2seq_lm"
    generates = True
    default_metrics = ({"type": "perplexity"}, {"type": "exact_match"}, {"type": "bleu"}, {"type": "rouge"})

    @property
    def columns(self):
        return ("source", "target") if self.options.format == "pairs" else ("instruction", "output")

    @property
    def optional_columns(self):
        return () if self.options.format == "pairs" else ("input",)

    @staticmethod
    def _pair(row: dict) -> tuple[str, str]:
        """(source without the prefix, target) of a row in either format: a row has only its format's
        columns, and few-shot rows may come from a source of the other format."""
        if "source" in row:
            return row["source"], row["target"]
        return row["instruction"] + (f"\n{row['input']}" if row.get("input") else ""), row["output"]

    def source(self, row: dict) -> str:
        return self.options.prefix + self._pair(row)[0]

    def target(self, row: dict) -> str:
        return self._pair(row)[1]

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
            head=self.head,
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
        return PadCollator(tokenizer.pad_token_id, pad_to=pad_to, sequence_labels=True)

    def preprocess_logits(self, logits, labels):
        return token_losses(logits, labels, shift=False)

    def metric_inputs(self, predictions, label_ids):
        import numpy as np

        values = np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)
        return values[:, 0], values[:, 1]

    def row_text(self, row: dict) -> str:
        """The row's source and target, one per line (without the prefix every row shares)."""
        return "\n".join(part for part in self._pair(row) if part)

    def prompts(self, dataset, shots: list[dict] | None = None, tokenizer=None) -> list[tuple[str, str]]:
        """Each row's (source as the encoder reads it, target). `shots` (training rows) are written
        before the source, each as its source, a line break and its target, then a blank line, with
        the prefix once at the start: the way few-shot prompts are written for instruction-tuned
        T5 models (Flan-T5); a T5 trained on single pairs gains little from them. `tokenizer` is
        accepted for symmetry with other tasks and not needed."""
        solved = "".join(f"{source}\n{target}\n\n" for source, target in map(self._pair, shots or ()))
        return [(self.options.prefix + solved + source, target) for source, target in map(self._pair, dataset)]

    def generate(
        self, model, tokenizer, prompts: list[str], max_length: int, max_new_tokens: int | None = None,
        batch_size: int = 16,
    ) -> list[str]:  # fmt: skip
        """Greedy targets for sources (cut to max_length tokens as in training), batched, each
        stopped at the end of sequence, at most `max_new_tokens` (default: the task's option) long."""
        from plugins.tasks._generation import greedy

        inputs = tokenizer(list(prompts), truncation=True, max_length=max_length)["input_ids"] if prompts else []
        stop = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        return greedy(model, tokenizer, inputs, max_new_tokens or self.options.max_new_tokens, stop, batch_size)

    def predict(self, model, tokenizer, texts, max_length, max_new_tokens: int | None = None):
        sources = [self.options.prefix + text for text in texts]
        answers = self.generate(model, tokenizer, sources, max_length, max_new_tokens=max_new_tokens)
        return [{"prompt": text, "response": answer} for text, answer in zip(texts, answers, strict=True)]

    def samples(self, model, tokenizer, max_length) -> list[dict]:
        prompts = self.options.sample_prompts
        return self.predict(model, tokenizer, prompts, max_length) if prompts else []

    def state(self) -> dict[str, Any]:
        return {"format": self.options.format, "prefix": self.options.prefix}


@hookimpl
def register_tasks(register):
    register(Seq2Seq)
