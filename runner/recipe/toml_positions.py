"""Line and column of every key in a TOML document.

`tomllib` parses TOML exactly but tells nothing about where a key stands, and an error that names
its line is the whole point of this module. The scanner below runs only on text that `tomllib`
already accepted, so it follows the structure (tables, arrays of tables, dotted keys, inline tables,
arrays, every string form) and never has to judge validity.

Positions are keyed by key path: tables and keys by name, array elements and array-of-tables
entries by their index, e.g. `("data", "sources", 0, "path")`.
"""

from __future__ import annotations

import bisect
import re
import tomllib

Path = tuple[str | int, ...]
Position = tuple[int, int]  # 1-based line, 1-based column

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR_END = re.compile(r"[,\]\}\n#]")


class _Scanner:
    def __init__(self, text: str):
        self.s = text
        self.i = 0
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.positions: dict[Path, Position] = {}
        self.aot_index: dict[Path, int] = {}  # array-of-tables path -> index of its current entry
        self.header_start = 0

    # -- helpers ---------------------------------------------------------------------------
    def position(self, offset: int) -> Position:
        line = bisect.bisect_right(self.line_starts, offset)
        return line, offset - self.line_starts[line - 1] + 1

    def record(self, path: Path, offset: int) -> None:
        self.positions.setdefault(path, self.position(offset))

    def peek(self, n: int = 1) -> str:
        return self.s[self.i : self.i + n]

    def skip_blank(self, newlines: bool) -> None:
        """Skip spaces, tabs and comments; newlines too where the grammar allows them."""
        s = self.s
        while self.i < len(s):
            c = s[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self.i += 1
            elif c == "#":
                end = s.find("\n", self.i)
                self.i = len(s) if end < 0 else end
            else:
                return

    # -- keys -------------------------------------------------------------------------------
    def key(self) -> list[tuple[str, int]]:
        """A dotted key: each part with the offset where it starts."""
        parts = []
        while True:
            self.skip_blank(newlines=False)
            start = self.i
            if self.peek() in ('"', "'"):
                raw = self.string_token()
                parts.append((tomllib.loads(f"k = {raw}")["k"], start))
            else:
                m = _BARE_KEY.match(self.s, self.i)
                if not m:
                    raise ValueError(f"unexpected character at offset {self.i}")
                self.i = m.end()
                parts.append((m.group(), start))
            self.skip_blank(newlines=False)
            if self.peek() == ".":
                self.i += 1
                continue
            return parts

    def resolve_table(self, names: list[str]) -> Path:
        """A header's path, entering the current entry of every array of tables on the way."""
        path: Path = ()
        for name in names:
            path = (*path, name)
            self.record(path, self.header_start)  # a table made implicitly by a header
            if path in self.aot_index:
                path = (*path, self.aot_index[path])
        return path

    # -- values -----------------------------------------------------------------------------
    def string_token(self) -> str:
        """Consume one string of any of TOML's four kinds and return its source text."""
        s, start = self.s, self.i
        for quote in ('"""', "'''"):
            if s.startswith(quote, start):
                j = start + 3
                while True:
                    j = s.find(quote, j)
                    if quote == '"""' and _escaped(s, j):
                        j += 1
                        continue
                    break
                end = j + 3
                while end < len(s) and s[end] == quote[0] and end - j < 5:  # up to two quotes of content
                    end += 1
                self.i = end
                return s[start:end]
        quote = s[start]
        j = start + 1
        while True:
            j = s.find(quote, j)
            if quote == '"' and _escaped(s, j):
                j += 1
                continue
            break
        self.i = j + 1
        return s[start : self.i]

    def value(self, path: Path) -> None:
        c = self.peek()
        if c in ('"', "'"):
            self.string_token()
        elif c == "[":
            self.i += 1
            index = 0
            while True:
                self.skip_blank(newlines=True)
                if self.peek() == "]":
                    self.i += 1
                    return
                self.record((*path, index), self.i)
                self.value((*path, index))
                index += 1
                self.skip_blank(newlines=True)
                if self.peek() == ",":
                    self.i += 1
        elif c == "{":
            self.i += 1
            while True:
                self.skip_blank(newlines=True)
                if self.peek() == "}":
                    self.i += 1
                    return
                self.key_value(path)
                self.skip_blank(newlines=True)
                if self.peek() == ",":
                    self.i += 1
        else:
            m = _SCALAR_END.search(self.s, self.i)
            self.i = len(self.s) if m is None else m.start()

    def key_value(self, table: Path) -> None:
        path = table
        for name, offset in self.key():
            path = (*path, name)
            self.record(path, offset)
        self.skip_blank(newlines=False)
        self.i += 1  # '='
        self.skip_blank(newlines=False)
        self.value(path)

    # -- document ---------------------------------------------------------------------------
    def document(self) -> dict[Path, Position]:
        table: Path = ()
        while True:
            self.skip_blank(newlines=True)
            if self.i >= len(self.s):
                return self.positions
            start = self.header_start = self.i
            if self.s.startswith("[[", self.i):
                self.i += 2
                parts = self.key()
                self.i += 2
                parent = self.resolve_table([name for name, _ in parts[:-1]])
                array = (*parent, parts[-1][0])
                index = self.aot_index.get(array, -1) + 1
                self.aot_index[array] = index
                self.record(array, start)
                table = (*array, index)
                self.record(table, start)
            elif self.peek() == "[":
                self.i += 1
                parts = self.key()
                self.i += 1
                table = self.resolve_table([name for name, _ in parts])
                self.record(table, start)
            else:
                self.key_value(table)


def _escaped(s: str, j: int) -> bool:
    """Whether the quote at s[j] is escaped by an odd number of backslashes."""
    k = j - 1
    while k >= 0 and s[k] == "\\":
        k -= 1
    return (j - 1 - k) % 2 == 1


def key_positions(text: str) -> dict[Path, Position]:
    """Map every key path of a valid TOML document to the (line, column) where it is written.

    Tables map to their header, keys to the first character of their name, array elements to the
    first character of the element.
    """
    return _Scanner(text).document()
