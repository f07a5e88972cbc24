"""`finetune recipes`: the recipes of every pack, one shown, or one copied to edit.

A pack is the runner's own `recipes/` (pack `finetune-runner`) or an installed package whose
plugin implements `register_recipes` (runner/plugins/packs.py). Like `validate`, these commands
read recipes without torch or transformers: they answer in a fraction of a second.
"""

from __future__ import annotations

import sys
from pathlib import Path

from runner.cli.console import console
from runner.errors import FinetuneError, RecipeError, clip
from runner.plugins.manager import get_plugins
from runner.plugins.packs import RecipePack, parse_reference
from runner.recipe.load import display_path, read_recipe
from runner.recipe.toml_positions import key_positions
from runner.running.recipes import load_recipe


def cmd_recipes(args) -> int:
    if args.recipes_command == "show":
        return _show(args.name)
    if args.recipes_command == "copy":
        return _copy(args.name, args.dest, args.flatten, args.force)
    return _list()


def summary(path: Path) -> tuple[str, list[str]]:
    """A recipe's description and the components it needs (the `type =` values of its sections,
    and the distributed engine), with `extends` followed. Raises RecipeError when it cannot load."""
    data = read_recipe(path).data
    run = data.get("run")
    description = run.get("description", "") if isinstance(run, dict) else ""
    types: list[str] = []

    def collect(node: object) -> None:
        if isinstance(node, list):
            for item in node:
                collect(item)
        elif isinstance(node, dict):
            if isinstance(node.get("type"), str) and node["type"] not in types:
                types.append(node["type"])
            for key, value in node.items():
                if isinstance(value, dict | list) and key != "run":
                    collect(value)

    collect(data)
    distributed = data.get("distributed")
    if isinstance(distributed, dict) and isinstance(distributed.get("engine"), str):
        types.append(distributed["engine"])
    return str(description), types


def _list() -> int:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title='recipes (extends = "PACK:RECIPE"; finetune recipes show/copy PACK:RECIPE)')
    for column in ("pack", "recipe", "description", "components"):
        table.add_column(column)
    for pack in get_plugins().packs:
        for name, path in pack.recipes().items():
            try:
                description, types = summary(path)
                components = ", ".join(types) or "-"
            except RecipeError as exc:
                description, components = "", f"[red]does not load: {escape(exc.issues[0].render())}[/]"
            table.add_row(pack.label, name, escape(description), components)
    console().print(table)
    return 0


def _show(name: str) -> int:
    pack, recipe, path = get_plugins().packs.find(name)
    sys.stdout.write(f"# {pack.name}:{recipe} ({pack.label}), {display_path(path)}\n")
    sys.stdout.write(path.read_text(encoding="utf-8"))
    return 0


def _destination(dest: Path | None, recipe: str, force: bool) -> Path:
    file_name = f"{Path(recipe).name}.toml"
    target = Path(file_name) if dest is None else dest / file_name if dest.is_dir() else dest
    if target.exists() and not force:
        raise FinetuneError(f"{display_path(target)} exists", hint="name another DEST, or overwrite it with --force")
    if not target.parent.is_dir():
        raise FinetuneError(f"{display_path(target.parent)} is not a folder", hint="create it first")
    return target


def _copy(name: str, dest: Path | None, flatten: bool, force: bool) -> int:
    pack, recipe, path = get_plugins().packs.find(name)
    target = _destination(dest, recipe, force)
    header = f"# Copied from {pack.name}:{recipe} ({pack.label}) by `finetune recipes copy`"
    if flatten:
        import tomli_w

        resolved = load_recipe(path).resolved()
        # The copy no longer extends anything: its provenance names the recipe it was copied from.
        resolved["run"]["packs"] = [f"{pack.name}=={pack.version}:{recipe}", *resolved["run"].get("packs", [])]
        text = f"{header} --flatten: every value resolved.\n" + tomli_w.dumps(resolved)
    else:
        text = f"{header}; edit freely.\n" + _files_in_pack(_pointing_at_packs(path), path, pack)
    target.write_text(text, encoding="utf-8")
    print(f"wrote {display_path(target)}")
    return 0


def _pointing_at_packs(path: Path) -> str:
    """The recipe's text with an `extends` path (relative to the pack's folder, so meaningless in a
    copy elsewhere) replaced by the `pack:recipe` it names; an `extends` that already names a pack,
    and every other line, are kept as written."""
    text = path.read_text(encoding="utf-8")
    import tomllib

    parent = tomllib.loads(text).get("extends")
    if not isinstance(parent, str) or parse_reference(parent) is not None and not (path.parent / parent).is_file():
        return text
    target = (path.parent / parent).resolve()
    reference = next(
        (f"{pack.name}:{recipe}" for pack in get_plugins().packs for recipe, file in _files(pack) if file == target),
        str(target),  # not a pack's recipe: an absolute path still finds it
    )
    line = key_positions(text)[("extends",)][0]
    lines = text.splitlines(keepends=True)
    lines[line - 1] = f'extends = "{reference}"  # in the pack: {clip(parent)}\n'
    return "".join(lines)


def _files_in_pack(text: str, path: Path, pack: RecipePack) -> str:
    """The recipe's text with each relative file option that names a file the pack ships (a data
    file beside the recipe) written `pack:path`, which finds it from anywhere the pack is installed."""
    import tomllib

    from runner.recipe.paths import file_marker

    raw, recipe = tomllib.loads(text), load_recipe(path)
    folders = [folder for folder in pack.paths if folder.is_dir()]
    lines, positions = text.splitlines(keepends=True), key_positions(text)
    for spec in recipe.components():
        for name, info in type(spec.options).model_fields.items():
            key = (*spec.key, name)
            value, line = _value_at(raw, key), positions.get(key, (0, 0))[0]
            if file_marker(info) is None or not isinstance(value, str) or not line or Path(value).is_absolute():
                continue
            target = (path.parent / value).resolve()
            folder = next((f for f in folders if target.is_relative_to(f) and target.exists()), None)
            quoted = next((q + value + q for q in ('"', "'") if q + value + q in lines[line - 1]), None)
            if folder is not None and quoted is not None:
                reference = f"{pack.name}:{target.relative_to(folder).as_posix()}"
                lines[line - 1] = lines[line - 1].replace(quoted, f'"{reference}"', 1)
    return "".join(lines)


def _value_at(data: object, key: tuple) -> object:
    for part in key:
        ok = (
            isinstance(data, dict)
            and part in data
            or isinstance(data, list)
            and isinstance(part, int)
            and part < len(data)
        )
        data = data[part] if ok else None  # type: ignore[index]
    return data


def _files(pack: RecipePack):
    return [(recipe, file.resolve()) for recipe, file in pack.recipes().items()]
