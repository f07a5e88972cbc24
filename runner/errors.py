"""User-facing errors: one clear message each, with file, line and key path.

Every error a user can fix is a `FinetuneError`. The CLI prints it without a traceback and exits
with its `exit_code` (2 for user errors); `--debug` shows the traceback too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

KeyPath = tuple[str | int, ...]

# How much of a user's value an error repeats: enough to recognise it, never a 10 MB string.
SHOWN_CHARS = 200
# No line of an error is longer than this, whatever it quotes (a key, a path, an override).
LINE_CHARS = 2000


def clip(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text`, or its first `limit` characters with an ellipsis and the full length."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"


def clip_lines(text: str, limit: int = LINE_CHARS) -> str:
    """Cut every over-long line of a message in its middle, keeping its start and end."""
    lines = text.split("\n")
    if all(len(line) <= limit for line in lines):
        return text
    keep = limit // 2
    return "\n".join(
        line if len(line) <= limit else f"{line[:keep]} … ({len(line) - 2 * keep:,} characters cut) … {line[-keep:]}"
        for line in lines
    )


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def format_key(path: Sequence[str | int], limit: int | None = 100) -> str:
    """Render a key path the way a user writes it and `--set` takes it: `data.sources[0].path`
    (runner.recipe.keys reads it back). Each key is clipped to `limit` characters for display;
    `limit=None` spells it whole, as a key that must stay unique does."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:  # a key that is not a bare TOML key is quoted, as in the file: sweep.space."training.epochs"
            text = part if limit is None else clip(part, limit)
            shown = text if _BARE_KEY.fullmatch(part) else json.dumps(text, ensure_ascii=False)
            out += ("." if out else "") + shown
    return out


@dataclass(frozen=True)
class Location:
    """Where a value came from: a recipe file position, or a command-line override."""

    file: str
    line: int | None = None
    col: int | None = None

    def __str__(self) -> str:
        file = clip(self.file, 500)  # an override's location is its text, which may be huge
        if self.line is None:
            return file
        if self.col is None:
            return f"{file}:{self.line}"
        return f"{file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Issue:
    """One problem found in a recipe, data file or command line."""

    message: str
    location: Location | None = None
    key: KeyPath = ()
    hint: str | None = None

    def render(self) -> str:
        # file:line:col key.path: message -- the form compilers use, so editors can jump to it
        where = str(self.location) if self.location else ""
        key = format_key(self.key)
        if where and key:
            text = f"{where} {key}: {self.message}"
        elif where or key:
            text = f"{where or key}: {self.message}"
        else:
            text = self.message
        if self.hint:
            text += f" ({self.hint})"
        return clip_lines(text)


class FinetuneError(Exception):
    """An error the user can fix. Printed as a message, never as a traceback."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        return clip_lines(f"{self.message}\n  hint: {self.hint}" if self.hint else self.message)


class RecipeError(FinetuneError):
    """One or more problems in a recipe, all reported together."""

    def __init__(self, issues: Iterable[Issue]):
        self.issues = list(issues)
        count = len(self.issues)
        header = f"{count} problem{'s' if count != 1 else ''} in the recipe:"
        super().__init__("\n".join([header, *("  " + i.render() for i in self.issues)]))

    def render(self) -> str:
        return clip_lines(self.message)


class DataError(FinetuneError):
    """Bad input data: a missing file or column, an unknown label, an empty split, bad encoding."""


class PluginError(FinetuneError):
    """A plugin problem the user must resolve, such as two plugins registering one name."""


class TrainingDiverged(FinetuneError):
    """The training loss became NaN or infinite; the run stopped before the optimizer step."""

    exit_code = 1


class RunInterrupted(FinetuneError):
    """Ctrl-C or SIGTERM: a checkpoint was written and the run can be resumed."""

    exit_code = 130


class RunStopped(FinetuneError):
    """Stopped early because its caller asked (a sweep pruned the trial): not a failure, not resumable work."""


class AuditFailed(FinetuneError):
    """An audit did not pass: a data audit stops the run before training; a model audit, judged
    after training, leaves the completed run and makes `finetune run` exit with 3."""

    exit_code = 3
