"""Preference rows: the layouts of the `preference` task, read into conversations and checked.

A pair is a prompt (messages {role, content}) and two answers (the assistant turns that follow
it): `chosen`, the better, and `rejected`, the worse. Layouts (`format`):

- `text`: columns prompt, chosen, rejected, each a string (the prompt is one user turn);
- `conversation`: `prompt` a list of messages (or a string: one user turn), `chosen` and
  `rejected` each a string or a list of the assistant turn(s) that answer it (TRL's
  conversational layout);
- `ultrafeedback`: `chosen` and `rejected` are whole conversations, prompt turns included, with
  no prompt column (or a string one, which must be the first user turn): the turns both share
  from the start are the prompt, the rest of each the answer;
- `hh`: `chosen` and `rejected` are whole transcripts as strings, "\\n\\nHuman: ...\\n\\nAssistant: ..."
  (Anthropic HH): the longest shared start that ends right after a "\\n\\nAssistant:" marker is the
  prompt, read into messages, the rest of each the answer;
- `unpaired` (KTO): columns prompt, completion (as in `conversation`) and label: true for a
  desirable completion, false for an undesirable one;
- `auto`: each paired row by what it holds, which tells the paired layouts apart: a list prompt
  is `conversation`; string answers are `text` with a prompt and `hh` without one; list answers
  are `conversation` when they start with an assistant turn, else `ultrafeedback`.

Messages use OpenAI's keys {role, content} or ShareGPT's {from, value}, turn by turn; roles are
system, user, assistant, and ShareGPT's human and gpt, plus the task's `roles` table.

What is wrong with a row is of two kinds. A malformed row (a wrong type, an unknown role, a
prompt that does not match its conversation) is `Malformed`: the task raises a DataError naming
the row. A well-formed pair that cannot teach anything (an empty answer, equal answers, answers
that differ before the last assistant turn) is read with its `bad` reason, counted and reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from plugins.tasks._conversations import LAYOUTS
from runner import clip

FORMATS = ("auto", "text", "conversation", "ultrafeedback", "hh", "unpaired")
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"

# Why a well-formed row is left out, as the notes say it ("3 pairs dropped: 2 with an empty answer").
EMPTY = "with an empty answer"
SAME = "with chosen identical to rejected"
DIVERGED = "whose chosen and rejected differ before their last answer"
PROMPT_FILLS = "whose prompt alone fills max_length"
SAME_WHEN_CUT = "whose answers are identical once cut to max_length"


class Malformed(ValueError):
    """A row that is not in its layout: the message says what is wrong with it."""


@dataclass
class Pair:
    """A row read: the prompt's messages and the answers' assistant turns. `rejected` is None for an
    unpaired row, which has its `label` instead; `bad` says why a well-formed row is left out."""

    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict] | None = None
    label: bool | None = None
    bad: str | None = None


class RowReader:
    """Reads and checks the rows of one layout (`auto`: each row by what it holds)."""

    def __init__(self, format: str = "auto", roles: dict[str, str] | None = None):
        self.format = format
        self.roles = {**LAYOUTS["openai"].roles, **LAYOUTS["sharegpt"].roles, **(roles or {})}

    @property
    def columns(self) -> tuple[str, ...]:
        return {
            "text": ("prompt", "chosen", "rejected"),
            "conversation": ("prompt", "chosen", "rejected"),
            "unpaired": ("prompt", "completion", "label"),
            "hh": ("chosen", "rejected"),
        }.get(self.format, ("chosen", "rejected"))

    @property
    def optional_columns(self) -> tuple[str, ...]:
        return ("prompt",) if self.format in ("auto", "ultrafeedback") else ()

    # -- the row's layout ------------------------------------------------------------------------
    def layout(self, row: dict) -> str:
        if self.format != "auto":
            return self.format
        prompt, chosen, rejected = row.get("prompt"), row.get("chosen"), row.get("rejected")
        if isinstance(prompt, list):
            return "conversation"
        if isinstance(chosen, str) and isinstance(rejected, str):
            return "hh" if prompt is None else "text"
        if isinstance(chosen, list) and isinstance(rejected, list):
            starts = chosen[0] if chosen else None
            if prompt is not None and isinstance(starts, dict) and self._role(starts, 1) == "assistant":
                return "conversation"
            return "ultrafeedback"
        raise Malformed(
            "'chosen' and 'rejected' must both be text or both lists of messages, not "
            f"{_kind(chosen)} and {_kind(rejected)}"
        )

    # -- reading ----------------------------------------------------------------------------------
    def read(self, row: dict) -> Pair:
        """The row as a Pair; Malformed where it is not in its layout."""
        layout = self.layout(row)
        if layout == "hh":
            return self._hh(row)
        if layout == "ultrafeedback":
            return self._ultrafeedback(row)
        prompt = self._prompt(row.get("prompt"), allow_list=layout != "text")
        if layout == "unpaired":
            label = row.get("label")
            if isinstance(label, int) and not isinstance(label, bool) and label in (0, 1):
                label = bool(label)
            if not isinstance(label, bool):
                raise Malformed(f"'label' must be true (desirable) or false (undesirable), not {clip(repr(label))}")
            completion = self._answer(row.get("completion"), "completion", allow_list=True)
            return Pair(prompt, completion, label=label, bad=None if _said(completion) else EMPTY)
        chosen = self._answer(row.get("chosen"), "chosen", allow_list=layout == "conversation")
        rejected = self._answer(row.get("rejected"), "rejected", allow_list=layout == "conversation")
        return _judged(Pair(prompt, chosen, rejected))

    def texts(self, row: dict) -> list[str]:
        """The row's prompt, chosen (or completion) and rejected texts, system messages left out;
        leniently: a malformed row gives what can be read of it."""
        try:
            pair = self.read(row)
        except Malformed:
            return [v for c in ("prompt", "chosen", "rejected", "completion") if isinstance(v := row.get(c), str) and v]
        turns = [*pair.prompt, *pair.chosen, *(pair.rejected or [])]
        return [t["content"] for t in turns if t["role"] != "system" and t["content"]]

    def _prompt(self, value, allow_list: bool) -> list[dict]:
        if isinstance(value, str):
            if not value.strip():
                raise Malformed("'prompt' is empty")
            return [{"role": "user", "content": value}]
        if allow_list and isinstance(value, list):
            turns = self._turns(value, "prompt")
            if not any(t["content"].strip() for t in turns):
                raise Malformed("'prompt' is empty")
            return turns
        wanted = "text or a list of messages" if allow_list else "text"
        raise Malformed(f"'prompt' must be {wanted}, not {_kind(value)}")

    def _answer(self, value, column: str, allow_list: bool) -> list[dict]:
        if isinstance(value, str):
            return [{"role": "assistant", "content": value}]
        if allow_list and isinstance(value, list):
            turns = self._turns(value, column)
            for n, turn in enumerate(turns, 1):
                if turn["role"] != "assistant":
                    raise Malformed(f"'{column}' turn {n}: a {turn['role']} turn; an answer holds assistant turns only")
            return turns
        wanted = "text or a list of assistant messages" if allow_list else "text"
        raise Malformed(f"'{column}' must be {wanted}, not {_kind(value)}")

    def _turns(self, value: list, column: str) -> list[dict]:
        turns = []
        for n, turn in enumerate(value, 1):
            if not isinstance(turn, dict):
                raise Malformed(f"'{column}' turn {n}: must be a message {{role, content}}, not {_kind(turn)}")
            role = self._role(turn, n, column)
            text_key = "content" if turn.get("role") is not None else "value"
            text = turn.get(text_key)
            if not isinstance(text, str):
                raise Malformed(f"'{column}' turn {n}: '{text_key}' must be text, not {_kind(text)}")
            turns.append({"role": role, "content": text})
        return turns

    def _role(self, turn: dict, n: int, column: str = "chosen") -> str:
        """The turn's role (OpenAI's `role`, or ShareGPT's `from`), mapped to system, user or assistant."""
        key = "role" if turn.get("role") is not None else "from"
        name = turn.get(key)
        if name is None:
            raise Malformed(f"'{column}' turn {n}: no 'role' (or ShareGPT's 'from')")
        if not isinstance(name, str):
            raise Malformed(f"'{column}' turn {n}: '{key}' must be text, not {_kind(name)}")
        if name not in self.roles:
            raise Malformed(
                f"'{column}' turn {n}: unknown role '{clip(name)}' (known: {', '.join(self.roles)}; "
                f'map others with the task\'s roles = {{ {clip(name)} = "user" }})'
            )
        return self.roles[name]

    def _ultrafeedback(self, row: dict) -> Pair:
        lists = {}
        for column in ("chosen", "rejected"):
            if not isinstance(row.get(column), list):
                raise Malformed(
                    f"'{column}' must be a list of messages (a whole conversation), not {_kind(row.get(column))}"
                )
            lists[column] = self._turns(row[column], column)
        chosen, rejected = lists["chosen"], lists["rejected"]
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        first_user = next((t["content"] for t in chosen if t["role"] == "user"), None)
        prompt = row.get("prompt")
        if prompt is not None:
            if not isinstance(prompt, str):
                raise Malformed(f"'prompt' must be text (the first user turn) or absent, not {_kind(prompt)}")
            if first_user is None or prompt.strip() != first_user.strip():
                raise Malformed(
                    f"'prompt' ({clip(prompt)!r}) is not the conversation's first user turn "
                    f"({clip(first_user or 'none')!r})"
                )
        if first_user is None:
            raise Malformed("'chosen' has no user turn: a whole conversation starts with the prompt")
        # The answers start after the shared turns, at an assistant turn: the shared turns of equal
        # conversations, or of answers that begin alike, end before the answers' first turn.
        while shared > 0 and (chosen[shared - 1]["role"] == "assistant"):
            shared -= 1
        pair = Pair(chosen[:shared], chosen[shared:], rejected[shared:])
        if not pair.prompt:
            return Pair([], [], [], bad=DIVERGED)
        if any(t["role"] != "assistant" for t in [*pair.chosen, *pair.rejected]):
            pair.bad = DIVERGED
            return pair
        return _judged(pair)

    def _hh(self, row: dict) -> Pair:
        texts = {}
        for column in ("chosen", "rejected"):
            value = row.get(column)
            if not isinstance(value, str):
                raise Malformed(f"'{column}' must be a transcript (text), not {_kind(value)}")
            if ASSISTANT not in value:
                read_as = " (with format = 'auto', text answers and no prompt are read as one)" * (
                    self.format == "auto"
                )
                raise Malformed(f"'{column}' is not a Human/Assistant transcript: no {ASSISTANT!r} marker{read_as}")
            texts[column] = value
        chosen, rejected = texts["chosen"], texts["rejected"]
        common = common_prefix(chosen, rejected)
        marker = chosen.rfind(ASSISTANT, 0, common)
        if marker < 0:  # the transcripts part before their first answer
            return Pair([], [], [], bad=DIVERGED)
        start = marker + len(ASSISTANT)
        answers = [chosen[start:].strip(), rejected[start:].strip()]
        prompt = _transcript_turns(chosen[:marker])
        if not any(t["role"] == "user" for t in prompt):
            raise Malformed(f"'chosen' has no {HUMAN!r} turn before its answer")
        pair = Pair(
            prompt, [{"role": "assistant", "content": answers[0]}], [{"role": "assistant", "content": answers[1]}]
        )
        if any(HUMAN in a for a in answers):
            pair.bad = DIVERGED
            return pair
        return _judged(pair)


def _judged(pair: Pair) -> Pair:
    """The pair with its reason to be left out, if it has one: an empty answer, or equal answers."""
    if not _said(pair.chosen) or not _said(pair.rejected or []):
        pair.bad = EMPTY
    elif [t["content"].strip() for t in pair.chosen] == [t["content"].strip() for t in pair.rejected or []]:
        pair.bad = SAME
    return pair


def _said(turns: list[dict]) -> bool:
    """Whether an answer says something: it has turns, and none of them is empty."""
    return bool(turns) and all(t["content"].strip() for t in turns)


def reasons(dropped: dict[str, int], max_length: int) -> str:
    """Rows left out by reason, as the notes say it: '2 with an empty answer, 1 whose prompt ...'."""
    parts = []
    for reason, n in dropped.items():
        parts.append(f"{n} {reason}" + (f" ({max_length} tokens)" if reason == PROMPT_FILLS else ""))
    return ", ".join(parts)


def common_prefix(a, b) -> int:
    """How many items (characters, token ids) two sequences share from their start."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


_MARKERS = re.compile(r"\n\n(Human|Assistant):")


def _transcript_turns(text: str) -> list[dict]:
    """An HH transcript as messages; text before the first marker, if any, is a system message."""
    pieces = _MARKERS.split(text)
    turns = [{"role": "system", "content": pieces[0].strip()}] if pieces[0].strip() else []
    for name, content in zip(pieces[1::2], pieces[2::2], strict=True):
        turns.append({"role": "user" if name == "Human" else "assistant", "content": content.strip()})
    return turns


def _kind(value) -> str:
    return "nothing" if value is None else type(value).__name__
