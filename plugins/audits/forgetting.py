"""Audit `forgetting`: how much fine-tuning worsened the model on text it should still know.

Fine-tuning on a narrow task can erode what a pretrained language model knew (catastrophic
forgetting). This audit scores a reference corpus the recipe names, text the model should still
model well (general prose, the domain before adaptation), with the base model before training and
with the fine-tuned model after it, and compares the two perplexities:

    perplexity = exp(-sum of token log-probabilities / number of tokens scored)

weighted by tokens over the whole corpus (not a mean of per-text perplexities, which short texts
would dominate). Texts are tokenized one by one with the run's tokenizer and cut at the run's
max_length, the same for both models, so the two figures compare like with like. The audit fails
when the perplexity rose by more than `max_increase` (relative: 0.2 allows 20%).

The corpus is a `.txt` file, one text per non-empty line, or a `.jsonl` file, one JSON object with
a "text" string per non-empty line; its first `max_rows` texts are scored. Only tasks that train a
causal language model head can be audited: other heads give a text no likelihood.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

from pydantic import Field

from runner import (
    Audit,
    AuditOptions,
    AuditResult,
    DataError,
    FilePath,
    FinetuneError,
    NonNegativeFloat,
    hookimpl,
)

FORMATS = (".txt", ".jsonl")


class ForgettingOptions(AuditOptions):
    """Options of the `forgetting` audit."""

    corpus: FilePath = Field(
        description="Reference texts the model should still know: .txt (one per line) or .jsonl (a 'text' field)."
    )
    max_increase: NonNegativeFloat = Field(
        default=0.2,
        description="Largest allowed relative rise of the corpus perplexity after fine-tuning (0.2 = 20%).",
    )
    max_rows: int = Field(default=500, gt=0, description="Score at most this many texts: the corpus's first ones.")


def read_corpus(path: str | Path, limit: int) -> list[str]:
    """The first `limit` texts of a corpus file; DataError naming file:line for a bad row."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise DataError(f"{path}: a corpus is a .txt or .jsonl file (got '{path.suffix or 'no suffix'}')")
    jsonl = path.suffix.lower() == ".jsonl"
    texts: list[str] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if len(texts) >= limit:
                break
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{number}: not UTF-8 text ({exc.reason})") from exc
            if line:
                texts.append(_jsonl_text(line, path, number) if jsonl else line)
    if not texts:
        raise DataError(f"{path}: no texts in the corpus (it is empty or has only blank lines)")
    return texts


def _jsonl_text(line: str, path: Path, number: int) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{number}: not valid JSON ({exc.msg}, column {exc.colno})") from exc
    if not isinstance(row, dict) or "text" not in row:
        raise DataError(f'{path}:{number}: no "text" field (each line must be an object like {{"text": "..."}})')
    text = row["text"]
    if not isinstance(text, str) or not text.strip():
        raise DataError(f'{path}:{number}: "text" must be a non-empty string (got {json.dumps(text)[:40]})')
    return text


def _perplexity(mean_nll: float) -> float:
    try:
        return math.exp(mean_nll)
    except OverflowError:  # a model that gives the corpus ~no probability at all
        return math.inf


def _show(perplexity: float) -> str:
    if perplexity >= 1000:
        return f"{perplexity:,.0f}"
    return f"{perplexity:.1f}" if perplexity >= 10 else f"{perplexity:.2f}"


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"


class Forgetting(Audit):
    """Perplexity on a reference corpus before and after fine-tuning: how much the model forgot."""

    name = "forgetting"
    Options = ForgettingOptions

    @classmethod
    def check(cls, options, recipe):
        head = recipe.task.cls.head
        if head != "causal_lm":
            yield (
                ("type",),
                f"audit 'forgetting' measures perplexity, which needs a causal language model; task "
                f"'{recipe.task.name}' trains a {head or 'non-language-model'} head (use a task such as "
                "causal_lm or instruction)",
            )
            return
        if Path(options.corpus).is_file():  # a missing file is reported by the recipe validator
            try:
                read_corpus(options.corpus, options.max_rows)
            except FinetuneError as exc:
                yield ("corpus",), exc.message

    @functools.cached_property
    def texts(self) -> list[str]:
        """The corpus texts scored, read once (for the base and the fine-tuned model)."""
        return read_corpus(self.options.corpus, self.options.max_rows)

    def measure(self, subject, data, ctx) -> dict[str, Any]:
        """Token-weighted perplexity of `subject` on the corpus: {"perplexity", "tokens", "rows"}."""
        texts = self.texts
        scores = subject.log_likelihoods(texts)
        tokens = sum(n for _, n in scores)
        if tokens == 0:
            raise FinetuneError(
                f"no token of {Path(self.options.corpus).name} could be scored: every text is a single token"
            )
        log_likelihood = sum(logp for logp, _ in scores)
        return {"perplexity": _perplexity(-log_likelihood / tokens), "tokens": tokens, "rows": len(texts)}

    def judge(self, base: dict[str, Any] | None, finetuned: dict[str, Any]) -> AuditResult:
        """Passed when the perplexity rose by at most `max_increase`; undecided without a baseline."""
        limit = self.options.max_increase
        name = Path(self.options.corpus).name
        thresholds = {"max_increase": limit}
        after = finetuned["perplexity"]
        if base is None:
            summary = (
                f"perplexity on {name} is {_show(after)} after fine-tuning; no baseline was measured on the base "
                "model, so the change cannot be judged"
            )
            figures = {"base": None, "finetuned": finetuned, "relative_increase": None}
            return AuditResult(None, summary, figures, thresholds)
        before = base["perplexity"]
        increase = after / before - 1
        passed = increase <= limit
        if increase == 0:
            change = f"stayed at {_show(after)}"
        else:
            change = f"{'rose' if increase > 0 else 'fell'} from {_show(before)} to {_show(after)}"
        verdict = "within" if passed else "more than"
        summary = f"perplexity on {name} {change} ({increase:+.1%}), {verdict} the {_percent(limit)} allowed"
        figures = {"base": base, "finetuned": finetuned, "relative_increase": increase}
        return AuditResult(passed, summary, figures, thresholds)


@hookimpl
def register_audits(register):
    register(Forgetting)
