"""Task `instruction`: instruction tuning of a causal language model.

Rows are instructions with responses (`format = "alpaca"`: columns instruction, input, output) or
conversations: `format = "openai"` (older name "chat"), a `messages` list of {role, content}, or
`format = "sharegpt"`, a `conversations` list of {from, value}; `column` and `roles` read other
column and role names (plugins/tasks/_conversations.py reads and checks the rows). A chat template
renders them (a built-in one, the tokenizer's own, or a Jinja template written in the recipe).

The loss covers only the responses by default (`train_on_inputs = false`), every assistant turn
of a conversation and its end-of-turn token included, so the model learns to stop; with
`train_on_inputs = true` it covers the whole text. A turn's own `train` (true/false) or `weight`
(1/0) overrides that for the turn: an assistant turn marked 0 is left out, a user or system turn
marked 1 is trained. The template is saved with the tokenizer, so that the model is prompted at
inference exactly as it was trained.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from plugins.tasks import _chat_templates as chat_templates
from plugins.tasks import _conversations as conversations
from plugins.tasks._chat_answers import ChatOptions, ChatTask
from runner import DataError, FinetuneError, PackedCollator, PadCollator, hookimpl


class InstructionOptions(ChatOptions):
    format: Literal["alpaca", "openai", "sharegpt", "chat"] = Field(
        default="alpaca",
        description="'alpaca': columns instruction, input (optional), output; 'openai': a messages column of "
        "{role, content}; 'sharegpt': a conversations column of {from, value}; 'chat': the older name of 'openai'.",
    )
    column: str | None = Field(
        default=None,
        min_length=1,
        description="The column that holds each conversation (openai, sharegpt). Default: messages (openai), "
        "conversations (sharegpt).",
    )
    train_on_inputs: bool = Field(
        default=False,
        description="Also train on the prompt tokens, not only responses. A turn's own train (or weight) flag "
        "overrides this for the turn.",
    )
    packing: bool = Field(
        default=False,
        description="Pack several samples into each row of max_length tokens, kept apart: little padding.",
    )

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        return conversations.ALIASES.get(value, value)


class Instruction(ChatTask):
    """Instruction tuning (alpaca rows, or openai or sharegpt conversations): loss on the responses, by default."""

    name = "instruction"
    Options = InstructionOptions
    produces = "tokens"
    generates = True
    default_metrics = ({"type": "perplexity"}, {"type": "exact_match"}, {"type": "bleu"}, {"type": "rouge"})

    @property
    def reader(self) -> conversations.Reader:
        o = self.options
        return conversations.Reader(o.format, o.column, o.roles)

    @property
    def columns(self):
        return self.reader.columns

    @property
    def optional_columns(self):
        return self.reader.optional_columns

    # -- rows -> conversations ------------------------------------------------------------------
    def turns(self, row: dict) -> list[dict]:
        """The row as turns {role, content}, with `train` where the row flags a turn. The row's
        columns say its format: rows of a run hold only their source's columns, and few-shot rows
        may come from a source of another format."""
        turns = conversations.reader_for(row, self.reader).turns(row)
        if self.options.system and turns[0]["role"] != "system":
            turns.insert(0, {"role": "system", "content": self.options.system})
        return turns

    def conversation(self, row: dict) -> list[dict]:
        """The row as messages, as the chat template renders them."""
        return conversations.plain(self.turns(row))

    def fit(self, splits) -> None:
        reader = self.reader
        for raws in splits.values():
            for raw in raws:
                for i, row in enumerate(raw.dataset):
                    problem = reader.problem(row)
                    if not problem and not any(conversations.trained(self.turns(row), self.options.train_on_inputs)):
                        problem = "no turn is trained (every assistant turn is marked train = false or weight = 0)"
                    if problem:
                        raise DataError(f"{raw.where(i)}: {problem}")

    # -- tokenizer and model ----------------------------------------------------------------------
    def training_texts(self, dataset):
        for row in dataset:
            for message in self.conversation(row):
                yield message["content"]
                if message.get("input"):
                    yield message["input"]

    # -- encoding ------------------------------------------------------------------------------
    def render(self, row: dict, tokenizer) -> tuple[str, list[tuple[int, int]]]:
        """The formatted text and the character spans that are trained on: the turns trained
        (conversations.trained), or with train_on_inputs all the text but the turns that are not."""
        turns = self.turns(row)
        trained = conversations.trained(turns, self.options.train_on_inputs)
        inputs = self.options.train_on_inputs
        chosen = [k for k, on in enumerate(trained) if on != inputs]  # the exceptions, with train_on_inputs
        text, spans = chat_templates.turn_spans(
            tokenizer, self._template(tokenizer), conversations.plain(turns), chosen
        )
        if not inputs:
            return text, spans
        kept, start = [], 0
        for lo, hi in spans:
            kept.append((start, lo))
            start = hi
        return text, [(lo, hi) for lo, hi in [*kept, (start, len(text))] if hi > lo]

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

    def row_text(self, row: dict) -> str:
        """The row's user and assistant texts (and alpaca input), one per line. System messages are
        left out: usually the same for every row, they would make unrelated rows look alike."""
        return "\n".join(conversations.reader_for(row, self.reader).texts(row))

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

    def state(self) -> dict[str, Any]:
        return {"template": self.options.template, "format": self.options.format}


@hookimpl
def register_tasks(register):
    register(Instruction)
