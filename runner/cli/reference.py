"""The recipe reference, generated from the options models components declare.

`python -m runner.cli.reference > docs/recipe-reference.md` rewrites it; a test fails when the file and
the code disagree, so the reference cannot drift from what validation accepts.
"""

from __future__ import annotations

import types
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from runner.components import KINDS
from runner.options import Options
from runner.plugins.registry import Registry
from runner.recipe.resolved import DataOptions, EvaluationOptions, RunOptions, SplitOptions
from runner.recipe.sweep_section import SpaceEntry, SweepOptions
from runner.recipe.validate import TAGS

SECTION_OF_KIND = {
    "data_source": "[[data.sources]]",
    "tokenizer": "[tokenizer]",
    "model": "[model]",
    "task": "[task]",
    "strategy": "[strategy]",
    "trainer": "[training]",
    "engine": "[distributed]",
    "metric": "[[metrics]]",
    "reporter": "[[reporters]]",
    "audit": "[[audits]]",
}
assert set(SECTION_OF_KIND) == set(KINDS)


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


def render(registry: Registry, plugins: set[str] | None = None) -> str:
    """Markdown for every component registered (by the given plugins, or all)."""
    out = [
        "# Recipe reference",
        "",
        "Generated from the components' options models by `python -m runner.cli.reference`; do not edit by hand.",
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
    ]
    for kind, section in SECTION_OF_KIND.items():
        out += [f"## {section}", ""]
        for name, registration in registry.registrations(kind):
            if plugins is not None and registration.plugin not in plugins:
                continue
            cls = registration.cls
            tag = TAGS.get(section.strip("[]"), "type")
            out += [f'### `{tag} = "{name}"`', "", cls.summary(), "", *options_table(cls.Options), ""]
    return "\n".join(out).rstrip() + "\n"


def builtin_reference() -> str:
    from plugins import BUILTIN
    from runner.plugins.manager import Plugins

    return render(Plugins().registry, set(BUILTIN))


if __name__ == "__main__":  # pragma: no cover
    print(builtin_reference(), end="")
