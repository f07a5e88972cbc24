"""The recipe reference, generated from the options models components declare.

`python -m runner.cli.reference > docs/recipe-reference.md` rewrites it; a test fails when the file and
the code disagree, so the reference cannot drift from what validation accepts. `finetune reference`
renders the same tables for the installed components: all of them, one plugin's, or one kind's.
It imports neither torch nor transformers.
"""

from __future__ import annotations

import re
import types
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from runner.components import KINDS
from runner.errors import FinetuneError
from runner.options import Options
from runner.plugins.registry import Registry
from runner.recipe.resolved import DataOptions, EvaluationOptions, RunOptions, SplitOptions
from runner.recipe.sections import LISTS, SECTIONS, TAGS
from runner.recipe.sweep_section import SpaceEntry, SweepOptions

SECTION_OF_KIND = {
    "data_source": "[[data.sources]]",
    **{kind: f"[{section}]" for section, (kind, _default) in SECTIONS.items()},
    **{kind: f"[[{section}]]" for section, kind in LISTS.items()},
    "extractor": "[[rewards]] extract = ...",  # named inside a reward's options (runner.ComponentOf)
}
assert set(SECTION_OF_KIND) == set(KINDS)
# What a section says when no component of its kind is registered.
EMPTY = {
    "objective": "Optional: a preference loss from a plugin package, for trainer `dpo` (none is built in; TRL's "
    "losses are `[training] loss_type`). Writing one: writing-a-plugin.md, section 3d."
}


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args if a is not type(None)) + (
            " (optional)" if type(None) in args else ""
        )
    if origin is list:
        return f"array of {_type_name(args[0])}"
    if origin is dict:
        return f"table of {_type_name(args[1])}"
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default(field) -> str:
    if field.is_required():
        return "**required**"
    value = field.get_default(call_default_factory=True)
    if value is None or value is PydanticUndefined:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, BaseModel):
        return "see below"
    return str(value) if value not in ({}, []) else "empty"


def options_table(model: type[Options], nested: bool = True) -> list[str]:
    if not model.model_fields:
        return ["No options."]
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    tables = []
    for name, field in model.model_fields.items():
        doc = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {doc} |")
        tables += [(name, table) for table in _tables(field.annotation)] if nested else []
    for name, table in tables:  # a table's own keys, e.g. [model] quantization = { bits = 4 }
        lines += ["", f"`{name}` takes:", "", *options_table(table)]
    return lines


def _tables(annotation) -> list[type[BaseModel]]:
    """The options models an annotation holds (a nested table, or one of a union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(annotation) for t in _tables(a)]
    return []


def component_sections(
    registry: Registry, plugins: set[str] | None = None, kinds: set[str] | None = None, *, skip_empty: bool = False
) -> list[str]:
    """A section per kind (its recipe table), a subsection per component registered by the given
    plugins (or any) with its summary and options; kinds outside `kinds`, and with `skip_empty` kinds
    with no such component, are left out."""
    out = []
    for kind, section in SECTION_OF_KIND.items():
        if kinds is not None and kind not in kinds:
            continue
        entries = [(n, r) for n, r in registry.registrations(kind) if plugins is None or r.plugin in plugins]
        if skip_empty and not entries:
            continue
        out += [f"## {section}", ""]
        if not entries:
            out += [EMPTY.get(kind, "None registered."), ""]
        tag = TAGS.get(section.strip("[]"), "type")
        for name, registration in entries:
            cls = registration.cls
            out += [f'### `{tag} = "{name}"`', "", cls.summary(), "", *options_table(cls.Options), ""]
    return out


def render(registry: Registry, plugins: set[str] | None = None, intro: str | None = None) -> str:
    """Markdown for the recipe's sections and every component registered (by the given plugins, or all)."""
    intro = (
        intro
        or "Generated from the components' options models by `python -m runner.cli.reference`; do not edit by hand."
    )
    out = [
        "# Recipe reference",
        "",
        intro,
        "Every table rejects keys not listed here. See [recipes.md](recipes.md) for how recipes work.",
        "",
        "## [run]",
        "",
        *options_table(RunOptions),
        "",
        "## [data]",
        "",
        "`[[data.sources]]` (one or more, see below) and:",
        "",
        *options_table(DataOptions, nested=False),  # [data.split] has a section of its own
        "",
        "### [data.split]",
        "",
        "Fractions used to carve the splits a source does not provide (see recipes.md).",
        "",
        *options_table(SplitOptions),
        "",
        "## [evaluation]",
        "",
        *options_table(EvaluationOptions),
        "",
        "## [sweep]",
        "",
        "Read by `finetune sweep` only (see [experiments.md](experiments.md)); `finetune run` ignores it.",
        "",
        *options_table(SweepOptions, nested=False),
        "",
        "### [sweep.space]",
        "",
        'Each key is a recipe key path in quotes (`"training.learning_rate"`, `"strategy.r"`), each value a table',
        "with exactly one of:",
        "",
        *options_table(SpaceEntry),
        "",
        *component_sections(registry, plugins),
    ]
    return "\n".join(out).rstrip() + "\n"


def builtin_reference() -> str:
    from plugins import BUILTIN
    from runner.plugins.manager import Plugins

    return render(Plugins().registry, set(BUILTIN))


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def plugins_named(registry: Registry, name: str) -> set[str]:
    """The plugins (as `finetune plugins` lists them) that `name` names: a plugin's own name, or the
    distribution that provides it (spelled either way, `finetune-bitfit` or `finetune_bitfit`), or
    `built-in`. A plugin that failed to load, or registered nothing, is an error saying why."""
    from runner.cli.plugins_cmd import registered_nothing
    from runner.plugins.manager import get_plugins

    infos = [i for i in registry.plugins.values() if _canonical(name) in (_canonical(i.name), _canonical(i.source))]
    if not infos:
        known = sorted({i.name for i in registry.plugins.values()} | {i.source for i in registry.plugins.values()})
        raise FinetuneError(f"no installed plugin or distribution is called '{name}'; installed: {', '.join(known)}")
    failed = [i for i in infos if i.error]
    if failed and len(failed) == len(infos):
        raise FinetuneError(f"plugin '{failed[0].name}' failed to load: {failed[0].error}")
    if not any(i.components for i in infos):
        why = registered_nothing(get_plugins()).get(infos[0].name, "it registers recipes or hooks only")
        raise FinetuneError(f"plugin '{infos[0].name}' registered no components: {why}")
    return {i.name for i in infos if not i.error}


def cmd_reference(args) -> int:
    from runner.plugins.manager import get_plugins

    registry = get_plugins().registry
    kinds = {args.kind} if args.kind else None
    if args.plugin is None and kinds is None:
        intro = "The recipe reference of the installed plugins, generated by `finetune reference`."
        print(render(registry, intro=intro), end="")
        return 0
    plugins = plugins_named(registry, args.plugin) if args.plugin else None
    sections = component_sections(registry, plugins, kinds, skip_empty=True)
    title = f"# Components of {args.plugin}" if args.plugin else f"# {args.kind.replace('_', ' ')} components"
    if args.plugin and args.kind:
        title += f": {args.kind.replace('_', ' ')}"
    if not sections:
        sections = [f"No {args.kind.replace('_', ' ')} components.", ""]
    print(
        "\n".join(
            [title, "", "Options as in docs/recipe-reference.md: every table rejects keys not listed.", "", *sections]
        ).rstrip()
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    print(builtin_reference(), end="")
