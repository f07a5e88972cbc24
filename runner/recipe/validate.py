"""Validating a recipe against the components plugins registered.

Every problem is collected and reported at once, each with file, line, column and key path:
unknown sections, keys and component types (with a "did you mean"), wrong value types, values that
make no sense, files that do not exist, and combinations that cannot work (a metric the task cannot
feed). Nothing in a recipe can name code: a `type` is looked up among registered components only.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from runner.errors import Issue, KeyPath, PluginError, RecipeError, clip
from runner.options import Options, _ComponentMarker
from runner.plugins.registry import Registry
from runner.recipe.combinations import engine_problems, packing_problems, quantization_problems
from runner.recipe.keys import parse_key_path
from runner.recipe.load import RecipeSource
from runner.recipe.paths import resolve_paths
from runner.recipe.requires import requirement_problems
from runner.recipe.resolved import ComponentSpec, DataOptions, EvaluationOptions, Recipe, RunOptions
from runner.recipe.sections import (
    DEFAULT_REPORTERS,
    LISTS,  # noqa: F401 - runner.cli.schema reads it from here
    REQUIRED,
    SECTIONS,
    TAGS,
    TOP_LEVEL,
    suggest,
)
from runner.recipe.sweep_check import check_space, metric_problem
from runner.recipe.sweep_section import SweepOptions

_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "list_type": "an array",
}


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return f'"{clip(value)}"'
    return clip(repr(value))


def _unwrap(annotation: Any) -> list[Any]:
    """The plain types inside Optional/Union/Annotated/list/dict annotations."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, dict, tuple, set):
        args = typing.get_args(annotation)
        if origin is dict:
            args = args[1:]
        return [t for a in args for t in _unwrap(a)]
    return [annotation]


def _fields_at(model: type[BaseModel], path: KeyPath) -> list[str] | None:
    """Field names of the options model found at `path` inside `model`, if it is a model."""
    current: list[type[BaseModel]] = [model]
    for part in path:
        if isinstance(part, int):
            continue
        nxt: list[type[BaseModel]] = []
        for m in current:
            field = m.model_fields.get(part)
            if field is None:
                continue
            nxt += [t for t in _unwrap(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
        if not nxt:
            return None
        current = nxt
    return sorted({name for m in current for name in m.model_fields})


def _component_marker(annotation: Any, metadata: list) -> _ComponentMarker | None:
    """The `runner.ComponentOf` marker of an option: in pydantic's metadata, or inside an Optional."""
    found = next((m for m in metadata if isinstance(m, _ComponentMarker)), None)
    if found is None and typing.get_origin(annotation) is typing.Annotated:
        found = next((m for m in typing.get_args(annotation)[1:] if isinstance(m, _ComponentMarker)), None)
    for arg in typing.get_args(annotation) if found is None else ():
        found = found or _component_marker(arg, [])
    return found


class Validator:
    def __init__(self, source: RecipeSource, registry: Registry):
        self.source = source
        self.registry = registry
        self.issues: list[Issue] = []

    def issue(self, key: KeyPath, message: str, hint: str | None = None) -> None:
        self.issues.append(Issue(message, self.source.locate(key), key, hint))

    # -- pydantic errors -> issues -------------------------------------------------------------
    def options(
        self, model: type[Options], raw: dict, key: KeyPath, aliases: dict[str, str] | None = None
    ) -> Options | None:
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            self._report(model, raw, key, exc, aliases or {})
            return None

    def _report(self, model, raw, key, exc: ValidationError, aliases: dict[str, str]) -> None:
        grouped: dict[KeyPath, list[dict]] = {}
        for err in exc.errors():
            real: list[str | int] = []
            node: Any = raw
            loc = err["loc"]
            for i, part in enumerate(loc):
                if (
                    isinstance(node, dict)
                    and part in node
                    or isinstance(node, list)
                    and isinstance(part, int)
                    and part < len(node)
                ):
                    node = node[part]
                elif i == len(loc) - 1 and err["type"] == "missing":
                    pass
                else:
                    continue  # a union member's tag, not a key of the recipe
                real.append(part)
            grouped.setdefault(tuple(real), []).append(err)
        for path, errors in grouped.items():
            self._report_one(model, (*key, *path), path, errors, aliases)

    def _report_one(self, model, full_key, rel_path, errors, aliases) -> None:
        typed = [e for e in errors if e["type"] in _TYPE_WORDS]
        others = [e for e in errors if e["type"] not in _TYPE_WORDS]
        if typed and not others:
            wanted = " or ".join(dict.fromkeys(_TYPE_WORDS[e["type"]] for e in typed))
            self.issue(full_key, f"expected {wanted} (got {_show(typed[0]['input'])})")
            return
        for err in others:
            kind, msg = err["type"], err["msg"]
            if kind == "extra_forbidden":
                name = str(rel_path[-1])
                if len(rel_path) == 1 and name in aliases:
                    self.issue(full_key, "unknown key", hint=f"this runner calls it '{aliases[name]}'")
                    continue
                fields = _fields_at(model, rel_path[:-1]) or []
                close = suggest(name, fields)
                hint = f"did you mean '{close}'?" if close else (f"known keys: {', '.join(fields)}" if fields else None)
                self.issue(full_key, "unknown key", hint=hint)
            elif kind == "missing":
                self.issue(full_key, "required key is missing")
            elif kind == "literal_error":
                expected = err.get("ctx", {}).get("expected", "")
                got = err["input"]
                choices = [c.strip("'") for c in expected.replace(" or ", ", ").split(", ")]
                close = suggest(str(got), choices) if isinstance(got, str) else None
                self.issue(
                    full_key,
                    f"expected one of {expected} (got {_show(got)})",
                    hint=f"did you mean '{close}'?" if close else None,
                )
            elif kind == "value_error":
                self.issue(full_key, msg.removeprefix("Value error, "))
            else:
                text = msg.replace("Input should be", "must be")
                self.issue(full_key, f"{text} (got {_show(err['input'])})")

    # -- components -------------------------------------------------------------------------------
    def component(
        self, kind: str, raw: Any, key: KeyPath, default: str | None = None, tag: str = "type"
    ) -> ComponentSpec | None:
        noun = kind.replace("_", " ")
        if not isinstance(raw, dict):
            self.issue(key, f"expected a table (got {_show(raw)})")
            return None
        name = raw.get(tag, default)
        names = self.registry.names(kind)
        if name is None:
            self.issue(key, f"missing `{tag}`: which {noun}?", hint=f"one of: {', '.join(names)}")
            return None
        if not isinstance(name, str):
            self.issue((*key, tag), f"expected a string (got {_show(name)})")
            return None
        try:
            cls = self.registry.get(kind, name)
        except PluginError as exc:
            self.issue((*key, tag), exc.message, exc.hint)
            return None
        if cls is None:
            close = suggest(name, names)
            hint = f"did you mean '{close}'?" if close else f"available: {', '.join(names) or 'none'}"
            if "." in name and not close:  # `module.function`, as other tools' configs name code
                hint = (
                    f"a recipe names registered components only, never import paths (a shared recipe runs no code "
                    f"that is not an installed plugin): install the package that registers it; {hint}"
                )
            self.issue((*key, tag), f"unknown {noun} '{clip(name)}'", hint=hint)
            return None
        options = self.options(cls.Options, {k: v for k, v in raw.items() if k != tag}, key, cls.aliases)
        if options is None:
            return None
        resolve_paths(options, key, self.source, self.issue, self.registry.packs)
        self._nested(options, key)
        return ComponentSpec(kind=kind, name=name, cls=cls, options=options, key=key, tag=tag)

    def _nested(self, options: Options, key: KeyPath) -> None:
        """The components an option names (`runner.ComponentOf`), checked like any component: a name
        alone (`extract = "boxed"`) is answered at its own key, a table at its keys."""
        for field_name, field in type(options).model_fields.items():
            marker = _component_marker(field.annotation, field.metadata)
            value = getattr(options, field_name)
            if marker is None or value is None:
                continue
            at = (*key, field_name)
            if isinstance(value, dict):
                self.component(marker.kind, value, at)
                continue
            before = len(self.issues)
            self.component(marker.kind, {"type": value}, at)
            for i in range(before, len(self.issues)):  # no `type` key to point at: the option is the name
                if self.issues[i].key == (*at, "type"):
                    self.issues[i] = dataclasses.replace(self.issues[i], key=at, location=self.source.locate(at))

    def component_list(self, kind: str, raw: Any, key: KeyPath) -> list[ComponentSpec]:
        if not isinstance(raw, list):
            self.issue(key, f"expected an array of tables, e.g. [[{key[-1]}]] (got {_show(raw)})")
            return []
        specs = [self.component(kind, item, (*key, i)) for i, item in enumerate(raw)]
        return [s for s in specs if s is not None]

    # -- the recipe --------------------------------------------------------------------------------
    def validate(self) -> Recipe:
        data = self.source.data
        for section in data:
            if section not in TOP_LEVEL:
                close = suggest(section, TOP_LEVEL)
                hint = f"did you mean '{close}'?" if close else f"sections: {', '.join(TOP_LEVEL)}"
                self.issue((section,), "unknown section", hint=hint)
        for section in REQUIRED:
            if section not in data:
                self.issue((), f"missing section [{section}]")

        run = self.options(RunOptions, data.get("run", {}), ("run",)) if self._table(data, "run") else None
        for index, message, hint in requirement_problems(getattr(run, "requires", None) or []):
            self.issue(("run", "requires", index), message, hint=hint)
        data_options, sources = self._data(data.get("data"))
        specs: dict[str, ComponentSpec | None] = {}
        for section, (kind, default) in SECTIONS.items():
            if section in data or default is not None:
                tag = TAGS.get(section, "type")
                specs[section] = self.component(kind, data.get(section, {}), (section,), default, tag)
        metrics_defaulted = "metrics" not in data
        metrics = self.component_list("metric", data["metrics"], ("metrics",)) if not metrics_defaulted else []
        reporters = self.component_list("reporter", data.get("reporters", DEFAULT_REPORTERS), ("reporters",))
        audits = self.component_list("audit", data.get("audits", []), ("audits",))
        rewards = self.component_list("reward", data.get("rewards", []), ("rewards",))
        evaluation = None
        if self._table(data, "evaluation"):
            evaluation = self.options(EvaluationOptions, data.get("evaluation", {}), ("evaluation",))
        sweep = self._sweep(data.get("sweep")) if "sweep" in data and self._table(data, "sweep") else None

        task = specs.get("task")
        if metrics_defaulted and task is not None:
            defaults = [
                self.component("metric", dict(m), ("metrics", i)) for i, m in enumerate(task.cls.default_metrics)
            ]
            metrics = [m for m in defaults if m is not None]
        if "sweep" in data and isinstance(data["sweep"], dict):  # space keys checked as the same keys in the body
            found = [s for s in (*specs.values(), *sources, *metrics, *reporters, *audits, *rewards) if s is not None]
            check_space(self, data["sweep"].get("space"), {s.key: s for s in found})

        if self.issues or None in (run, data_options, evaluation) or any(s is None for s in specs.values()):
            raise RecipeError(self.issues)
        recipe = Recipe(
            source=self.source,
            run=run,
            data=data_options,
            sources=sources,
            tokenizer=specs["tokenizer"],
            model=specs["model"],
            task=specs["task"],
            strategy=specs["strategy"],
            training=specs["training"],
            distributed=specs["distributed"],
            metrics=metrics,
            reporters=reporters,
            evaluation=evaluation,
            audits=audits,
            objective=specs.get("objective"),
            rewards=rewards,
            metrics_defaulted=metrics_defaulted,
            sweep=sweep,
        )
        self._cross_checks(recipe)
        if self.issues:
            raise RecipeError(self.issues)
        return recipe

    def _table(self, data: dict, section: str) -> bool:
        if section in data and not isinstance(data[section], dict):
            self.issue((section,), f"expected a table [{section}] (got {_show(data[section])})")
            return False
        return True

    def _sweep(self, raw: dict) -> SweepOptions | None:
        """`[sweep]`: its options, and space keys that name a recipe key (what each trial sets)."""
        space = raw.get("space")
        for key in space if isinstance(space, dict) else ():
            path = parse_key_path(key)
            if path is None or not isinstance(path[0], str):
                self.issue(("sweep", "space", key), "not a key path", hint='e.g. "training.learning_rate"')
            elif path[0] not in TOP_LEVEL or path[0] == "sweep":
                close = suggest(path[0], [s for s in TOP_LEVEL if s != "sweep"])
                hint = f"did you mean '{close}'?" if close else "a space key starts with a recipe section"
                self.issue(("sweep", "space", key), f"no recipe section '{clip(path[0])}' to search", hint=hint)
            elif path[:2] in (("run", "output_dir"), ("run", "name")):
                self.issue(("sweep", "space", key), "the sweep places and names each trial's run itself")
        return self.options(SweepOptions, raw, ("sweep",))

    def _data(self, raw: Any) -> tuple[DataOptions | None, list[ComponentSpec]]:
        if raw is None:
            return None, []
        if not isinstance(raw, dict):
            self.issue(("data",), f"expected a table [data] (got {_show(raw)})")
            return None, []
        if "sources" not in raw:
            self.issue(("data",), "no data sources", hint="add a [[data.sources]] table with a `type`")
            sources: list[ComponentSpec] = []
        else:
            sources = self.component_list("data_source", raw["sources"], ("data", "sources"))
            if isinstance(raw["sources"], list) and not raw["sources"]:
                self.issue(("data", "sources"), "no data sources")
        rest = {k: v for k, v in raw.items() if k != "sources"}
        return self.options(DataOptions, rest, ("data",)), sources

    def _sources(self, recipe: Recipe) -> None:
        """Per-source task options, weights and names."""
        task_options = recipe.task.options.model_dump()
        names: dict[str, tuple] = {}
        for spec in recipe.sources:
            overrides = spec.options.task
            if overrides:
                self.options(recipe.task.cls.Options, {**task_options, **overrides}, (*spec.key, "task"))
            if spec.options.name is not None:
                if spec.options.name in names:
                    self.issue((*spec.key, "name"), f"a second source named '{clip(spec.options.name)}'")
                names[spec.options.name] = spec.key
        weighted = [spec.options.weight is not None for spec in recipe.sources]
        if any(weighted) and not all(weighted):
            missing = next(spec for spec in recipe.sources if spec.options.weight is None)
            self.issue(missing.key, "no weight: give every source a weight, or none (to mix them by size)")

    def _unique(self, recipe: Recipe, specs: list[ComponentSpec], noun: str, hint: str | None = None) -> None:
        """Components of a list whose results share a key would overwrite each other's."""
        seen: dict[str, KeyPath] = {}
        for spec in specs:
            key = spec.create().key()
            if key in seen:
                first = recipe.source.locate(seen[key])
                self.issue(spec.key, f"a second {noun} named '{key}' (first at {first})", hint=hint)
            seen.setdefault(key, spec.key)

    def _cross_checks(self, recipe: Recipe) -> None:
        self._sources(recipe)
        for check in (engine_problems, quantization_problems, packing_problems):
            for key, message, hint in check(recipe):
                self.issue(key, message, hint=hint)
        task = recipe.task.cls
        feeds = {task.produces, "text"} if task.generates else {task.produces}
        for spec in recipe.metrics:
            if not feeds & spec.cls.consumes:
                self.issue(
                    (*spec.key, "type") if not recipe.metrics_defaulted else spec.key,
                    f"metric '{spec.name}' cannot score the predictions of task '{recipe.task.name}' ({task.produces})",
                )
        self._unique(recipe, recipe.metrics, "metric")
        self._unique(recipe, recipe.audits, "audit", hint="give one of them a distinct `name`")
        self._unique(recipe, recipe.rewards, "reward", hint="give one of them a distinct `name`")
        if recipe.sweep is not None and (problem := metric_problem(recipe, recipe.sweep)) is not None:
            self.issue(*problem)
        for spec in recipe.components():
            try:
                problems = list(spec.cls.check(spec.options, recipe))
            except Exception as exc:  # a plugin's check must not hide the other problems
                problems = [((), f"check of '{spec.name}' failed: {type(exc).__name__}: {exc}")]
            for rel, message in problems:
                self.issue((*spec.key, *rel), message)


def validate(source: RecipeSource, registry: Registry) -> Recipe:
    """Validate a loaded recipe; raise RecipeError listing every problem found."""
    return Validator(source, registry).validate()
