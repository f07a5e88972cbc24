"""Rows as conversations: the data formats of the `instruction` task, read and checked.

A conversation is a list of turns {role, content}, role one of system, user, assistant (an alpaca
row's user turn also carries its `input`). Formats:

- `alpaca`: columns instruction, input (optional), output, system (optional);
- `openai` (older name `chat`): a `messages` column, a list of {role, content};
- `sharegpt`: a `conversations` column, a list of {from, value}; `from` is human, gpt or system,
  and the equally common user and assistant are read as themselves.

A conversation format reads another column with `column`, and other role names with `roles`, a
table of the data's names to system, user or assistant, added to the format's own. A turn of a
conversation format may say whether it is trained: `train` (true or false) or `weight` (1 or 0,
as in OpenAI's and Axolotl's data). It overrides the turn's default: see `trained`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from runner import clip

ROLES = ("system", "user", "assistant")
Role = Literal["system", "user", "assistant"]
ALIASES = {"chat": "openai"}  # older names of formats


@dataclass(frozen=True)
class Layout:
    """Where a conversation format keeps its turns, and the names its turns use."""

    column: str
    role_key: str
    text_key: str
    roles: dict[str, str]


LAYOUTS = {
    "openai": Layout("messages", "role", "content", {role: role for role in ROLES}),
    "sharegpt": Layout(
        "conversations",
        "from",
        "value",
        {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"},
    ),
}


class Reader:
    """Reads and checks rows of one format (`column` and `roles` apply to conversation formats)."""

    def __init__(self, format: str, column: str | None = None, roles: dict[str, str] | None = None):
        self.format = ALIASES.get(format, format)
        self.layout = LAYOUTS.get(self.format)
        if self.layout is None:  # alpaca
            self.column, self.roles = "instruction", {}
        else:
            self.column = column or self.layout.column
            self.roles = {**self.layout.roles, **(roles or {})}

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,) if self.layout else ("instruction", "output")

    @property
    def optional_columns(self) -> tuple[str, ...]:
        return () if self.layout else ("input", "system")

    # -- checking -----------------------------------------------------------------------------------
    def problem(self, row: dict) -> str | None:
        """What is wrong with the row, or None."""
        if self.layout is None:
            for column in ("instruction", "output"):
                if not isinstance(row.get(column), str) or not row[column].strip():
                    return f"'{column}' is empty"
            return None
        role_key, text_key = self.layout.role_key, self.layout.text_key
        turns = row.get(self.column)
        if not isinstance(turns, list) or not turns:
            return f"'{self.column}' must be a non-empty list of {{{role_key}, {text_key}}}"
        for n, turn in enumerate(turns, 1):
            problem = self._turn_problem(turn, role_key, text_key)
            if problem:
                return f"turn {n}: {problem}"
        if not any(self.roles[turn[role_key]] == "assistant" for turn in turns):
            names = ", ".join(name for name, role in self.roles.items() if role == "assistant")
            return f"no assistant turn ({role_key} {names}): nothing to learn from"
        return None

    def _turn_problem(self, turn, role_key: str, text_key: str) -> str | None:
        if not isinstance(turn, dict):
            return f"must be a table {{{role_key}, {text_key}}}, not {type(turn).__name__}"
        role = turn.get(role_key)
        if role is None:
            return f"no '{role_key}'"
        if not isinstance(role, str):
            return f"'{role_key}' must be text, not {type(role).__name__}"
        if role not in self.roles:
            return (
                f"unknown role '{clip(role)}' (known: {', '.join(self.roles)}; "
                f'map others with the task\'s roles = {{ {clip(role)} = "user" }})'
            )
        text = turn.get(text_key)
        if not isinstance(text, str):
            return f"'{text_key}' must be text, not {'nothing' if text is None else type(text).__name__}"
        if not text.strip():
            return f"'{text_key}' is empty"
        return _flag(turn)[1]

    # -- reading ------------------------------------------------------------------------------------
    def turns(self, row: dict) -> list[dict]:
        """The row as turns {role, content} (and `input`, `train` where the row has them)."""
        if self.layout is None:
            user = {"role": "user", "content": row["instruction"]}
            if row.get("input"):
                user["input"] = row["input"]
            turns = [user, {"role": "assistant", "content": row["output"]}]
            if row.get("system"):
                turns.insert(0, {"role": "system", "content": row["system"]})
            return turns
        out = []
        for turn in row[self.column]:
            out.append({"role": self.roles[turn[self.layout.role_key]], "content": turn[self.layout.text_key]})
            train = _flag(turn)[0]
            if train is not None:
                out[-1]["train"] = train
        return out

    def texts(self, row: dict) -> list[str]:
        """The row's user and assistant texts (and alpaca input), leniently: no check, nothing raised."""
        if self.layout is None:
            parts = [row.get("instruction"), row.get("input"), row.get("output")]
        else:
            turns = row.get(self.column) if isinstance(row.get(self.column), list) else []
            role_key, text_key = self.layout.role_key, self.layout.text_key
            parts = [
                t.get(text_key) for t in turns if isinstance(t, dict) and self.roles.get(t.get(role_key)) != "system"
            ]
        return [p for p in parts if isinstance(p, str) and p]


def reader_for(row: dict, own: Reader) -> Reader:
    """The reader of a row: the task's own when the row has its column, else the default reader of
    the format whose column the row has (a few-shot row may come from a source of another format)."""
    if own.column in row:
        return own
    for name, layout in LAYOUTS.items():
        if isinstance(row.get(layout.column), list):
            return Reader(name)
    return Reader("alpaca")


def _flag(turn: dict) -> tuple[bool | None, str | None]:
    """A turn's own `train` (or `weight`) flag, None where it has none; and what is wrong with it."""
    train, weight = turn.get("train"), turn.get("weight")
    if train is not None and not isinstance(train, bool):
        return None, f"'train' must be true or false, not {clip(repr(train))}"
    if weight is not None:
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight not in (0, 1):
            return None, f"'weight' must be 0 or 1, not {clip(repr(weight))}"
        if train is not None and train != bool(weight):
            return None, f"'train' ({str(train).lower()}) and 'weight' ({weight:g}) disagree"
        return bool(weight), None
    return train, None


def trained(turns: list[dict], train_on_inputs: bool) -> list[bool]:
    """Which turns the loss covers: assistant turns, and with train_on_inputs the others too, unless
    a turn's own flag says otherwise."""
    return [turn.get("train", train_on_inputs or turn["role"] == "assistant") for turn in turns]


def plain(turns: list[dict]) -> list[dict]:
    """The turns as a template renders them: without their training flags."""
    return [{k: v for k, v in turn.items() if k != "train"} for turn in turns]
