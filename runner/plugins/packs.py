"""Recipe packs: recipes that an installed package makes known through `register_recipes`.

A pack is named after the distribution that ships it (`acme-recipes`, with its version from
importlib.metadata); its recipes are named by their path inside the folder the pack registered,
without `.toml` (`llm/chat-base`). The recipes shipped with the runner (`recipes/`) are the pack
`finetune-runner`. A recipe names another pack's recipe with `extends = "acme-recipes:llm/chat-base"`.

Registering only records paths: no recipe is read until it is listed or extended, so loading the
packs costs nothing on `finetune --help` or `validate`.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from runner.errors import Issue, Location, PluginError

BUILTIN_PACK = "finetune-runner"
# `pack:recipe`. A pack name is a distribution name (PEP 508 allows letters, digits, `.`, `_`, `-`);
# one letter is refused so that a Windows drive (`C:\...`, `C:/...`) never reads as a pack.
PACK_REFERENCE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]+):([^:\\]+)$")


def normalize(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): `Acme_Recipes` is `acme-recipes`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_file_reference(text: str) -> tuple[str, str] | None:
    """`"acme-recipes:data/x.csv"` -> ("acme-recipes", "data/x.csv"): a file shipped in a pack's
    folder; None for anything else, a path that climbs out of the folder (`..`) included."""
    m = PACK_REFERENCE.match(text)
    relative = m.group(2).strip("/") if m else ""
    if not relative or ".." in Path(relative).parts:
        return None
    return m.group(1), relative


def parse_reference(text: str) -> tuple[str, str] | None:
    """`"acme-recipes:llm/chat-base"` -> ("acme-recipes", "llm/chat-base"); None for anything else."""
    m = PACK_REFERENCE.match(text)
    if not m:
        return None
    recipe = m.group(2).strip("/")
    recipe = recipe[: -len(".toml")] if recipe.endswith(".toml") else recipe
    return (m.group(1), recipe) if recipe else None


def shipped_recipes_dir() -> Path:
    """The folder of the recipes shipped with the runner: `recipes/` in a checkout, `runner/_recipes`
    in a wheel (pyproject's force-include)."""
    package = Path(__file__).resolve().parents[1]  # runner/
    packaged = package / "_recipes"
    return packaged if packaged.is_dir() else package.parent / "recipes"


@dataclass
class RecipePack:
    """One pack: its name and version, the plugin that registered it, and where its recipes are."""

    name: str
    version: str
    plugin: str  # the plugin (entry point) whose `register_recipes` registered it
    paths: list[Path] = field(default_factory=list)  # folders and single files, as registered

    def register(self, *paths: str | os.PathLike) -> None:
        """What a plugin's `register_recipes(register)` calls: folders (every `*.toml` below them)
        or single recipe files."""
        for item in paths:
            path = Path(item)
            if path.is_dir() or (path.is_file() and path.suffix == ".toml"):
                self.paths.append(path.resolve())
            else:
                raise PluginError(f"register_recipes: {path} is neither a folder nor a .toml file")

    def recipes(self) -> dict[str, Path]:
        """Recipe name -> file, sorted by name. A folder's recipes are named by their path inside it
        (`llm/chat-base`); a file registered on its own by its stem. Files under a `data` folder
        are data, not recipes."""
        found: dict[str, Path] = {}
        for path in self.paths:
            if path.is_file():
                found.setdefault(path.stem, path)
                continue
            for file in sorted(path.rglob("*.toml")):
                relative = file.relative_to(path)
                if "data" in relative.parts[:-1] or any(p.startswith(".") for p in relative.parts):
                    continue
                found.setdefault(relative.with_suffix("").as_posix(), file)
        return dict(sorted(found.items()))

    def file(self, relative: str) -> Path | None:
        """A file or folder the pack ships, by its path inside one of the pack's folders."""
        for folder in self.paths:
            candidate = folder / relative
            if folder.is_dir() and candidate.exists():
                return candidate.resolve()
        return None

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


class Packs:
    """Every recipe pack, by normalized name: the runner's own first, then the installed ones."""

    def __init__(self) -> None:
        self._packs: dict[str, RecipePack] = {}

    def add(self, name: str, version: str, plugin: str) -> RecipePack:
        """The pack `name`, created on first use: one distribution with several entry points
        registering recipes is one pack."""
        key = normalize(name)
        if key not in self._packs:
            self._packs[key] = RecipePack(name, version, plugin)
        return self._packs[key]

    def get(self, name: str) -> RecipePack | None:
        return self._packs.get(normalize(name))

    def __iter__(self):
        return iter(self._packs.values())

    def names(self) -> list[str]:
        return [p.name for p in self._packs.values()]

    def find(self, name: str) -> tuple[RecipePack, str, Path]:
        """The recipe that `finetune recipes show/copy NAME` means: `pack:recipe`, or a recipe name
        that exactly one pack has. Raises FinetuneError saying what there is instead."""
        from runner.errors import FinetuneError

        reference = parse_reference(name)
        if reference is not None:
            pack_name, recipe = reference
            pack = self.get(pack_name)
            if pack is None:
                raise FinetuneError(missing_pack(pack_name, self), hint=install_hint(pack_name))
            path = pack.recipes().get(recipe)
            if path is None:
                raise FinetuneError(f"pack '{pack.name}' has no recipe '{recipe}'", hint=known_recipes(pack, recipe))
            return pack, recipe, path
        wanted = name[: -len(".toml")] if name.endswith(".toml") else name
        matches = [(pack, wanted, path) for pack in self if (path := pack.recipes().get(wanted)) is not None]
        if len(matches) == 1:
            return matches[0]
        if matches:
            named = ", ".join(f"{pack.name}:{recipe}" for pack, recipe, _ in matches)
            raise FinetuneError(f"several packs have a recipe '{wanted}': {named}", hint="name one as PACK:RECIPE")
        every = [f"{pack.name}:{recipe}" for pack in self for recipe in pack.recipes()]
        close = difflib.get_close_matches(wanted, [r.split(":", 1)[1] for r in every], n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "`finetune recipes` lists them"
        raise FinetuneError(f"no pack has a recipe '{clip_name(name)}'", hint=hint)

    def resolve(self, pack_name: str, recipe: str, where: Location | None) -> tuple[Path, str] | Issue:
        """The file of `pack_name:recipe` (what `extends` names) and its record for provenance
        (`acme-recipes==0.3.1:llm/chat-base`), or the issue at `extends` saying what is missing."""
        pack = self.get(pack_name)
        if pack is None:
            return Issue(missing_pack(pack_name, self), where, ("extends",), hint=install_hint(pack_name))
        path = pack.recipes().get(recipe)
        if path is None:
            message = f"pack '{pack.label}' has no recipe '{clip_name(recipe)}'"
            return Issue(message, where, ("extends",), hint=known_recipes(pack, recipe))
        return path, f"{pack.name}=={pack.version}:{recipe}"

    def resolve_file(self, pack_name: str, relative: str) -> Path | tuple[str, str | None]:
        """The file `pack_name:relative` names (a recipe's file option, e.g. `path =
        "finetune-runner:data/reviews.csv"`), or (message, hint) saying what is missing."""
        pack = self.get(pack_name)
        if pack is None:
            return missing_pack(pack_name, self), install_hint(pack_name)
        found = pack.file(relative)
        return found if found is not None else (f"pack '{pack.label}' ships no file '{clip_name(relative)}'", None)


def clip_name(text: str) -> str:
    from runner.errors import clip

    return clip(text)


def missing_pack(name: str, packs: Packs) -> str:
    return f"no recipe pack '{clip_name(name)}' is installed (installed packs: {', '.join(packs.names())})"


def install_hint(name: str) -> str:
    return f"install it with `pip install {clip_name(name)}`, or check the name with `finetune recipes`"


def known_recipes(pack: RecipePack, wanted: str) -> str:
    names = list(pack.recipes())
    close = difflib.get_close_matches(wanted, names, n=3)
    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    return (f"did you mean {', '.join(close)}? " if close else "") + f"its recipes: {shown or 'none'}"
