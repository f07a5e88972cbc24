"""Key paths: one spelling of a place in a recipe, and one flattening of nested tables into them.

A key path is a tuple of table keys (str) and array indexes (int): ("data", "sources", 0, "path").
It is spelled the way `--set` takes it: keys joined by ".", indexes in brackets, and a key that is
not a bare TOML key (letters, digits, "_", "-") quoted as TOML quotes it: `data.sources[0].path`,
`sweep.space."training.epochs".low`, `inputs.data.sources[0].files."./data.csv"`.
`runner.errors.format_key` spells one (issues use it too), `parse_key_path` reads one back.

`leaves` / `key_paths` flatten nested tables into key paths. The lock compares recipes and inputs
with it, the run record lays out recipes, fingerprints and audit figures with it, the trackers
log recipes as params with it (`runner.key_paths`, for plugins), and `finetune plan` shows each
value with where it came from.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from typing import Any

from runner.errors import KeyPath, format_key

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_INDEX = re.compile(r"\[(\d+)\]")
# A quoted key as TOML writes one: "basic" (with backslash escapes) or 'literal'.
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'')


def parse_key_path(text: str) -> KeyPath | None:
    """`data.sources[0].path` -> ("data", "sources", 0, "path"); `files."./a.csv"` -> ("files",
    "./a.csv"); None when malformed. The inverse of `format_key` (without its clipping)."""
    parts: list[str | int] = []
    pos = 0
    while pos < len(text):
        index = _INDEX.match(text, pos) if parts else None
        if index:
            parts.append(int(index.group(1)))
            pos = index.end()
            continue
        if parts:  # a key after the first follows a "."
            if text[pos] != ".":
                return None
            pos += 1
        key = _BARE.match(text, pos) or _QUOTED.match(text, pos)
        if key is None:
            return None
        if key.group()[0] in "\"'":
            try:  # TOML's own reading of a quoted key, escapes and all
                parts.append(next(iter(tomllib.loads(f"{key.group()} = 0"))))
            except tomllib.TOMLDecodeError:
                return None
        else:
            parts.append(key.group())
        pos = key.end()
    return tuple(parts) or None


def leaves(value: Any, prefix: KeyPath = ()) -> Iterator[tuple[KeyPath, Any]]:
    """Every value of nested tables with its key path. Tables are walked and arrays of tables
    (`[[data.sources]]`) indexed; anything else is one leaf: a number, a string, an array of plain
    values, an empty table or array. (`value` itself, when no table, has no path and no leaf.)"""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from leaves(item, (*prefix, str(key)))
    elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        for i, item in enumerate(value):
            yield from leaves(item, (*prefix, i))
    elif prefix:
        yield prefix, value


def key_paths(value: Any) -> dict[str, Any]:
    """`leaves` by their spelled key paths: {"training.learning_rate": 3e-3, "data.sources[0].type":
    "files", ...}. Keys are spelled whole (not clipped as in a message), so that two paths never
    read alike and one recipe's table compares with another's."""
    return {format_key(path, None): item for path, item in leaves(value)}
