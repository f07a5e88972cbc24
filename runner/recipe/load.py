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
from dataclasses import dataclass, field, replace
from pathlib import Path

from runner.errors import Issue, KeyPath, Location, RecipeError, clip, format_key
from runner.plugins import packs as recipe_packs
from runner.plugins.packs import Packs
from runner.recipe.keys import parse_key_path
from runner.recipe.toml_positions import key_positions

_TOML_ERROR_AT = re.compile(r"\(at line (\d+), column (\d+)\)")
# Arrays and tables nested deeper than this are refused: no recipe needs more than a handful of
# levels, and much deeper ones overflow the stack of recursive code (tomllib's own parser first).
MAX_DEPTH = 32


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
    except RecursionError:
        issues.append(Issue(TOO_DEEP, Location(shown, _deepest_line(text)), hint="flatten the value"))
        return None
    except ValueError:  # Python refuses to read an integer of more than 4,300 digits
        m = _HUGE_INTEGER.search(text)
        line = text[: m.start()].count("\n") + 1 if m else None
        issues.append(Issue(OUT_OF_RANGE, Location(shown, line), hint=INTEGER_HINT))
        return None
    try:
        positions = key_positions(text)
    except RecursionError:  # within tomllib's limit but beyond the scanner's: too deep all the same
        positions = {}
    prov = {key: Location(shown, line, col) for key, (line, col) in positions.items()}
    deep = too_deep(data)
    if deep is not None:
        key = named_part(deep)
        issues.append(Issue(TOO_DEEP, prov.get(key) or Location(shown, _deepest_line(text)), key, "flatten the value"))
        return None
    huge = out_of_range(data)
    issues += [Issue(OUT_OF_RANGE, prov.get(key, Location(shown)), key, INTEGER_HINT) for key in huge]
    return None if huge else (data, prov)


TOO_DEEP = f"arrays or tables nested more than {MAX_DEPTH} levels deep"
# TOML integers are 64-bit: "an integer that cannot be represented losslessly" is an error by the
# spec, though tomllib reads any size. Refused here, no value that large reaches a component.
INT64 = (-(2**63), 2**63 - 1)
OUT_OF_RANGE = "integer out of TOML's 64-bit range"
INTEGER_HINT = f"integers go from {INT64[0]:,} to {INT64[1]:,}"
_HUGE_INTEGER = re.compile(r"\d[\d_]{4000,}")


def out_of_range(value: object, prefix: KeyPath = ()) -> list[KeyPath]:
    """Key paths of the integers in `value` outside the 64-bit range (iteratively, like `too_deep`)."""
    found = []
    stack: list[tuple[object, KeyPath]] = [(value, prefix)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            stack.extend((v, (*path, k)) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, (*path, i)) for i, v in enumerate(node))
        elif isinstance(node, int) and not isinstance(node, bool) and not INT64[0] <= node <= INT64[1]:
            found.append(path)
    return sorted(found, key=str)


def too_deep(value: object, prefix: KeyPath = ()) -> KeyPath | None:
    """The first key path longer than MAX_DEPTH in `value` (which stands at `prefix`), or None.

    Iterative, so that it cannot itself run out of stack on the values it is there to refuse."""
    stack: list[tuple[object, KeyPath]] = [(value, prefix)]
    while stack:
        node, path = stack.pop()
        if len(path) > MAX_DEPTH:
            return path
        if isinstance(node, dict):
            stack.extend((v, (*path, k)) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, (*path, i)) for i, v in enumerate(node))
    return None


def named_part(key: KeyPath) -> KeyPath:
    """The part of a too-deep key path worth naming: up to its first array index, not the long
    run of [0][0][0]... after it."""
    for n, part in enumerate(key):
        if isinstance(part, int):
            return key[:n] or key[:1]
    return key


def _deepest_line(text: str) -> int | None:
    """The line where brackets and braces nest deepest (for a document too deep to parse)."""
    depth = best = 0
    line = best_line = 1
    for ch in text:
        if ch in "[{":
            depth += 1
            if depth > best:
                best, best_line = depth, line
        elif ch in "]}":
            depth -= 1
        elif ch == "\n":
            line += 1
    return best_line if best else None


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


def _file_problem(path: Path) -> str | None:
    """Why `path` cannot be a recipe file (missing, a directory, a name the system refuses), or None."""
    try:
        if path.is_file():
            return None
        return f"the recipe it extends {'is a directory, not a file' if path.is_dir() else 'does not exist'}"
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte, a loop of links
        return f"the recipe it extends cannot be opened ({getattr(exc, 'strerror', None) or exc})"


def _load_chain(
    path: Path,
    issues: list[Issue],
    seen: list[Path],
    packs: list[tuple[str, Location | None]],
    installed: Packs | None,
) -> tuple[dict, dict, list[Path]] | None:
    """`path` merged over the recipes it extends; `packs` collects the pack recipes reached among
    the `installed` ones (None: the process's plugins' packs, loaded when a recipe names one)."""
    path = path.resolve()
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
    problem = _file_problem(parent_path)
    reference = recipe_packs.parse_reference(parent) if problem else None
    if reference is not None:
        # Not a file beside the recipe but `pack:recipe`: a recipe of an installed pack. A file that
        # exists is still taken as a path, so every `extends` that worked before means the same.
        if installed is None:
            from runner.plugins.manager import get_plugins

            installed = get_plugins().packs
        in_pack = installed.resolve(*reference, where)
        if isinstance(in_pack, Issue):
            issues.append(in_pack)
            return None
        parent_path, record = in_pack
        packs.append((record, where))
        problem = None
    if problem:
        issues.append(Issue(f"{problem}: {clip(parent)}", where, ("extends",), hint=f"relative to {path.parent}"))
        return None
    if parent_path.resolve() in [*seen, path]:
        cycle = " -> ".join(display_path(p) for p in [*seen, path, parent_path.resolve()])
        issues.append(Issue(f"`extends` cycle: {cycle}", where, ("extends",)))
        return None
    found: list[Issue] = []
    base = _load_chain(parent_path, found, [*seen, path], packs, installed)
    # A problem inside the extended file names the `extends` that led there: that file may be far
    # from the recipe the user named (`extends = "../../x.toml"`).
    via = f"reached through extends at {where}"
    for issue in found:  # named once, by the `extends` nearest to the problem
        named = "reached through extends" in (issue.hint or "")
        issues.append(issue if named else replace(issue, hint=f"{issue.hint}; {via}" if issue.hint else via))
    if base is None:
        return None
    base_data, base_prov, base_chain = base
    drop_under(prov, ("extends",))
    merge(base_data, base_prov, data, prov)
    return base_data, base_prov, chain + base_chain


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
    except RecursionError:
        issues.append(Issue(TOO_DEEP, where, key[:1], hint="flatten the value"))
        return
    except ValueError:  # an integer of more than 4,300 digits
        issues.append(Issue(OUT_OF_RANGE, where, key, hint=INTEGER_HINT))
        return
    if too_deep(value, key) is not None:
        issues.append(Issue(TOO_DEEP, where, key[:1], hint="flatten the value"))
        return
    if out_of_range(value, key):
        issues.append(Issue(OUT_OF_RANGE, where, key, hint=INTEGER_HINT))
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


def read_recipe(
    path: str | os.PathLike, overrides: list[str] | None = None, packs: Packs | None = None
) -> RecipeSource:
    """Read a recipe, follow its `extends` chain and apply `--set` overrides. `packs`: the recipe
    packs an `extends = "pack:recipe"` may name (`Plugins.packs`); by default the process's.

    Raises RecipeError with every problem found (syntax errors, cycles, bad overrides).
    """
    issues: list[Issue] = []
    overrides = list(overrides or [])
    reached: list[tuple[str, Location | None]] = []
    loaded = _load_chain(Path(path), issues, [], reached, packs)
    if loaded is None:
        raise RecipeError(issues)
    data, prov, chain = loaded
    _record_packs(data, prov, reached)
    for override in overrides:
        apply_override(data, prov, override, issues)
    if issues:
        raise RecipeError(issues)
    return RecipeSource(data=data, provenance=prov, path=Path(path).resolve(), chain=chain, overrides=overrides)


def _record_packs(data: dict, prov: dict[KeyPath, Location], packs: list[tuple[str, Location | None]]) -> None:
    """Name the pack recipes the recipe extends, with their versions, in `run.packs`: the resolved
    recipe (recipe.resolved.toml) and `finetune plan` then say which pack a run was built from."""
    if not packs or not isinstance(data.get("run", {}), dict):
        return
    data.setdefault("run", {})["packs"] = [record for record, _ in packs]
    drop_under(prov, ("run", "packs"))
    where = packs[0][1]  # the `extends` that named the first pack: where a reader looks
    if where is not None:
        prov.setdefault(("run",), where)
        prov[("run", "packs")] = where
        for i in range(len(packs)):
            prov[("run", "packs", i)] = where
