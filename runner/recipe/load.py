"""Reading recipes: TOML files, `extends` chains, deep merge, `--set` overrides, provenance.

The result is a plain tree of TOML values plus, for every key path in it, the place it came from
(a file position or a command-line override), so that validation errors and `finetune plan` can
point at the exact line that set a value.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from runner.errors import Issue, KeyPath, Location, RecipeError, format_key
from runner.recipe.toml_positions import key_positions

_TOML_ERROR_AT = re.compile(r"\(at line (\d+), column (\d+)\)")


def display_path(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when it is inside it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


@dataclass
class RecipeSource:
    """A recipe after reading and merging, before validation."""

    data: dict
    provenance: dict[KeyPath, Location]
    path: Path  # the recipe file the user named
    chain: list[Path] = field(default_factory=list)  # that file, then each file it extends
    overrides: list[str] = field(default_factory=list)

    def locate(self, key: KeyPath) -> Location | None:
        """Where a key was set; for a key that is absent, where its nearest enclosing table is."""
        if key in self.provenance:
            return self.provenance[key]
        # A table that only exists implicitly (`[data.sources]` makes `data`): its first child.
        children = [loc for k, loc in self.provenance.items() if k[: len(key)] == key]
        if children:
            return min(children, key=lambda loc: (loc.file, loc.line or 0))
        for n in range(len(key) - 1, 0, -1):
            if key[:n] in self.provenance:
                return self.provenance[key[:n]]
        return Location(display_path(self.path))

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def directory_of(self, key: KeyPath) -> Path:
        """The directory a relative path set at `key` is relative to: its recipe's, or the cwd for --set."""
        loc = self.provenance.get(key)
        if loc is None or loc.line is None:
            return Path.cwd() if loc is not None else self.base_dir
        for file in self.chain:
            if display_path(file) == loc.file:
                return file.parent
        return self.base_dir


def read_toml(path: Path, issues: list[Issue]) -> tuple[dict, dict[KeyPath, Location]] | None:
    """A TOML file's data and where each key was set; None, with the problem in `issues`, when it
    cannot be read or parsed."""
    shown = display_path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        issues.append(Issue("recipe file not found", Location(shown)))
        return None
    except OSError as exc:
        issues.append(Issue(f"cannot read the recipe: {exc.strerror}", Location(shown)))
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        issues.append(Issue("not valid UTF-8 text", Location(shown, line), hint=f"byte {exc.start}"))
        return None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = _TOML_ERROR_AT.search(message)
        line, col = (int(m.group(1)), int(m.group(2))) if m else (None, None)
        message = _TOML_ERROR_AT.sub("", message).strip()
        issues.append(Issue(f"TOML syntax error: {message}", Location(shown, line, col)))
        return None
    positions = key_positions(text)
    return data, {key: Location(shown, line, col) for key, (line, col) in positions.items()}


def drop_under(prov: dict[KeyPath, Location], key: KeyPath) -> None:
    """Forget where the keys at and below `key` were set (they are about to be replaced)."""
    for k in [k for k in prov if k[: len(key)] == key]:
        del prov[k]


def _copy_under(dst: dict, src: dict, key: KeyPath) -> None:
    for k, loc in src.items():
        if k[: len(key)] == key:
            dst[k] = loc


def merge(base: dict, base_prov: dict, over: dict, over_prov: dict, prefix: KeyPath = ()) -> None:
    """Deep-merge `over` into `base` in place. Tables merge key by key; any other value, arrays
    included, replaces what was there. Provenance follows the values."""
    for key, value in over.items():
        path = (*prefix, key)
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            if path in over_prov:
                base_prov[path] = over_prov[path]
            merge(base[key], base_prov, value, over_prov, path)
        else:
            base[key] = copy.deepcopy(value)
            drop_under(base_prov, path)
            _copy_under(base_prov, over_prov, path)


def _load_chain(path: Path, issues: list[Issue], seen: list[Path]) -> tuple[dict, dict, list[Path]] | None:
    path = path.resolve()
    if path in seen:
        cycle = " -> ".join(display_path(p) for p in [*seen, path])
        issues.append(Issue(f"`extends` cycle: {cycle}", Location(display_path(seen[-1]))))
        return None
    loaded = read_toml(path, issues)
    if loaded is None:
        return None
    data, prov = loaded
    chain = [path]
    parent = data.pop("extends", None)
    if parent is None:
        return data, prov, chain
    where = prov.get(("extends",))
    if not isinstance(parent, str):
        issues.append(Issue("must be a path to another recipe (a string)", where, ("extends",)))
        return None
    parent_path = path.parent / parent
    if not parent_path.is_file():
        issues.append(Issue(f"the recipe it extends does not exist: {parent}", where, ("extends",)))
        return None
    base = _load_chain(parent_path, issues, [*seen, path])
    if base is None:
        return None
    base_data, base_prov, base_chain = base
    drop_under(prov, ("extends",))
    merge(base_data, base_prov, data, prov)
    return base_data, base_prov, chain + base_chain


_SET_KEY = re.compile(r"([A-Za-z0-9_-]+)|\[(\d+)\]")


def parse_key_path(text: str) -> KeyPath | None:
    """`data.sources[0].path` -> ("data", "sources", 0, "path"); None when malformed."""
    parts: list[str | int] = []
    pos = 0
    while pos < len(text):
        if parts and text[pos] == "." and not text.startswith(".[", pos):
            pos += 1
        m = _SET_KEY.match(text, pos)
        if not m:
            return None
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    return tuple(parts) or None


def parse_override_value(text: str) -> object:
    """A `--set` value in TOML value syntax; a bare word that is not TOML is taken as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if text and text[0] in "\"'[{":
            raise
        return text


def apply_override(data: dict, prov: dict[KeyPath, Location], override: str, issues: list[Issue]) -> None:
    where = Location(f"--set {override}")
    key_text, eq, value_text = override.partition("=")
    key = parse_key_path(key_text.strip())
    if not eq or key is None or not isinstance(key[0], str):
        issues.append(Issue("expected KEY.PATH=VALUE, e.g. training.learning_rate=3e-4", where))
        return
    try:
        value = parse_override_value(value_text.strip())
    except tomllib.TOMLDecodeError as exc:
        issues.append(Issue(f"not a TOML value: {exc}", where, key))
        return
    node: object = data
    for depth, part in enumerate(key[:-1]):
        nxt = key[depth + 1]
        if isinstance(node, dict) and isinstance(part, str):
            if part not in node:
                node[part] = [] if isinstance(nxt, int) else {}
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            issues.append(Issue(f"cannot set inside {format_key(key[: depth + 1])}", where, key))
            return
    last = key[-1]
    if isinstance(node, dict) and isinstance(last, str):
        node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last <= len(node):
        if last == len(node):
            node.append(value)
        else:
            node[last] = value
    else:
        issues.append(Issue(f"cannot set {format_key(key)} here", where, key))
        return
    drop_under(prov, key)
    for n in range(1, len(key) + 1):
        prov.setdefault(key[:n], where)
    prov[key] = where
    for sub in _walk_keys(value, key):
        prov[sub] = where


def _walk_keys(value: object, prefix: KeyPath):
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*prefix, k)
            yield from _walk_keys(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield (*prefix, i)
            yield from _walk_keys(v, (*prefix, i))


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> RecipeSource:
    """Read a recipe, follow its `extends` chain and apply `--set` overrides.

    Raises RecipeError with every problem found (syntax errors, cycles, bad overrides).
    """
    issues: list[Issue] = []
    overrides = list(overrides or [])
    loaded = _load_chain(Path(path), issues, [])
    if loaded is None:
        raise RecipeError(issues)
    data, prov, chain = loaded
    for override in overrides:
        apply_override(data, prov, override, issues)
    if issues:
        raise RecipeError(issues)
    return RecipeSource(data=data, provenance=prov, path=Path(path).resolve(), chain=chain, overrides=overrides)
