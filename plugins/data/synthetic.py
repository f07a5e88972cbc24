"""Data source `synthetic`: learnable, tweet-like data generated offline from a seed.

`kind = "sentiment"` gives short posts with a 3-way label (negative, neutral, positive). The label
depends on the sentiment word and on negation ("not great" is negative, "not terrible" neutral),
and posts carry distracting clauses and noise words, so a model has to learn more than a keyword
lookup, yet a tiny model trained for a minute reaches high accuracy. `kind = "text"` gives the
same posts without labels, for causal language modelling.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Literal

from pydantic import Field

from runner import DataSource, DataSourceOptions, Fraction, RawSplit, RunContext, hookimpl

POSITIVE = [
    "great",
    "amazing",
    "wonderful",
    "excellent",
    "lovely",
    "fantastic",
    "good",
    "superb",
    "brilliant",
]
NEGATIVE = ["terrible", "awful", "horrible", "bad", "disappointing", "boring", "poor", "dreadful", "useless"]
NEUTRAL = ["okay", "fine", "average", "ordinary", "normal", "alright", "standard", "so-so", "unremarkable"]
SUBJECTS = [
    "the movie", "the pizza", "this phone", "the hotel", "my flight", "the concert", "the service",
    "our teacher", "the new update", "the game", "the coffee", "this album", "the weather", "the bus",
    "the meeting", "my new laptop", "the show", "the burger", "the book", "the app",
]  # fmt: skip
VERBS = ["was", "is", "looks", "seems", "felt", "turned out"]
ADVERBS = ["", "", "really", "so", "pretty", "very", "kind of", "totally"]
OPENERS = ["", "", "", "honestly", "wow", "so", "lol", "tbh", "well", "ok", "update:"]
ENDINGS = ["", "", "", "today", "!!", "again", "#mondays", "this week", ":)", "...", "for real"]
MENTIONS = ["", "", "", "", "@friend", "@support", "@newsdesk"]
LABELS = ["negative", "neutral", "positive"]


def _post(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(LABELS)
    negate = label != "positive" and rng.random() < 0.3
    if label == "positive":
        word, neg_word = rng.choice(POSITIVE), None
    elif label == "negative":
        word, neg_word = rng.choice(NEGATIVE), rng.choice(POSITIVE)
    else:
        word, neg_word = rng.choice(NEUTRAL), rng.choice(NEGATIVE)
    # negation flips the meaning: "not <positive>" is negative, "not <negative>" is neutral
    if negate and neg_word is not None:
        phrase = f"not {rng.choice(['', 'very ', 'that '])}{neg_word}".replace("  ", " ")
    else:
        phrase = f"{rng.choice(ADVERBS)} {word}".strip()
    subject = rng.choice(SUBJECTS)
    parts = [rng.choice(MENTIONS), rng.choice(OPENERS), subject, rng.choice(VERBS), phrase]
    if rng.random() < 0.35:  # a neutral aside that must not change the label
        other = rng.choice([s for s in SUBJECTS if s != subject])
        parts += [rng.choice(["and", "but", "while"]), other, rng.choice(VERBS), rng.choice(NEUTRAL)]
    parts.append(rng.choice(ENDINGS))
    return " ".join(p for p in parts if p), label


QUESTIONS = [
    "Classify the sentiment of this post.",
    "Is this post positive, negative or neutral?",
    "What is the sentiment here?",
    "Tell me how the writer feels: positive, negative or neutral.",
]
REASONS = {
    "positive": "It praises {subject}.",
    "negative": "It complains about {subject}.",
    "neutral": "It has no strong feeling about {subject}.",
}


def generate(rows: int, seed: int, label_noise: float = 0.0) -> list[dict[str, str]]:
    """Rows of {"text", "label"}; the same arguments always give the same rows."""
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        text, label = _post(rng)
        if label_noise and rng.random() < label_noise:
            label = rng.choice([x for x in LABELS if x != label])
        out.append({"text": text, "label": label})
    return out


PEOPLE = ["alice smith", "bob jones", "carol", "dmitri ivanov", "emma", "farid khan", "grace lee", "hiro tanaka"]
PLACES = ["paris", "new york", "berlin", "lagos", "tokyo", "lima", "cairo", "oslo", "san francisco"]
ORGS = ["acme corp", "globex", "initech", "the red cross", "umbrella labs", "stark industries"]
NER_TEMPLATES = [
    "{PER} flew to {LOC} yesterday",
    "{PER} works for {ORG} in {LOC}",
    "yesterday {ORG} hired {PER}",
    "{ORG} opened an office in {LOC}",
    "i met {PER} at the {ORG} party",
    "the weather in {LOC} was lovely",
    "{PER} and {PER} visited {LOC}",
    "nothing happened today",
]


def ner_row(rng: random.Random) -> dict[str, list[str]]:
    """Words with BIO tags: people (PER), places (LOC) and organisations (ORG) in short sentences."""
    pools = {"PER": PEOPLE, "LOC": PLACES, "ORG": ORGS}
    tokens, tags = [], []
    for word in rng.choice(NER_TEMPLATES).split():
        if word.startswith("{"):
            kind = word.strip("{}")
            for i, part in enumerate(rng.choice(pools[kind]).split()):
                tokens.append(part)
                tags.append(("B-" if i == 0 else "I-") + kind)
        else:
            tokens.append(word)
            tags.append("O")
    return {"tokens": tokens, "tags": tags}


def as_instruction(row: dict[str, str], rng: random.Random) -> dict[str, str]:
    return {"instruction": rng.choice(QUESTIONS), "input": row["text"], "output": row["label"]}


def as_chat(row: dict[str, str], rng: random.Random) -> dict[str, list]:
    """A two-turn conversation: the label, then why (naming the subject of the post)."""
    subject = next((s for s in SUBJECTS if s in row["text"]), "it")
    return {
        "messages": [
            {"role": "user", "content": f"{rng.choice(QUESTIONS)}\n{row['text']}"},
            {"role": "assistant", "content": row["label"]},
            {"role": "user", "content": "Why?"},
            {"role": "assistant", "content": REASONS[row["label"]].format(subject=subject)},
        ]
    }


def as_pair(row: dict[str, str], rng: random.Random) -> dict[str, str]:
    """A preference pair whose better answer is checkable by a rule: the post's sentiment beats a
    wrong one (drawn from the other two labels)."""
    wrong = rng.choice([label for label in LABELS if label != row["label"]])
    return {"prompt": f"{rng.choice(QUESTIONS)}\n{row['text']}", "chosen": row["label"], "rejected": wrong}


def as_unpaired(row: dict[str, str], rng: random.Random) -> dict:
    """An answer labelled desirable or not (for KTO), by the same rule as `as_pair`: the post's
    sentiment (desirable, half the rows) or a wrong one (undesirable)."""
    pair = as_pair(row, rng)
    good = rng.random() < 0.5
    return {"prompt": pair["prompt"], "completion": pair["chosen" if good else "rejected"], "label": good}


def arithmetic_row(rng: random.Random, noise: float = 0.0) -> dict[str, str]:
    """A sum or difference of two numbers below 10 (never negative), asked for in one fixed wording
    ("What is 7 + 5?", alpaca columns) and answered in a fixed format checkable by a rule ("7 + 5 = 12"),
    with the bare result in `answer` (what a reward compares an answer with). One wording keeps the
    operands at the same place in every prompt, so a tiny model learns to copy them quickly, and every
    prompt is the same length (no padding in a batch of them).

    `noise` (the source's `label_noise`) is the share of rows whose written answer is one too high
    ("7 + 5 = 13"): a careless teacher for SFT to imitate. `answer` stays the true result, so a reward
    that checks it can correct what SFT learnt."""
    a, b = rng.randrange(10), rng.randrange(10)
    if rng.random() < 0.5:
        a, b, op, result = max(a, b), min(a, b), "-", abs(a - b)
    else:
        op, result = "+", a + b
    written = result + 1 if noise and rng.random() < noise else result
    return {
        "instruction": f"What is {a} {op} {b}?",
        "output": f"{a} {op} {b} = {written}",
        "answer": str(result),
    }


class SyntheticOptions(DataSourceOptions):
    kind: Literal["sentiment", "text", "instruction", "chat", "ner", "preference", "unpaired", "arithmetic"] = Field(
        default="sentiment",
        description="'sentiment': posts with a 3-way label; 'text': the posts alone; 'instruction': "
        "instruction/input/output rows asking for the label; 'chat': two-turn conversations about it; "
        "'ner': words with BIO tags for people, places and organisations; 'preference': prompt/chosen/"
        "rejected pairs asking for the label, the right label chosen over a wrong one; 'unpaired': prompt/"
        "completion/label rows (task format 'unpaired', for KTO), the right label desirable, a wrong one not; "
        "'arithmetic': instruction/output/answer rows asking 'What is 7 + 5?' (a sum or a non-negative "
        "difference of numbers below 10), answered as '7 + 5 = 12' (answer '12'), for rewards to check; with "
        "label_noise, that share of the written answers is one too high (answer keeps the true result).",
    )
    rows: int = Field(default=3000, gt=0, le=10_000_000, description="How many rows to generate.")
    seed: int = Field(default=0, ge=0, description="Generator seed (independent of run.seed).")
    label_noise: Fraction = Field(default=0.0, description="Share of rows given a wrong label at random.")


class Synthetic(DataSource):
    """Generated tweet-like posts with a 3-way sentiment label; offline and learnable."""

    name = "synthetic"
    Options = SyntheticOptions

    def _rows(self) -> list[dict]:
        o = self.options
        rng = random.Random(o.seed + 1)
        if o.kind == "ner":
            return [ner_row(rng) for _ in range(o.rows)]
        if o.kind == "arithmetic":
            return [arithmetic_row(rng, o.label_noise) for _ in range(o.rows)]
        rows = generate(o.rows, o.seed, o.label_noise)
        if o.kind == "text":
            return [{"text": r["text"]} for r in rows]
        if o.kind == "instruction":
            return [as_instruction(r, rng) for r in rows]
        if o.kind == "chat":
            return [as_chat(r, rng) for r in rows]
        if o.kind == "preference":
            return [as_pair(r, rng) for r in rows]
        if o.kind == "unpaired":
            return [as_unpaired(r, rng) for r in rows]
        return rows

    def load(self, ctx: RunContext) -> dict[str, RawSplit]:
        from datasets import Dataset

        o = self.options
        origin = f"synthetic {o.kind} data (seed {o.seed})"
        return {"all": RawSplit(Dataset.from_list(self._rows()), origin, "row", 1)}

    def fingerprint(self, ctx: RunContext) -> dict:
        blob = json.dumps(self._rows()).encode()
        return {"generator": self.options.model_dump(), "content_sha256": hashlib.sha256(blob).hexdigest()}


@hookimpl
def register_data_sources(register):
    register(Synthetic)
