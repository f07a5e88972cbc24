"""`finetune schema`: a JSON Schema of the recipe format, for editor completion and checking.

The schema is generated, like the recipe reference (`runner/cli/reference.py`), from what validation
itself uses: the section tables of `runner.recipe.validate` and the options models of the
components the installed plugins register, so that it follows a new plugin or a new option without
an edit here. It is JSON Schema draft-07, the newest draft that Taplo (Even Better TOML) and most
editors read fully; pydantic's `$defs` are moved under `definitions` and renamed per component.

What the schema accepts, within what JSON Schema can say, is what validation accepts:

- every table is closed (`additionalProperties: false`) exactly where an options model forbids extra
  keys, i.e. everywhere but free-form tables such as `[model] config` or a source's `columns`;
- a component section takes the options of the component its `type` names (`engine` in
  `[distributed]`), by `if`/`then` on that value; a section with a default component (`[strategy]`,
  `[training]`, ...) may leave `type` out. An `anyOf` of all its components beside it is what
  editors complete keys from;
- a recipe with `extends` is checked as the file it is, before merging: its sections and its
  component tables may be partial (their `type` may come from the recipe it extends), so there the
  schema only checks that each table fits some component of its section. Array tables
  (`[[data.sources]]`, `[[metrics]]`, ...) replace the extended recipe's whole, so they stay strict.

What it cannot say is left to `finetune validate`: checks in code (finite positive numbers, split
fractions summing to 1, files that exist, a metric the task cannot feed, each component's own
`check`), the recipe that `extends` names, and TOML's integer/float distinction (JSON Schema counts
`3.0` as an integer).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.errors import PydanticUserError

from runner import __version__
from runner.errors import FinetuneError
from runner.plugins.registry import Registry
from runner.recipe.resolved import DataOptions, EvaluationOptions, RunOptions
from runner.recipe.sections import LISTS, REQUIRED, SECTIONS, TAGS, TOP_LEVEL
from runner.recipe.sweep_section import SweepOptions

DRAFT = "http://json-schema.org/draft-07/schema#"

# Keywords whose value is one schema, a list of schemas, or a map of names to schemas: the only
# places the walk below rewrites; every other keyword (enum, const, default, required) is data.
_ONE = ("additionalProperties", "items", "not", "if", "then", "else", "propertyNames", "contains")
_MANY = ("anyOf", "oneOf", "allOf", "prefixItems")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")

SECTION_DOCS = {
    "run": "Naming, seeding and where the run directory goes.",
    "data": "Where rows come from ([[data.sources]]) and how splits are made.",
    "evaluation": "Baselines, few-shot prompting, bootstrap intervals.",
    "metrics": "Metrics to compute (default: the task's).",
    "reporters": "Where progress goes (default: rich).",
    "audits": "Data and model audits: leakage, bias, forgetting.",
    "sweep": "A hyperparameter study over recipe keys, run by `finetune sweep`.",
}


def _pointer(name: str) -> str:
    """`name` escaped as one JSON-pointer segment (a plugin's name may hold `/` or `~`)."""
    return name.replace("~", "~0").replace("/", "~1")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/definitions/{_pointer(name)}"}


def _clean(schema: Any, prefix: str) -> Any:
    """pydantic's schema made fit for a TOML editor and for draft-07.

    - `{"type": "null"}` branches go (TOML has no null, so no recipe can hold one; a `default` of
      null goes too, so that an editor never offers to insert it), and a one-branch `anyOf` is
      flattened into its parent;
    - `$ref`s point into the shared `definitions`, under `prefix`; a `$ref` with sibling keywords
      (a field's description) becomes an `allOf`, since draft-07 ignores a `$ref`'s siblings;
    - pydantic's generated `title`s ("Max Length") go where a description says more.
    """
    if isinstance(schema, list):
        return [_clean(item, prefix) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _ONE and isinstance(value, dict):
            out[key] = _clean(value, prefix)
        elif key in _MANY:
            out[key] = [_clean(v, prefix) for v in value if v != {"type": "null"}]
        elif key in _MAP:
            out[key] = {name: _clean(v, prefix) for name, v in value.items()}
        elif key == "$ref" and value.startswith("#/$defs/"):
            out[key] = f"#/definitions/{_pointer(prefix)}.{value.removeprefix('#/$defs/')}"
        else:
            out[key] = value
    if out.get("default", 0) is None:
        del out["default"]
    if "description" in out:
        out.pop("title", None)
    for key in ("anyOf", "oneOf"):
        if key in out and not out[key]:  # only null was allowed: no TOML value fits
            out[key] = [{"not": {}}]
        if key in out and len(out[key]) == 1:
            only = out.pop(key)[0]
            out = {**only, **out} if not set(only) & set(out) else {**out, "allOf": [only]}
    if "$ref" in out and len(out) > 1:
        out = {"allOf": [{"$ref": out.pop("$ref")}], **out}
    return out


def model_schema(model: type[BaseModel], name: str, definitions: dict[str, Any]) -> dict[str, Any]:
    """The schema of one options model; its nested models go to `definitions` as `<name>.<Model>`."""
    try:
        raw = model.model_json_schema()
    except PydanticUserError as exc:
        # An option of a type JSON Schema cannot describe (a callable, say): the table is left
        # open rather than the whole schema refused; `finetune validate` still checks it.
        return {"type": "object", "description": f"(options not describable as JSON Schema: {exc})"}
    for sub, body in raw.pop("$defs", {}).items():
        definitions[f"{name}.{sub}"] = _clean(body, name)
    return _clean(raw, name)


def _component_definition(kind: str, name: str, cls: type, tag: str, definitions: dict[str, Any]) -> str:
    """Put the options of the component `name` of `kind` into `definitions`, with its tag key."""
    key = f"{kind}.{name}"
    body = model_schema(cls.Options, key, definitions)
    summary = cls.summary()
    body["properties"] = {tag: {"const": name, "description": summary}, **body.get("properties", {})}
    if summary:
        body["description"] = summary
    definitions[key] = body
    return key


def _section(registry: Registry, kind: str, tag: str, default: str | None, definitions: dict) -> dict[str, dict]:
    """The `strict` and `loose` schemas of a table naming one component of `kind`.

    strict: `tag` selects one component's options (`if`/`then` on its value, which also makes a
    typo's error name the key rather than "no branch fits"); without `tag`, the default component.
    loose (a recipe with `extends`, and the completion an editor offers): the table may leave `tag`
    to the recipe it extends, so it needs to fit some component (`anyOf`: several may fit).
    """
    names = [name for name, _ in registry.registrations(kind)]
    if not names:  # no installed plugin registers one: validation refuses every table here
        nothing = {"type": "object", "not": {}, "description": f"No installed plugin registers a {kind}."}
        return {"strict": nothing, "loose": nothing}
    keys = {
        name: _component_definition(kind, name, reg.cls, tag, definitions) for name, reg in registry.registrations(kind)
    }
    noun = kind.replace("_", " ")
    pick = {"enum": names, "description": f"Which {noun}: a name an installed plugin registered."}
    if default is not None:
        pick["default"] = default
    select = [
        {"if": {"properties": {tag: {"const": name}}, "required": [tag]}, "then": _ref(key)}
        for name, key in keys.items()
    ]
    strict: dict[str, Any] = {"type": "object", "properties": {tag: pick}, "allOf": select}
    if default in keys:
        select.append({"if": {"not": {"required": [tag]}}, "then": _ref(keys[default])})
    else:  # says "'type' is a required property"
        strict["required"] = [tag]
    loose = {"type": "object", "properties": {tag: pick}, "anyOf": [_ref(key) for key in keys.values()]}
    return {"strict": strict, "loose": loose}


def _array(item: dict[str, Any], description: str, min_items: int = 0) -> dict[str, Any]:
    schema = {"type": "array", "description": description, "items": item}
    if min_items:
        schema["minItems"] = min_items
    return schema


def recipe_schema(registry: Registry) -> dict[str, Any]:
    """The JSON Schema of a recipe file for the components in `registry`."""
    definitions: dict[str, Any] = {}
    loose: dict[str, Any] = {}
    strict: dict[str, Any] = {}
    for section, (kind, default) in SECTIONS.items():
        both = _section(registry, kind, TAGS.get(section, "type"), default, definitions)
        loose[section], strict[section] = both["loose"], both["strict"]
    for section, kind in LISTS.items():
        both = _section(registry, kind, "type", None, definitions)
        item = {**both["strict"], **both["loose"]}  # arrays replace whole: always strict
        loose[section] = _array(item, SECTION_DOCS.get(section, ""))

    both = _section(registry, "data_source", "type", None, definitions)
    sources = {**both["strict"], **both["loose"]}
    data = model_schema(DataOptions, "data", definitions)
    data["properties"] = {
        "sources": _array(sources, "Where rows come from; several train together.", min_items=1),
        **data.get("properties", {}),
    }
    data["description"] = SECTION_DOCS["data"]
    loose["data"] = data

    for section, model in (("run", RunOptions), ("evaluation", EvaluationOptions), ("sweep", SweepOptions)):
        loose[section] = {**model_schema(model, section, definitions), "description": SECTION_DOCS[section]}

    plugins = ", ".join(f"{p.name} {p.version}" for p in registry.plugins.values() if not p.error)
    properties = {
        "extends": {
            "type": "string",
            "description": "Another recipe this one builds on, relative to this file; its tables merge key by key.",
        },
        **{section: loose[section] for section in TOP_LEVEL},
    }
    return {
        "$schema": DRAFT,
        "title": "finetune-runner recipe",
        "description": f"Generated by `finetune schema` (finetune-runner {__version__}; plugins: {plugins}).",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        # Without `extends` the file is the whole recipe: the required sections, and every
        # component table complete. With it, the rest comes from the recipe it extends.
        "if": {"required": ["extends"]},
        "else": {
            "required": list(REQUIRED),
            "properties": {**strict, "data": {"required": ["sources"]}},
        },
        "definitions": definitions,
    }


def write_schema(registry: Registry, output: Path | None) -> str:
    """Write the schema to `output` (or stdout); returns the text written."""
    text = json.dumps(recipe_schema(registry), indent=2, ensure_ascii=False) + "\n"
    if output is None:
        sys.stdout.write(text)
        return text
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise FinetuneError(
            f"cannot write the schema to {output}: {exc.strerror or exc}",
            hint="name a file in an existing, writable directory",
        ) from exc
    return text


def cmd_schema(args) -> int:
    from runner.plugins.manager import get_plugins

    write_schema(get_plugins().registry, args.output)
    if args.output is not None:
        print(f"wrote {args.output}: put `#:schema {args.output}` on a recipe's first line", file=sys.stderr)
    return 0
