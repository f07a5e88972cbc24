"""Metrics of generated text: exact match, BLEU and ROUGE of answers against reference answers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from plugins.metrics._local import _LocalMetric
from runner import Options


class ExactMatchOptions(Options):
    ignore_case: bool = Field(default=False, description="Compare answers case-insensitively.")


class ExactMatch(_LocalMetric):
    """Exact match: the share of generated answers equal to the reference (whitespace normalised)."""

    name = module = "exact_match"
    Options = ExactMatchOptions
    consumes = frozenset({"text"})

    def _args(self) -> dict:
        return {"ignore_case": self.options.ignore_case}


BLEU_ORDER = 4  # sacrebleu's highest n-gram order


class BleuOptions(Options):
    tokenize: Literal["13a", "intl", "char", "zh", "none"] = Field(
        default="13a",
        description="sacrebleu's tokenizer: '13a' (its default), 'intl' (Unicode punctuation), 'char', 'zh', 'none'.",
    )
    lowercase: bool = Field(default=False, description="Compare lower-cased text.")


class Bleu(_LocalMetric):
    """Corpus BLEU of generated answers (sacrebleu, 0-100)."""

    name = module = "bleu"
    Options = BleuOptions
    consumes = frozenset({"text"})

    def _args(self) -> dict:
        return {"tokenize": self.options.tokenize, "lowercase": self.options.lowercase}

    def meaningless(self, references) -> str | None:
        # BLEU multiplies 1- to 4-gram precisions: answers shorter than 4 words have no 4-grams,
        # and score 0 (or a smoothing artefact) however right they are.
        words = sorted(len(str(r).split()) for r in references)
        median = words[len(words) // 2] if words else BLEU_ORDER
        if median >= BLEU_ORDER:
            return None
        return (
            f"the references have a median length of {median} word{'s' if median != 1 else ''}, and 4-gram BLEU "
            f"needs at least {BLEU_ORDER}: it would score right answers near 0. Exact match and ROUGE say more here"
        )


class RougeOptions(Options):
    variant: Literal["rouge1", "rouge2", "rougeL"] = Field(
        default="rougeL",
        description="'rouge1' (word overlap), 'rouge2' (word-pair overlap), 'rougeL' (longest common subsequence); "
        "the metric's name in results. List the metric once per variant for several.",
    )
    use_stemmer: bool = Field(default=False, description="Compare Porter-stemmed words (English).")


class Rouge(_LocalMetric):
    """ROUGE F-measure of generated answers, mean over rows (0-1); `variant` rouge1, rouge2 or rougeL."""

    name = module = "rouge"
    Options = RougeOptions
    consumes = frozenset({"text"})

    @property
    def result(self) -> str:
        return self.options.variant

    def key(self) -> str:
        return self.options.variant

    def _args(self) -> dict:
        return {"use_stemmer": self.options.use_stemmer}
