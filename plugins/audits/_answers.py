"""What the audits of a generating model share (`verbosity`, `win_rate`): held-out prompts, and a
model's greedy answers to them, generated once per model however many audits read them.

The prompts are the held-out rows' (the test split, else validation), each rendered by the task
as its model is asked it (`Task.prompts`: the chat template and its generation prompt, the
recipe's system message), the first `max_prompts` distinct ones in row order: preference data
often holds several pairs for one prompt, and a prompt counted twice would weigh twice. The
answers are the task's own generation (`Task.generate`: greedy, stopped at the end of turn, at most
max_new_tokens), the same for the base and the fine-tuned model.
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from runner import AuditOptions, FinetuneError, clip

HELD_OUT = ("test", "validation")
SHOWN = 300  # characters of a prompt or answer kept in the figures, to read beside the numbers


class AnswerOptions(AuditOptions):
    """Options of the audits that answer held-out prompts."""

    split: Literal["test", "validation"] | None = Field(
        default=None, description="Held-out rows whose prompts are answered (default: test, else validation)."
    )
    max_prompts: int = Field(
        default=200, gt=0, le=100_000, description="Answer at most this many distinct prompts: the split's first ones."
    )
    max_new_tokens: int | None = Field(
        default=None, gt=0, le=100_000, description="Longest answer in tokens (default: the task's max_new_tokens)."
    )


def check_generates(audit: str, recipe):
    """Validation: the audit reads generated answers, so the task must generate them."""
    task = recipe.task.cls
    if not getattr(task, "generates", False):
        yield (
            ("type",),
            f"audit '{audit}' compares generated answers, but task '{recipe.task.name}' does not generate text "
            f"(it trains a {task.head or 'non-language-model'} head); use a task that answers prompts, such as "
            "instruction or preference",
        )


@dataclass(frozen=True)
class Prompt:
    key: str  # sha-256 of the rendered prompt: what pairs the base and the fine-tuned answer
    text: str  # the prompt as the model is given it (rendered with the chat template)
    messages: list[dict] | None  # the conversation before the answer, for a reward model's own template
    reference: str  # the data's answer (the chosen one)

    @property
    def shown(self) -> str:
        """The prompt as a reader knows it: its last user message, else the end of the rendered text."""
        users = [m["content"] for m in self.messages or () if m["role"] == "user"]
        return clip(users[-1], SHOWN) if users else clip(self.text[-SHOWN:], SHOWN)


@dataclass
class Answered:
    """A model's answers to the held-out prompts."""

    split: str
    prompts: list[Prompt]
    answers: list[str]
    max_new_tokens: int
    skipped: int = 0  # held-out rows whose prompt could not be rendered
    tokens: list[int] = field(default_factory=list)  # each answer's length in the run's tokens

    def cut(self) -> list[bool]:
        """Whether each answer reached max_new_tokens (counted again from its text: the task returns
        text, so an answer cut at the limit is one of at least max_new_tokens tokens)."""
        return [n >= self.max_new_tokens for n in self.tokens]


def held_out_split(data, wanted: str | None, audit: str) -> str:
    """The split whose prompts are answered: the recipe's choice, else test, else validation."""
    sizes = {split: data.size(split) if data is not None else 0 for split in HELD_OUT}
    if wanted is not None:
        if not sizes[wanted]:
            raise FinetuneError(
                f"audit '{audit}': the run has no {wanted} rows to answer",
                hint="split the data (data.split) or set the audit's `split` to one the run has",
            )
        return wanted
    for split in HELD_OUT:
        if sizes[split]:
            return split
    raise FinetuneError(
        f"audit '{audit}' answers held-out prompts, but the run has no test or validation rows",
        hint="split the data (data.split), or give the data source validation/test rows",
    )


def _rows(data, split: str, task) -> list[dict]:
    """The split's rows in the task's columns, from AuditData's columns (a column some source lacks
    is left out)."""
    names = [*task.columns, *getattr(task, "optional_columns", ())]
    columns = {name: data.column(split, name) for name in dict.fromkeys(names)}
    columns = {name: values for name, values in columns.items() if values is not None}
    return [{name: values[i] for name, values in columns.items()} for i in range(data.size(split))]


def _messages(task, row: dict) -> list[dict] | None:
    """The conversation before the answer, as {role, content} messages, where the task reads its
    rows as one (preference: the pair's prompt; instruction: the turns before the last answer)."""
    if callable(getattr(task, "pair", None)):
        messages = task.pair(row).prompt
    elif callable(getattr(task, "conversation", None)):
        turns = task.conversation(row)
        last = max((i for i, m in enumerate(turns) if m["role"] == "assistant"), default=len(turns))
        messages = turns[:last]
    else:
        return None
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def prompts(task, tokenizer, data, split: str, limit: int) -> tuple[list[Prompt], int]:
    """The first `limit` distinct prompts of `split`, and how many rows had none to render (a
    preference pair whose two transcripts share no prompt, ...)."""
    out: list[Prompt] = []
    seen: set[str] = set()
    skipped = 0
    for row in _rows(data, split, task):
        if len(out) >= limit:
            break
        try:
            messages = _messages(task, row)
            if messages is not None and not messages:
                raise ValueError("no prompt")
            ((text, reference),) = task.prompts([row], tokenizer=tokenizer)
        except (FinetuneError, ValueError, LookupError, TypeError, AttributeError):
            skipped += 1  # counted in the figures; the rows' own problems are the task's to report
            continue
        key = digest(text)
        if key not in seen:
            seen.add(key)
            out.append(Prompt(key, text, messages, reference))
    return out, skipped


# Answers by model: the `verbosity` and `win_rate` audits of one run read the same answers.
_ANSWERED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def answer(subject, data, options: AnswerOptions, audit: str) -> Answered:
    """`subject`'s greedy answers to the held-out prompts (generated once per model and options)."""
    task, tokenizer = subject.task, subject.tokenizer
    if not getattr(task, "generates", False):
        raise FinetuneError(f"audit '{audit}' compares generated answers; task '{task.name}' does not generate")
    split = held_out_split(data, options.split, audit)
    limit = options.max_new_tokens or getattr(getattr(task, "options", None), "max_new_tokens", None) or 64
    key = (split, options.max_prompts, limit)
    done = _ANSWERED.setdefault(subject, {})
    if key in done:
        return done[key]
    asked, skipped = prompts(task, tokenizer, data, split, options.max_prompts)
    if not asked:
        raise FinetuneError(f"audit '{audit}': none of the {split} rows has a prompt to answer")
    answers = task.generate(subject.model, tokenizer, [p.text for p in asked], subject.max_length, max_new_tokens=limit)
    tokens = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
    done[key] = Answered(split, asked, list(answers), limit, skipped, tokens)
    return done[key]


def paired(base: dict[str, Any], finetuned: dict[str, Any], *columns: str) -> dict[str, list]:
    """Per-prompt values of both models on the prompts both answered, in the base's order:
    {"keys": [...], "base_<column>": [...], "finetuned_<column>": [...]}."""
    b, t = base["per_prompt"], finetuned["per_prompt"]
    index = {key: i for i, key in enumerate(t["keys"])}
    common = [(i, index[key]) for i, key in enumerate(b["keys"]) if key in index]
    out: dict[str, list] = {"keys": [b["keys"][i] for i, _ in common]}
    for column in columns:
        out[f"base_{column}"] = [b[column][i] for i, _ in common]
        out[f"finetuned_{column}"] = [t[column][j] for _, j in common]
    return out


def overall(figures: dict[str, Any] | None) -> dict[str, Any] | None:
    """A model's figures without the per-prompt lists: what the report's base/fine-tuned table shows
    (the lists go to the result's own `per_prompt`, prompt by prompt)."""
    return None if figures is None else {k: v for k, v in figures.items() if k != "per_prompt"}


def digest(text: str) -> str:
    """A short SHA-256 of a text: what tells two prompts, or two answers, apart."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def side_by_side(pairs: dict[str, list], i: int) -> dict[str, str]:
    """Prompt i with the base model's and the fine-tuned model's answers, for an audit's examples."""
    return {
        "prompt": pairs["base_prompts"][i],
        "base answer": pairs["base_answers"][i],
        "fine-tuned answer": pairs["finetuned_answers"][i],
    }
