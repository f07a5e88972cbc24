"""Task `instruction`: instruction tuning of a causal language model.

Rows are instructions with responses (`format = "alpaca"`: columns instruction, input, output) or
conversations (`format = "chat"`: a `messages` list of {role, content}). A chat template renders
them (a built-in one, the tokenizer's own, or a Jinja template written in the recipe); the loss
covers only the responses by default (`train_on_inputs = false`), every assistant turn of a
conversation and its end-of-turn token included, so the model learns to stop. The template is
saved with the tokenizer, so that the model is prompted at inference exactly as it was trained.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from plugins.tasks import _chat_templates as chat_templates
from runner import DataError, FinetuneError, ModelSpec, Options, PackedCollator, PadCollator, Task, clip, hookimpl

ROLES = ("system", "user", "assistant")


class InstructionOptions(Options):
    format: Literal["alpaca", "chat"] = Field(
        default="alpaca",
        description="'alpaca': columns instruction, input (optional), output; 'chat': a messages column.",
    )
    template: str = Field(
        default="alpaca",
        description="'alpaca', 'chatml', 'plain', 'tokenizer' (its own chat template), or a Jinja chat template.",
    )
    system: str | None = Field(default=None, description="A system message put before every conversation.")
    train_on_inputs: bool = Field(default=False, description="Also train on the prompt tokens, not only responses.")
    packing: bool = Field(
        default=False,
        description="Pack several samples into each row of max_length tokens, kept apart: little padding.",
    )
    sample_prompts: list[str] = Field(
        default_factory=list, description="Prompts answered after training; written to samples.jsonl."
    )
    max_new_tokens: int = Field(default=64, gt=0, description="Longest generated answer (samples, predict).")

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        if value in (*chat_templates.BUILTIN, "tokenizer"):
            return value
        if "{" not in value:
            known = ", ".join([*chat_templates.BUILTIN, "tokenizer"])
            raise ValueError(f"unknown template '{clip(value)}': name one of {known}, or write a Jinja chat template")
        problem = chat_templates.check_template(value)
        if problem:
            raise ValueError(problem)
        return value


class Instruction(Task):
    """Instruction tuning (alpaca rows or chat messages): loss on the responses only, by default."""

    name = "instruction"
    Options = InstructionOptions
    produces = "tokens"
    head = "causal_lm"
    generates = True
    default_metrics = ({"type": "perplexity"}, {"type": "exact_match"}, {"type": "bleu"}, {"type": "rouge"})

    def __init__(self, options):
        super().__init__(options)
        self.template_source: str | None = None

    @property
    def columns(self):
        return ("messages",) if self.options.format == "chat" else ("instruction", "output")

    @property
    def optional_columns(self):
        return () if self.options.format == "chat" else ("input", "system")

    # -- rows -> conversations ------------------------------------------------------------------
    def conversation(self, row: dict) -> list[dict]:
        """The row as messages. The row's columns say its format: rows of a run hold only their
        source's columns, and few-shot rows may come from a source of the other format."""
        if isinstance(row.get("messages"), list):
            messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        else:
            user = {"role": "user", "content": row["instruction"]}
            if row.get("input"):
                user["input"] = row["input"]
            messages = [user, {"role": "assistant", "content": row["output"]}]
            if row.get("system"):
                messages.insert(0, {"role": "system", "content": row["system"]})
        if self.options.system and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.options.system})
        return messages

    def fit(self, splits) -> None:
        for raws in splits.values():
            for raw in raws:
                for i, row in enumerate(raw.dataset):
                    problem = self._problem(row)
                    if problem:
                        raise DataError(f"{raw.where(i)}: {problem}")

    def _problem(self, row: dict) -> str | None:
        if self.options.format == "alpaca":
            for column in ("instruction", "output"):
                if not isinstance(row.get(column), str) or not row[column].strip():
                    return f"'{column}' is empty"
            return None
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            return "'messages' must be a non-empty list of {role, content}"
        for n, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                return f"message {n + 1}: role must be one of {', '.join(ROLES)}"
            if not isinstance(message.get("content"), str):
                return f"message {n + 1}: content must be text"
        if not any(m["role"] == "assistant" for m in messages):
            return "no assistant message: nothing to learn from"
        return None

    # -- tokenizer and model ----------------------------------------------------------------------
    def training_texts(self, dataset):
        for row in dataset:
            for message in self.conversation(row):
                yield message["content"]
                if message.get("input"):
                    yield message["input"]

    def prepare_tokenizer(self, tokenizer) -> str | None:
        template = self.options.template
        if template == "tokenizer":
            if not tokenizer.chat_template:
                raise FinetuneError("task.template = 'tokenizer', but this tokenizer has no chat template")
            self.template_source = tokenizer.chat_template
            return None
        self.template_source = chat_templates.BUILTIN.get(template, template)
        tokenizer.chat_template = self.template_source  # saved with the tokenizer, used at inference
        markers = chat_templates.MARKERS.get(template, [])
        missing = [m for m in markers if m not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing})
            return f"added the template's markers {', '.join(missing)} as tokens"
        return None

    def model_spec(self, tokenizer, max_length: int) -> ModelSpec:
        return ModelSpec(
            head=self.head,
            vocab_size=len(tokenizer),
            max_length=max_length,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )

    # -- encoding ------------------------------------------------------------------------------
    def _template(self, tokenizer) -> str:
        if self.template_source is None:
            self.template_source = tokenizer.chat_template  # a saved tokenizer carries it
        return self.template_source

    def render(self, row: dict, tokenizer) -> tuple[str, list[tuple[int, int]]]:
        """The formatted text and the character spans that are trained on."""
        text, spans = chat_templates.response_spans(tokenizer, self._template(tokenizer), self.conversation(row))
        return text, ([(0, len(text))] if self.options.train_on_inputs else spans)

    def tokens(self, row: dict, tokenizer, max_length: int) -> tuple[list[int], list[int], list[tuple[int, int]]]:
        text, spans = self.render(row, tokenizer)
        enc = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
        labels = []
        for token, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            # A token is trained when its last character is a response's: a word token that carries
            # the space before it (byte-level BPE) still counts as the response word it is.
            trained = end > start and any(lo <= end - 1 < hi for lo, hi in spans)
            labels.append(token if trained else -100)
        return enc["input_ids"], labels, enc["offset_mapping"]

    def encode(self, dataset, tokenizer, max_length: int):
        def fn(batch):
            ids, labels = [], []
            rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
            for row in rows:
                row_ids, row_labels, _ = self.tokens(row, tokenizer, max_length)
                ids.append(row_ids)
                labels.append(row_labels)
            return {"input_ids": ids, "labels": labels, "length": [len(r) for r in ids]}

        encoded = dataset.map(fn, batched=True, remove_columns=dataset.column_names, desc="formatting")
        supervised = encoded.map(lambda row: {"n": sum(1 for x in row["labels"] if x != -100)})["n"]
        empty = sum(1 for n in supervised if n == 0)
        if empty == len(encoded):
            raise DataError(
                f"no row has a response token left after truncation to {max_length} tokens",
                hint="raise tokenizer.max_length, or shorten the prompts",
            )
        if empty:
            self.notes.append(f"{empty} of {len(encoded)} rows have no response token after truncation: dropped")
            keep = [i for i, n in enumerate(supervised) if n > 0]
            encoded = encoded.select(keep)
        return encoded

    def collator(self, tokenizer, pad_to: int | None):
        if self.options.packing:
            return PackedCollator(tokenizer.pad_token_id)
        return PadCollator(tokenizer.pad_token_id, pad_to=pad_to, sequence_labels=True)

    def preview(self, rows: list[dict], tokenizer, max_length: int) -> list[list[tuple[str, bool]]]:
        """Each row as (text, trained) pieces, cut where truncation cuts it."""
        out = []
        for row in rows:
            text, spans = self.render(row, tokenizer)
            _, labels, offsets = self.tokens(row, tokenizer, max_length)
            end = max((e for _, e in offsets), default=0)
            marks = [False] * len(text)
            for (start, stop), label in zip(offsets, labels, strict=True):
                for c in range(start, stop):
                    marks[c] = label != -100
            pieces: list[tuple[str, bool]] = []
            for c, ch in enumerate(text[:end]):
                if pieces and pieces[-1][1] == marks[c]:
                    pieces[-1] = (pieces[-1][0] + ch, marks[c])
                else:
                    pieces.append((ch, marks[c]))
            out.append(pieces)
        return out

    # -- evaluation and generation ------------------------------------------------------------
    def preprocess_logits(self, logits, labels):
        from runner import token_losses

        return token_losses(logits, labels)

    def metric_inputs(self, predictions, label_ids):
        import numpy as np

        values = np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)
        return values[:, 0], values[:, 1]

    def stop_tokens(self, tokenizer) -> list[int]:
        ids = [tokenizer.eos_token_id]
        marker = chat_templates.END_OF_TURN.get(self.options.template)
        if marker and marker in tokenizer.get_vocab():
            ids.append(tokenizer.convert_tokens_to_ids(marker))
        return [i for i in ids if i is not None]

    def row_text(self, row: dict) -> str:
        """The row's user and assistant texts (and alpaca input), one per line. System messages are
        left out: usually the same for every row, they would make unrelated rows look alike."""
        if isinstance(row.get("messages"), list):
            parts = [m.get("content") for m in row["messages"] if isinstance(m, dict) and m.get("role") != "system"]
        else:
            parts = [row.get("instruction"), row.get("input"), row.get("output")]
        return "\n".join(p for p in parts if isinstance(p, str) and p)

    def _solved_turns(self, row: dict) -> list[dict]:
        """A training row as solved turns for a few-shot prompt: its user and assistant messages up
        to its last answer, without system messages."""
        messages = self.conversation(row)
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
        return [m for m in messages[: last + 1] if m["role"] != "system"]

    def prompts(self, dataset, shots: list[dict] | None = None, tokenizer=None) -> list[tuple[str, str]]:
        """Each row's (prompt, reference): the conversation up to its last assistant turn, rendered
        with the chat template and its generation prompt, so that the prompt ends where the answer
        starts; the reference is that last assistant message. `shots` (training rows) come first,
        as earlier solved user/assistant turns of the same conversation, after any system message.
        `tokenizer` renders the template (it supplies eos_token and the markers): required."""
        if tokenizer is None:
            raise FinetuneError("task 'instruction' renders prompts with the chat template: pass the tokenizer")
        template = self._template(tokenizer)
        solved = [turn for shot in shots or () for turn in self._solved_turns(shot)]
        out = []
        for row in dataset:
            messages = self.conversation(row)
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            context = messages[:last]
            system = 1 if context and context[0]["role"] == "system" else 0
            context = [*context[:system], *solved, *context[system:]]
            prompt = chat_templates.render(tokenizer, template, context, generation_prompt=True)
            out.append((prompt, messages[last]["content"]))
        return out

    def generate(
        self, model, tokenizer, prompts: list[str], max_length: int, max_new_tokens: int | None = None,
        batch_size: int = 16,
    ) -> list[str]:  # fmt: skip
        """Greedy answers to rendered prompts, batched with left padding, each stopped at the end of
        sequence or the template's end-of-turn token, at most `max_new_tokens` (default: the task's
        option) long. A prompt longer than max_length tokens keeps its last max_length tokens: the
        end, where the answer starts."""
        from plugins.tasks._generation import greedy

        inputs = [tokenizer(prompt)["input_ids"][-max_length:] for prompt in prompts]
        return greedy(model, tokenizer, inputs, max_new_tokens or self.options.max_new_tokens,
                      self.stop_tokens(tokenizer), batch_size)  # fmt: skip

    def predict(self, model, tokenizer, texts, max_length, max_new_tokens: int | None = None):
        template = self._template(tokenizer)
        prompts = []
        for text in texts:
            messages = [{"role": "user", "content": text}]
            if self.options.system:
                messages.insert(0, {"role": "system", "content": self.options.system})
            prompts.append(chat_templates.render(tokenizer, template, messages, generation_prompt=True))
        answers = self.generate(model, tokenizer, prompts, max_length, max_new_tokens=max_new_tokens)
        return [{"prompt": text, "response": answer} for text, answer in zip(texts, answers, strict=True)]

    def samples(self, model, tokenizer, max_length) -> list[dict]:
        return (
            self.predict(model, tokenizer, self.options.sample_prompts, max_length)
            if self.options.sample_prompts
            else []
        )

    def state(self) -> dict[str, Any]:
        return {"template": self.options.template, "format": self.options.format}


@hookimpl
def register_tasks(register):
    register(Instruction)
