"""Counterfactual rewriting: swap the terms of one group (she, woman, Mary) for their counterparts in
another (he, man, John).

Term groups are lists aligned by position: the i-th term of every group are counterparts. A term
may be listed twice in its own group when it has two counterparts ("her" is both "him" and "his");
which one is used then depends on the next word (see `TermGroups.rewrite`). Matching is whole-word,
case-insensitive and Unicode-aware; the replacement takes the case of the word it replaces. Every
group's terms are swapped in one pass, so a text that mentions two groups ("he ... her") rewritten
into one of them mentions only that one ("she ... her"). Pure text: no torch, deterministic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Words after which a pronoun with two counterparts is not a possessive determiner: "gave her the
# book" is "him", "her book" is "his". English; a heuristic that gets common sentences right.
_FUNCTION_WORDS = """
    a an the this that these those some any no every each all both either neither such what which whose
    i me my you your he him his she her hers it its we us our they them their who whom
    am is are was were be been being has have had do does did will would can could shall should may might must
    not and or but nor so yet if when while because as than then though although unless until since whether
    to of in on at by for from with without into onto upon about over under above below after before
    through across along around behind beside between near toward towards within like
    up down out off away back again too very just only also even still already always never often
    soon later once twice now today tonight tomorrow yesterday here there well really alone together instead
    home anyway please more most much many how why where
"""
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS.split())

_NEXT_WORD = re.compile(r"\s*(\w+)")


class TermError(ValueError):
    """The term groups are malformed (fewer than two groups, unequal lengths, a term in two groups)."""


def _key(term: str) -> str:
    """How a term is looked up: lower case, single spaces."""
    return " ".join(term.split()).lower()


def _with_case(replacement: str, matched: str, listed: str) -> str:
    """`replacement` in the case of `matched` ("She" -> "He", "SHE" -> "HE"); a match written as the
    term is listed keeps the counterpart as listed ("Mary" -> "John")."""
    if matched == listed:
        return replacement
    letters = [c for c in matched if c.isalpha()]
    if len(letters) > 1 and matched.isupper():
        return replacement.upper()
    if letters and letters[0].isupper():
        return replacement[:1].upper() + replacement[1:]
    if matched.islower():
        return replacement.lower()
    return replacement


@dataclass
class TermGroups:
    """Aligned term groups, e.g. {"female": ["she", "her", ...], "male": ["he", "his", ...]}.

    `before_noun` names, per group, the counterparts to use before a content word where a term has
    two (his -> "her" before a noun, "hers" elsewhere)."""

    groups: dict[str, list[str]]
    before_noun: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = validate_groups(self.groups, self.before_noun)
        if problem:
            raise TermError(problem)
        # term key -> (its group, the positions it holds in that group)
        self._owner: dict[str, tuple[str, list[int]]] = {}
        self._listed: dict[str, str] = {}  # term key -> the term as first listed
        for group, terms in self.groups.items():
            for i, term in enumerate(terms):
                key = _key(term)
                self._owner.setdefault(key, (group, []))[1].append(i)
                self._listed.setdefault(key, term)
        self._before = {g: {_key(t) for t in terms} for g, terms in self.before_noun.items()}
        # Longest terms first, so that a phrase wins over a word it starts with.
        alternatives = sorted(self._owner, key=lambda k: (-len(k), k))
        body = "|".join(r"\s+".join(re.escape(w) for w in k.split()) for k in alternatives)
        self._pattern = re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE)

    @classmethod
    def from_table(cls, table: dict) -> TermGroups:
        """From a parsed file or recipe table: either {group: [terms]} or
        {groups = {group: [terms]}, before_noun = {group: [terms]}}."""
        if not isinstance(table, dict):
            raise TermError("expected a table of groups, e.g. {female = ['she', ...], male = ['he', ...]}")
        if "groups" in table:
            extra = set(table) - {"groups", "before_noun"}
            if extra:
                raise TermError(f"unknown keys beside 'groups': {', '.join(sorted(extra))}")
            return cls(_lists(table["groups"], "groups"), _lists(table.get("before_noun", {}), "before_noun"))
        return cls(_lists(table, None))

    @property
    def names(self) -> list[str]:
        return list(self.groups)

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """The terms in `text`: (start, end, group) each, in order."""
        out = []
        for m in self._pattern.finditer(text):
            owner = self._owner.get(_key(m.group()))
            if owner is not None:
                out.append((m.start(), m.end(), owner[0]))
        return out

    def mentions(self, text: str) -> list[str]:
        """The groups whose terms `text` contains, in the order of `groups`."""
        found = {group for _, _, group in self.find(text)}
        return [g for g in self.groups if g in found]

    def rewrite(self, text: str, target: str) -> str:
        """`text` with every other group's terms replaced by their counterparts in `target`.

        Where a term has several counterparts, the one listed in `before_noun` is used when the next
        word is a content word ("her book" -> "his book"), another one otherwise ("saw her." ->
        "saw him.")."""
        if target not in self.groups:
            raise KeyError(f"no term group '{target}' (groups: {', '.join(self.groups)})")
        wanted = self.groups[target]

        def swap(m: re.Match) -> str:
            matched = m.group()
            key = _key(matched)
            owner = self._owner.get(key)
            if owner is None or owner[0] == target:
                return matched
            candidates = list(dict.fromkeys(wanted[i] for i in owner[1]))
            choice = candidates[0]
            if len(candidates) > 1:
                before = [c for c in candidates if _key(c) in self._before.get(target, ())]
                others = [c for c in candidates if c not in before] or candidates
                nxt = _NEXT_WORD.match(text, m.end())
                content = nxt is not None and nxt.group(1).lower() not in FUNCTION_WORDS
                choice = before[0] if content and before else others[0]
            return _with_case(choice, matched, self._listed[key])

        return self._pattern.sub(swap, text)

    def counterfactuals(self, text: str) -> dict[str, str]:
        """`text` rewritten into each group, for a text that mentions some term; {} for one that does not."""
        if not self.find(text):
            return {}
        return {group: self.rewrite(text, group) for group in self.groups}


def _lists(table, where: str | None) -> dict[str, list[str]]:
    prefix = f"{where}." if where else ""
    if not isinstance(table, dict):
        raise TermError(f"{where or 'terms'}: expected a table of groups")
    for group, terms in table.items():
        if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
            raise TermError(f"{prefix}{group}: expected an array of strings")
    return {str(g): list(t) for g, t in table.items()}


def validate_groups(groups: dict[str, list[str]], before_noun: dict[str, list[str]] | None = None) -> str | None:
    """What is wrong with these term groups, or None: at least two groups, equal lengths, no empty
    term, no term in two groups; `before_noun` terms must belong to their group."""
    if len(groups) < 2:
        return f"name at least two term groups to swap between (got {len(groups)})"
    lengths = {g: len(t) for g, t in groups.items()}
    if 0 in lengths.values():
        return f"term group '{min(lengths, key=lengths.get)}' is empty"
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{g} has {n}" for g, n in lengths.items())
        return f"term groups must be aligned counterparts of equal length ({shown})"
    owner: dict[str, str] = {}
    for group, terms in groups.items():
        for term in terms:
            if not re.search(r"\w", term):
                return f"term {term!r} in group '{group}' has no letter or digit"
            key = _key(term)
            if owner.setdefault(key, group) != group:
                return f"term '{term}' is in two groups: '{owner[key]}' and '{group}'"
    for group, terms in (before_noun or {}).items():
        if group not in groups:
            return f"before_noun names an unknown group '{group}'"
        stray = [t for t in terms if owner.get(_key(t)) != group]
        if stray:
            return f"before_noun.{group}: {', '.join(stray)} not in group '{group}'"
    return None
