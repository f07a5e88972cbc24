"""The built-in answer extractors (`runner.AnswerExtractor`): how reward `answer_match` finds the final
answer in a completion (`extract = ...`) or in a longer reference (`reference_extract = ...`), and how it
compares answers.

An extractor returns the answer it finds as text, or None when there is none (an answer with no
extracted value scores `wrong`, and the trainer's reward-hacking check counts it). A plugin package
registers its own with the `register_extractors` hook; a recipe names it like these.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import Field

from runner import AnswerExtractor, Options, hookimpl

# A number as people write it: an optional sign (not a hyphen between two words or numbers),
# thousands grouped by commas or not, an optional decimal part ("1,000", "-3.5", ".5", "42").
NUMBER = re.compile(r"(?:(?<![\w)])-)?(?<![\d.])(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)")
# A whole value that reads as a number, once normalised (commas between groups of three allowed).
WHOLE_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?")
BOXED = "\\boxed{"


class LastNumber(AnswerExtractor):
    """The last number in the text, its thousands commas removed ("... 1,000." -> "1000")."""

    name = "last_number"

    def extract(self, text: str) -> str | None:
        found = NUMBER.findall(text)
        return found[-1].replace(",", "") if found else None


class Boxed(AnswerExtractor):
    """What the last `\\boxed{...}` holds, nested braces and all (`\\boxed{\\frac{1}{2}}` -> `\\frac{1}{2}`)."""

    name = "boxed"

    def extract(self, text: str) -> str | None:
        start = text.rfind(BOXED)
        while start >= 0:  # an unclosed one is skipped for the one before it
            depth, i = 1, start + len(BOXED)
            while i < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            if depth == 0:
                return text[start + len(BOXED) : i - 1].strip()
            start = text.rfind(BOXED, 0, start)
        return None


class JsonFieldOptions(Options):
    field: str = Field(min_length=1, description="The field of the last JSON object to read.")


class JsonField(AnswerExtractor):
    """A field of the last JSON object in the text (an outer one, not one nested in it), as text: a string as
    it is, any other value as JSON ("3", "true", "[1, 2]")."""

    name = "json_field"
    Options = JsonFieldOptions

    def extract(self, text: str) -> str | None:
        decoder = json.JSONDecoder()
        last, i = None, text.find("{")
        while i >= 0:
            try:
                value, end = decoder.raw_decode(text, i)
            except ValueError:
                i = text.find("{", i + 1)
                continue
            if isinstance(value, dict):
                last = value
            i = text.find("{", end)  # what follows the object, not what is inside it
        field = self.options.field
        if last is None or field not in last or last[field] is None:
            return None
        value = last[field]
        return value if isinstance(value, str) else json.dumps(value)


class AfterOptions(Options):
    marker: str = Field(min_length=1, description="The text the answer follows (`Answer:`).")


class After(AnswerExtractor):
    """What follows the last `marker` up to the end of its line ("Answer: 42\\n..." -> "42")."""

    name = "after"
    Options = AfterOptions

    def extract(self, text: str) -> str | None:
        at = text.rfind(self.options.marker)
        if at < 0:
            return None
        found = text[at + len(self.options.marker) :].split("\n", 1)[0].strip()
        return found or None


class Whole(AnswerExtractor):
    """The whole completion, its surrounding whitespace removed."""

    name = "whole"

    def extract(self, text: str) -> str | None:
        return text.strip() or None


def normal(text: str) -> str:
    """Case folded, whitespace collapsed, one trailing period dropped ("The  Cat." -> "the cat")."""
    text = " ".join(text.casefold().split())
    return text[:-1].rstrip() if text.endswith(".") else text


def number(text: str) -> Decimal | None:
    """The number `text` is ("1,000" -> 1000, "3.0" -> 3), or None when it is not one."""
    if not text or not WHOLE_NUMBER.fullmatch(text) or not any(c.isdigit() for c in text):
        return None
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def same(answer: str, reference: Any, normalize: bool) -> bool:
    """Whether the extracted answer is the reference: as numbers when both are numbers and
    `normalize` is on, else as normalised text (or, without `normalize`, as text with the
    surrounding whitespace removed). A list of references matches when any one does."""
    if isinstance(reference, list | tuple):
        return any(same(answer, r, normalize) for r in reference)
    if isinstance(reference, bool):
        reference = json.dumps(reference)  # "true", as json_field writes it
    numeric = isinstance(reference, int | float)  # a number in the data (JSON): 1e20 is one too
    reference = str(reference)
    if not normalize:
        return answer.strip() == reference.strip()
    a, r = normal(answer), normal(reference)
    x, y = number(a), (Decimal(reference) if numeric else number(r))
    if x is not None and y is not None:
        return x == y
    return a == r


@hookimpl
def register_extractors(register):
    for cls in (LastNumber, Boxed, JsonField, After, Whole):
        register(cls)
