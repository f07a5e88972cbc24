"""Audit `leakage`: training rows that reappear, exactly or nearly, in the validation or test split.

A model scored on rows it was trained on looks better than it is. Before training, every row of the
evaluated splits is compared with the training rows, as one text each (`Task.row_text`):

- exact: the texts are equal after normalisation (`normalise`): Unicode NFKC, casefold, every
  punctuation character (Unicode category P*) replaced by a space, whitespace runs collapsed to
  one space, ends stripped. "Great  movie!" and "great movie" are exact duplicates.
- near: the texts' shingle sets have a Jaccard similarity of at least `similarity`. Candidate pairs
  come from MinHash LSH (`datasketch`); each is then verified by the exact Jaccard of the two
  shingle sets, so no pair is reported because of a MinHash estimate.

Shingles are word bigrams for texts of at least WORD_MIN_WORDS words and character 4-grams for
texts of fewer than CHAR_MAX_WORDS words: a bigram set is too small to tell short rows (tweets)
apart, and character n-grams of long documents are costly. A pair is compared by character
n-grams when both texts are short enough, else by word bigrams; the two ranges overlap so that a
row and a slightly longer variant are always comparable (a pair outside both ranges differs in
length about twofold, so its Jaccard is at most about 0.5, below any allowed `similarity`).

Rows repeated within the training split are not leakage and are ignored: each distinct training
text is compared once, and an evaluated row is shown with the first training row it matches (the
most similar one for near duplicates). Empty texts (nothing left after normalisation) are never
duplicates. The evaluated rows are indexed and the training rows streamed past the index, so memory
grows with the evaluated splits only: 20k training x 2k test rows take ~2.5 s, 100k x 5k ~14 s.

Defaults: no exact duplicate is allowed (`max_exact = 0`): it is always a mistake, and removing it
is cheap. Up to 1% near duplicates are (`max_near = 0.01`): Jaccard 0.8 also pairs honest rows of
formulaic text (templates, short replies), and 1% of contaminated rows moves an accuracy by at most
one point, within the bootstrap interval of a test set of a few thousand rows.
"""

from __future__ import annotations

import functools
import itertools
import re
import sys
import unicodedata
from typing import Any, Literal

from pydantic import Field

from runner import Audit, AuditData, AuditOptions, AuditResult, Fraction, RunContext, hookimpl

WORD_NGRAM = 2  # one changed word in a 20-word sentence keeps Jaccard ~0.81 (trigrams: ~0.71)
CHAR_NGRAM = 4
WORD_MIN_WORDS = 8  # texts this long or longer are shingled by word bigrams
CHAR_MAX_WORDS = 16  # texts shorter than this are shingled by character 4-grams
LSH_RECALL = 0.99  # a pair exactly at the threshold becomes a candidate at least this often
SHOWN_CHARS = 200
SPACES = ("chars", "words")

_SPACE = re.compile(r"\s+")


class LeakageOptions(AuditOptions):
    """Options of the `leakage` audit."""

    splits: list[Literal["validation", "test"]] = Field(
        default_factory=lambda: ["validation", "test"],
        min_length=1,
        description="Splits compared with the training split; a split the data lacks is skipped.",
    )
    similarity: float = Field(
        default=0.8,
        ge=0.5,
        le=1.0,
        description="Jaccard similarity of shingle sets from which two rows are near duplicates (0.5 to 1).",
    )
    max_exact: Fraction = Field(
        default=0.0,
        description="Largest fraction of an evaluated split's rows that may duplicate a training row exactly.",
    )
    max_near: Fraction = Field(
        default=0.01,
        description=(
            "Largest fraction of an evaluated split's rows that may nearly duplicate a training row "
            "(exact duplicates not counted); a little is normal for templated or formulaic text."
        ),
    )
    drop: bool = Field(
        default=False,
        description="Leave the duplicated validation/test rows out instead of failing (the result lists them).",
    )
    examples: int = Field(default=10, ge=0, description="How many duplicate pairs to list in the result.")
    num_perm: int = Field(
        default=128, ge=16, le=1024, description="MinHash permutations: more find near duplicates more surely, slower."
    )


def normalise(text: str) -> str:
    """The text as exact duplicates are compared: NFKC, casefolded, punctuation replaced by spaces,
    whitespace collapsed, ends stripped."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_punctuation())
    return _SPACE.sub(" ", text).strip()


@functools.cache
def _punctuation() -> dict[int, str]:
    """A `str.translate` table mapping every Unicode punctuation character to a space (built once,
    ~0.3 s: per-character category look-ups would cost that on every 10k rows)."""
    return {c: " " for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)).startswith("P")}


def word_shingles(words: list[str]) -> set[str]:
    """Word bigrams of a normalised text split into words (the text itself when it has one word)."""
    if len(words) < WORD_NGRAM:
        return {" ".join(words)}
    return {" ".join(words[i : i + WORD_NGRAM]) for i in range(len(words) - WORD_NGRAM + 1)}


def char_shingles(text: str) -> set[str]:
    """Character 4-grams of a normalised text (the text itself when it is shorter)."""
    if len(text) <= CHAR_NGRAM:
        return {text}
    return {text[i : i + CHAR_NGRAM] for i in range(len(text) - CHAR_NGRAM + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    """Exact Jaccard similarity of two sets."""
    if not a and not b:
        return 1.0
    common = len(a & b)
    return common / (len(a) + len(b) - common)


def lsh_params(similarity: float, num_perm: int) -> tuple[int, int]:
    """LSH bands and rows per band: the most rows per band (fewest chance candidates) with which a
    pair at exactly `similarity` still shares a band with probability LSH_RECALL. datasketch's own
    optimum weighs missed pairs and false candidates equally and misses ~60% of pairs at the
    threshold; false candidates cost only a verification here, missed pairs a wrong verdict."""
    best = (num_perm, 1)  # one row per band: the surest recall
    for rows in range(2, num_perm // 2 + 1):  # at least two bands
        bands = num_perm // rows
        if 1 - (1 - similarity**rows) ** bands >= LSH_RECALL:
            best = (bands, rows)
    return best


def _space(text: str, space: str) -> set[str] | None:
    """A normalised text's shingles in `space` ("chars" or "words"), or None when its length is outside
    that space's range."""
    words = text.split()
    if space == "words":
        return word_shingles(words) if len(words) >= WORD_MIN_WORDS else None
    return char_shingles(text) if len(words) < CHAR_MAX_WORDS else None


class _Shingled:
    """A normalised text's shingle sets in both spaces (None where its length is outside the range)."""

    __slots__ = ("chars", "words")

    def __init__(self, text: str):
        self.words = _space(text, "words")
        self.chars = _space(text, "chars")

    def similarity(self, other: _Shingled) -> float:
        """Jaccard in the space both are compared in (characters if both are short), or 0."""
        if self.chars is not None and other.chars is not None:
            return jaccard(self.chars, other.chars)
        if self.words is not None and other.words is not None:
            return jaccard(self.words, other.words)
        return 0.0


def _short(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1].rstrip() + "…"


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


class Leakage(Audit):
    """Validation and test rows that duplicate training rows, exactly or nearly (MinHash LSH)."""

    name = "leakage"
    Options = LeakageOptions

    def check_data(self, data: AuditData, ctx: RunContext | None = None) -> AuditResult:
        """Compare each evaluated split with the training split; fail when a split has more
        duplicates than `max_exact` or `max_near` allow."""
        o = self.options
        thresholds = {"max_exact": o.max_exact, "max_near": o.max_near, "similarity": o.similarity}
        splits = [s for s in dict.fromkeys(o.splits) if data.size(s)]
        if not splits or not data.size("train"):
            missing = "training rows" if not data.size("train") else " or ".join(o.splits) + " rows"
            return AuditResult(None, f"nothing to compare: the data has no {missing}", {}, thresholds, [])

        index = _EvalIndex({split: data.texts(split) for split in splits}, o.similarity, o.num_perm)
        train = data.texts("train")
        found = index.scan(train)
        figures: dict[str, Any] = {}
        passed = True
        for split in splits:
            rows = data.size(split)
            exact = sum(1 for p in found[split] if p["kind"] == "exact")
            near = len(found[split]) - exact
            figures[split] = {
                "rows": rows,
                "exact": exact,
                "near": near,
                "exact_fraction": exact / rows,
                "near_fraction": near / rows,
            }
            passed = passed and exact / rows <= o.max_exact and near / rows <= o.max_near

        examples = [
            {
                "split": p["split"],
                "kind": p["kind"],
                "similarity": round(p["similarity"], 4),
                "train": data.where("train", p["train"]),
                "eval": data.where(p["split"], p["eval"]),
                "train_text": _short(train[p["train"]]),
                "eval_text": _short(index.texts[p["split"]][p["eval"]]),
            }
            for p in _spread(found, o.examples)
        ]
        summary = "; ".join(self._sentence(split, figures[split]) for split in splits)
        if o.drop:  # the evaluation splits are cleaned instead: what remains has no duplicate
            drop = {split: sorted(p["eval"] for p in found[split]) for split in splits if found[split]}
            dropped = sum(map(len, drop.values()))
            summary += f"; left out {dropped} of them" if dropped else "; nothing to leave out"
            return AuditResult(True, summary, figures, thresholds, examples, drop=drop)
        allowed = f"{100 * o.max_exact:g}% exact, {100 * o.max_near:g}% near"
        summary += f" (allowed: {allowed})" if passed else f": more than allowed ({allowed})"
        return AuditResult(passed, summary, figures, thresholds, examples)

    def _sentence(self, split: str, f: dict[str, Any]) -> str:
        return (
            f"{f['exact']} of {f['rows']} {split} rows ({_percent(f['exact_fraction'])}) duplicate training rows "
            f"exactly, {f['near']} more nearly (Jaccard >= {self.options.similarity:g})"
        )


def _spread(found: dict[str, list[dict[str, Any]]], limit: int) -> list[dict[str, Any]]:
    """Up to `limit` pairs, taken in turn from each (split, kind) group so that every group shows."""
    groups = [[p for p in pairs if p["kind"] == kind] for pairs in found.values() for kind in ("exact", "near")]
    turns = itertools.chain.from_iterable(itertools.zip_longest(*groups))
    return [p for p in turns if p is not None][:limit]


class _EvalIndex:
    """The evaluated rows, indexed: their normalised texts for exact matches, MinHash LSH (one
    index per shingle space) for near ones. The training rows are streamed past it, so memory
    grows with the evaluated splits only, not with a training set of 100k rows."""

    def __init__(self, texts: dict[str, list[str]], similarity: float, num_perm: int):
        from datasketch import MinHash, MinHashLSH

        self.texts = texts
        self.similarity = similarity
        self._template = MinHash(num_perm=num_perm)
        params = lsh_params(similarity, num_perm)
        self.lsh = {space: MinHashLSH(num_perm=num_perm, params=params) for space in SPACES}
        self.exact: dict[str, list[tuple[str, int]]] = {}  # normalised text -> evaluated rows with it
        self.shingles: dict[tuple[str, int], _Shingled] = {}
        for split, rows in texts.items():
            for j, text in enumerate(rows):
                key = normalise(text)
                if not key:
                    continue
                self.exact.setdefault(key, []).append((split, j))
                shingled = self.shingles[split, j] = _Shingled(key)
                for space in SPACES:
                    if getattr(shingled, space) is not None:
                        self.lsh[space].insert((split, j), self.minhash(getattr(shingled, space)))

    def minhash(self, shingles: set[str]):
        """The MinHash of a shingle set (copies of one template share its permutations)."""
        minhash = self._template.copy()
        minhash.update_batch([s.encode("utf-8") for s in shingles])
        return minhash

    def scan(self, train: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Per split, each evaluated row that duplicates a training row, in row order: {"split",
        "eval", "kind", "train", "similarity"}. An exact match (the first training row with the
        text) takes precedence; else the most similar verified near match (the first on ties)."""
        exact: dict[tuple[str, int], int] = {}
        near: dict[tuple[str, int], tuple[float, int]] = {}
        seen: set[str] = set()
        for i, text in enumerate(train):
            key = normalise(text)
            if not key or key in seen:  # a repeated training row adds nothing: the first one counts
                continue
            seen.add(key)
            for row in self.exact.get(key, ()):
                exact.setdefault(row, i)
            mine = _Shingled(key)
            for space in SPACES:
                shingles = getattr(mine, space)
                if shingles is None:
                    continue
                for row in self.lsh[space].query(self.minhash(shingles)):
                    score = mine.similarity(self.shingles[row])
                    if score >= self.similarity and (row not in near or score > near[row][0]):
                        near[row] = (score, i)
        found: dict[str, list[dict[str, Any]]] = {split: [] for split in self.texts}
        for split, j in sorted(exact.keys() | near.keys()):  # row order within each split
            if (split, j) in exact:
                kind, score, i = "exact", 1.0, exact[split, j]
            else:
                kind, (score, i) = "near", near[split, j]
            found[split].append({"split": split, "eval": j, "kind": kind, "train": i, "similarity": score})
        return found


@hookimpl
def register_audits(register):
    register(Leakage)
