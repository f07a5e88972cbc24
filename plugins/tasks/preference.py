"""Task `preference`: pairs of a better (`chosen`) and a worse (`rejected`) answer to one prompt.

The layouts it reads (`format`: plain text, conversations, UltraFeedback's whole conversations,
Anthropic HH's transcripts, unpaired rows for KTO) are plugins/tasks/_preference_rows.py's. The
chat template is the instruction task's (the same choices, saved with the tokenizer): the prompt
is rendered with the generation prompt, each answer as the assistant turn(s) that follow it, up
to and including the end-of-turn token, so that only the answers are scored.

Encoded rows are what TRL's preference trainers take: `prompt_ids`, `chosen_ids`, `rejected_ids`
(unpaired: `prompt_ids`, `completion_ids`, `label`) and `length`, the longest sequence the row
makes (prompt and its longer answer), for length grouping. The prompt's tokens are the tokens the
rendered prompt and prompt-plus-answer share, as TRL's own tokenization takes them (a template or
tokenizer may merge tokens across the boundary). A pair longer than max_length keeps its prompt
and has its answers cut (TRL's truncation_mode = "keep_start"). Rows that cannot teach anything
(an empty answer, equal answers, a prompt that alone fills max_length, ...) are left out, and the
notes count them by reason; malformed rows stop the run with a DataError naming the row.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal, NamedTuple

from pydantic import Field

from plugins.tasks import _chat_templates as chat_templates
from plugins.tasks import _preference_rows as rows_of
from plugins.tasks._chat_answers import ChatOptions, ChatTask
from runner import DataError, FinetuneError, hookimpl


class EncodedRow(NamedTuple):
    """A row encoded: the prompt's ids and each answer's (chosen and rejected, or the completion);
    `bad`: why the row is left out (its ids then empty); `cut`: its answers were shortened to fit
    max_length; `merged`: the end of the prompt that tokenizes into the answer, if any."""

    prompt_ids: list[int]
    answer_ids: list[list[int]]
    bad: str | None = None
    cut: bool = False
    merged: str | None = None
    label: bool | None = None

    @property
    def length(self) -> int:
        """The longest sequence the row makes: its prompt and its longer answer."""
        return len(self.prompt_ids) + max((len(ids) for ids in self.answer_ids), default=0)


class PreferenceOptions(ChatOptions):
    format: Literal["auto", "text", "conversation", "ultrafeedback", "hh", "unpaired"] = Field(
        default="auto",
        description="'text': columns prompt, chosen, rejected (strings); 'conversation': prompt a list of messages "
        "(or a string), chosen/rejected a string or a list of assistant messages; 'ultrafeedback': chosen/rejected "
        "whole conversations (the shared leading turns are the prompt), no prompt column or one equal to the first "
        "user turn; 'hh': chosen/rejected Human/Assistant transcripts (the shared start up to the last shared "
        "'Assistant:' is the prompt); 'unpaired': columns prompt, completion, label (true or 1: desirable), for KTO; "
        "'auto': each paired row by what it holds: a list prompt is 'conversation'; text answers are 'text' with a "
        "prompt, 'hh' without; list answers are 'conversation' when they start with an assistant turn, else "
        "'ultrafeedback'. Messages are {role, content} or ShareGPT's {from, value}; other column names: the data "
        "source's columns. Pairs that teach nothing (an empty answer, equal answers, a prompt filling max_length) "
        "are left out and counted.",
    )


class Preference(ChatTask):
    """Preference pairs (a chosen and a rejected answer to a prompt; or unpaired, labelled answers) for DPO and kin."""

    name = "preference"
    Options = PreferenceOptions
    produces = "preferences"
    # Registered with trainer `dpo` (plugins/trainers/_preference_metrics.py); the bootstrap gives them intervals.
    default_metrics = ({"type": "reward_accuracy"}, {"type": "reward_margin"}, {"type": "likelihood_accuracy"})
    # Answers prompts (the chosen answer its reference): text metrics and a few-shot baseline apply.
    generates = True

    @classmethod
    def check(cls, options, recipe):
        # Asked at validation without importing trl (or torch): `finetune validate` stays light.
        try:
            missing = importlib.util.find_spec("trl") is None
        except (ImportError, ValueError):  # a broken install reads as a missing one
            missing = True
        if missing:
            yield (
                ("type",),
                "the preference task needs the extra: pip install 'finetune-runner[preference]' (trl not installed)",
            )
        # Unpaired rows (KTO) batch differently from pairs: a trainer says it takes them with
        # `unpaired_preferences = True`.
        training = getattr(recipe, "training", None)
        if options.format == "unpaired" and not getattr(getattr(training, "cls", None), "unpaired_preferences", False):
            yield (
                ("format",),
                "format 'unpaired' (prompt, completion, label rows, for KTO) needs a trainer of unpaired rows; "
                f"training.type = '{getattr(training, 'name', '?')}' takes chosen/rejected pairs",
            )
        if options.format == "unpaired":
            # an undesirable row's completion is no answer to score a generated one against
            for spec in getattr(recipe, "metrics", ()):
                if spec.cls.consumes == frozenset({"text"}):
                    yield (
                        ("format",),
                        f"metric '{spec.name}' compares generated answers with the preferred one, which unpaired "
                        "rows do not give (an undesirable completion is no reference): score unpaired runs with "
                        "the preference metrics, or evaluate on pairs",
                    )

    @property
    def reader(self) -> rows_of.RowReader:
        return rows_of.RowReader(self.options.format, self.options.roles)

    @property
    def columns(self):
        return self.reader.columns

    @property
    def optional_columns(self):
        return self.reader.optional_columns

    @property
    def paired(self) -> bool:
        """Whether rows are pairs (chosen and rejected), not unpaired labelled completions (KTO)."""
        return self.options.format != "unpaired"

    # -- rows -------------------------------------------------------------------------------------
    def pair(self, row: dict) -> rows_of.Pair:
        """The row read (Malformed where it is not in its layout), the recipe's system message first."""
        pair = self.reader.read(row)
        if self.options.system and pair.prompt and pair.prompt[0]["role"] != "system":
            pair.prompt.insert(0, {"role": "system", "content": self.options.system})
        return pair

    def fit(self, splits) -> None:
        for raws in splits.values():
            for raw in raws:
                for i, row in enumerate(raw.dataset):
                    try:
                        self.pair(row)
                    except rows_of.Malformed as exc:
                        raise DataError(f"{raw.where(i)}: {exc}") from None

    # -- tokenizer and model ----------------------------------------------------------------------
    def training_texts(self, dataset):
        reader = self.reader
        for row in dataset:
            yield from reader.texts(row)

    # -- encoding ---------------------------------------------------------------------------------
    def render(self, pair: rows_of.Pair, tokenizer) -> tuple[str, list[str]]:
        """The prompt rendered with the generation prompt, and each answer as the text the template
        adds after it: its assistant turn(s) up to the end-of-turn marker (chat_templates.turn_spans,
        which also checks that the template renders turn by turn)."""
        template = self._template(tokenizer)
        prompt = chat_templates.render(tokenizer, template, pair.prompt, generation_prompt=True)
        answers = []
        for answer in (pair.chosen, pair.rejected) if self.paired else (pair.chosen,):
            messages = [*pair.prompt, *answer]
            text, spans = chat_templates.turn_spans(
                tokenizer, template, messages, range(len(pair.prompt), len(messages))
            )
            answers.append(text[spans[0][0] : spans[-1][1]])
        return prompt, answers

    def encode_row(self, row: dict, tokenizer, max_length: int) -> EncodedRow:
        pair = self.pair(row)
        if pair.bad:
            return EncodedRow([], [], pair.bad)
        prompt, answers = self.render(pair, tokenizer)
        prompt_ids = tokenizer(prompt)["input_ids"]
        fulls = [tokenizer(prompt + answer)["input_ids"] for answer in answers]
        # As TRL tokenizes: the prompt is what prompt and prompt+answer share as tokens. Where the
        # prompt's last tokens merge with the answer's first, the answer starts where they part.
        shared = min(rows_of.common_prefix(prompt_ids, full) for full in fulls)
        merged = tokenizer.decode(prompt_ids[shared:]) if shared < len(prompt_ids) else None
        prompt_ids, answer_ids = prompt_ids[:shared], [full[shared:] for full in fulls]
        if len(prompt_ids) >= max_length:
            return EncodedRow([], [], rows_of.PROMPT_FILLS)
        room = max_length - len(prompt_ids)
        cut = any(len(ids) > room for ids in answer_ids)
        answer_ids = [ids[:room] for ids in answer_ids]
        if not all(answer_ids):
            return EncodedRow([], [], rows_of.EMPTY)
        if self.paired and answer_ids[0] == answer_ids[1]:
            return EncodedRow([], [], rows_of.SAME_WHEN_CUT if cut else rows_of.SAME)
        return EncodedRow(prompt_ids, answer_ids, None, cut, merged, pair.label)

    def encode(self, dataset, tokenizer, max_length: int):
        answer_columns = ("chosen_ids", "rejected_ids") if self.paired else ("completion_ids",)

        def fn(batch):
            out: dict[str, list] = {
                "prompt_ids": [],
                **{c: [] for c in answer_columns},
                "length": [],
                "_bad": [],
                "_cut": [],
                "_merged": [],
            }
            if not self.paired:
                out["label"] = []
            for values in zip(*batch.values(), strict=True):
                row = dict(zip(batch, values, strict=True))
                done = self.encode_row(row, tokenizer, max_length)
                out["prompt_ids"].append(done.prompt_ids)
                for column, ids in zip(answer_columns, done.answer_ids or [[] for _ in answer_columns], strict=True):
                    out[column].append(ids)
                out["length"].append(done.length)
                out["_bad"].append(done.bad or "")
                out["_cut"].append(done.cut)
                out["_merged"].append(done.merged)
                if not self.paired:
                    out["label"].append(bool(done.label))
            return out

        encoded = dataset.map(fn, batched=True, remove_columns=dataset.column_names, desc="formatting pairs")
        bad, cut, merged = encoded["_bad"], encoded["_cut"], [m for m in encoded["_merged"] if m is not None]
        noun = "pairs" if self.paired else "rows"
        dropped: dict[str, int] = {}
        for reason in bad:
            if reason:
                dropped[reason] = dropped.get(reason, 0) + 1
        if len(dropped) and sum(dropped.values()) == len(encoded):
            raise DataError(
                f"no {noun[:-1]} is left to learn from: {rows_of.reasons(dropped, max_length)}",
                hint="see the task's row layouts (format); raise tokenizer.max_length if prompts fill it",
            )
        if dropped:
            self.notes.append(
                f"{sum(dropped.values())} of {len(encoded)} {noun} dropped: {rows_of.reasons(dropped, max_length)}"
            )
        if any(cut):
            self.notes.append(
                f"{sum(cut)} of {len(encoded)} {noun} cut to max_length ({max_length} tokens): "
                "the prompt kept whole, the answers shortened"
            )
        if merged:
            self.notes.append(
                f"{len(merged)} of {len(encoded)} {noun}: the prompt's last tokens merge with the answer's first "
                f"(e.g. {merged[0]!r}): as in TRL, the answer starts where they part, and the model is tuned on the "
                "prompt without them; a template whose generation prompt ends on a token boundary avoids it"
            )
        if dropped:
            encoded = encoded.select([i for i, reason in enumerate(bad) if not reason])
        return encoded.remove_columns(["_bad", "_cut", "_merged"])

    def metric_inputs(self, predictions, label_ids):
        """Per pair (reward margin, log-probability difference) and ones: the trainer lays them out."""
        return predictions, label_ids

    def collator(self, tokenizer, pad_to: int | None):
        # Imported here: trl (and torch) only when a run batches rows, never at validation.
        if self.paired:
            from trl.trainer.dpo_trainer import DataCollatorForPreference

            return DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id, max_length=pad_to,
                                             pad_to_multiple_of=pad_to)  # fmt: skip
        from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

        return DataCollatorForUnpairedPreference(pad_token_id=tokenizer.pad_token_id, max_length=pad_to,
                                                 pad_to_multiple_of=pad_to)  # fmt: skip

    # -- reading rows back ------------------------------------------------------------------------
    def row_text(self, row: dict) -> str:
        """The prompt and the chosen answer (or the completion), one text a line, system messages
        left out: what a leakage audit should find again in another split."""
        try:
            pair = self.pair(row)
        except rows_of.Malformed:
            return "\n".join(self.reader.texts(row))
        return "\n".join(t["content"] for t in [*pair.prompt, *pair.chosen] if t["role"] != "system" and t["content"])

    def preview(self, rows: list[dict], tokenizer, max_length: int) -> list[list[tuple[str, bool]]]:
        """Each row as the model sees it: the prompt (not trained on), then each answer (trained
        on), each after a label; a row left out says why."""
        out = []
        labels = ("chosen", "rejected") if self.paired else ("completion",)
        for row in rows:
            try:
                encoded = self.encode_row(row, tokenizer, max_length)
            except rows_of.Malformed as exc:
                out.append([(f"[malformed: {exc}]", False)])
                continue
            if encoded.bad:
                out.append([(f"[left out: a pair {encoded.bad}]", False)])
                continue
            pieces = [("[prompt, not trained]\n", False), (tokenizer.decode(encoded.prompt_ids), False)]
            if not self.paired:
                labels = (f"completion, {'desirable' if encoded.label else 'undesirable'}",)
            cut = ", cut" if encoded.cut else ""
            for label, ids in zip(labels, encoded.answer_ids, strict=True):
                pieces += [(f"\n[{label}, trained{cut}]\n", False), (tokenizer.decode(ids), True)]
            out.append(pieces)
        return out

    # -- generation -------------------------------------------------------------------------------
    def prompts(self, dataset, shots: list[dict] | None = None, tokenizer=None) -> list[tuple[str, str]]:
        """Each row's (prompt rendered with the generation prompt, chosen answer): what the model is
        asked, and the answer preferred. `shots` (training rows) come first, each as its prompt's
        user and assistant turns answered with its chosen answer, after any system message."""
        if tokenizer is None:
            raise FinetuneError("task 'preference' renders prompts with the chat template: pass the tokenizer")
        template = self._template(tokenizer)
        solved = []
        for shot in shots or ():
            pair = self.reader.read(shot)
            solved += [t for t in [*pair.prompt, *pair.chosen] if t["role"] != "system"]
        out = []
        for row in dataset:
            pair = self.pair(row)
            system = 1 if pair.prompt[0]["role"] == "system" else 0
            context = [*pair.prompt[:system], *solved, *pair.prompt[system:]]
            prompt = chat_templates.render(tokenizer, template, context, generation_prompt=True)
            out.append((prompt, "\n".join(t["content"] for t in pair.chosen)))
        return out

    def state(self) -> dict[str, Any]:
        return {"template": self.options.template, "format": self.options.format}


@hookimpl
def register_tasks(register):
    register(Preference)
