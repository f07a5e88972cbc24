"""From a study's trial to a recipe: the values each space key takes, and the recipe that sets them.

Keys that name a section's component (`strategy.type`) are chosen first, so that keys of that
section which the chosen component does not have (`strategy.r` when the trial tries `ia3`) are not
searched in that trial: the study learns about conditional settings instead of failing trials.
When a trial changes a section's component, the keys the new one does not take are left out of its
recipe, and the sweep says which.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from runner.options import Options
from runner.plugins.registry import Registry
from runner.recipe.keys import parse_key_path
from runner.recipe.paths import file_marker
from runner.recipe.resolved import Recipe
from runner.recipe.sections import SECTIONS, TAGS
from runner.recipe.sweep_section import SpaceEntry, SweepOptions


@dataclass
class TrialRecipe:
    """What one trial runs: its recipe as data, the values it tried, and what was left out."""

    data: dict[str, Any]
    values: dict[str, Any]
    not_applicable: list[str] = field(default_factory=list)  # space keys the trial's components lack
    dropped: list[str] = field(default_factory=list)  # base keys the changed component does not take


def _tag(section: str) -> str:
    return TAGS.get(section, "type")


def _ordered(space: dict[str, SpaceEntry]) -> list[str]:
    """Component choices first: which keys apply depends on them."""
    return sorted(space, key=lambda key: 0 if _names_component(key) else 1)


def _names_component(key: str) -> bool:
    path = parse_key_path(key) or ()
    return len(path) == 2 and path[0] in SECTIONS and path[1] == _tag(path[0])


def _component_fields(registry: Registry, section: str, name: Any) -> set[str] | None:
    kind = SECTIONS[section][0]
    cls = registry.get(kind, name) if isinstance(name, str) else None
    return None if cls is None else {*cls.Options.model_fields, _tag(section)}


def _component(base: dict, values: dict[str, Any], section: str) -> Any:
    """The component a trial's section names: the trial's choice, else the recipe's, else the default."""
    tag = _tag(section)
    chosen = values.get(f"{section}.{tag}")
    if chosen is not None:
        return chosen
    table = base.get(section)
    return table.get(tag, SECTIONS[section][1]) if isinstance(table, dict) else SECTIONS[section][1]


def applies(key: str, base: dict, values: dict[str, Any], registry: Registry) -> bool:
    """Whether a space key is an option of the component its section names in this trial."""
    path = parse_key_path(key) or ()
    if len(path) < 2 or path[0] not in SECTIONS or _names_component(key):
        return True
    fields = _component_fields(registry, path[0], _component(base, values, path[0]))
    return fields is None or path[1] in fields  # an unknown component: validation names it


def suggest(trial, entry: SpaceEntry, key: str) -> Any:
    """One value from an Optuna trial, the distribution the entry declares."""
    kind = entry.kind
    if kind == "choice":
        index = trial.suggest_categorical(key, list(range(len(entry.choice)))) if _mixed(entry) else None
        return entry.choice[index] if index is not None else trial.suggest_categorical(key, entry.choice)
    low, high = getattr(entry, kind)
    if kind in ("int", "log_int"):
        step = int(entry.step or 1)
        return trial.suggest_int(key, int(low), int(high), step=step, log=kind == "log_int")
    return trial.suggest_float(key, float(low), float(high), step=entry.step, log=kind == "log_uniform")


def grid_values(entry: SpaceEntry) -> list[Any]:
    """An entry's grid as the study records it (a mixed choice by index, as `suggest` draws it)."""
    return list(range(len(entry.choice))) if entry.choice is not None and _mixed(entry) else entry.grid()


def _mixed(entry: SpaceEntry) -> bool:
    """Optuna's categorical values must be one JSON type to compare; a mixed list is chosen by index."""
    return len({type(v) for v in entry.choice}) > 1


def choose(trial, sweep: SweepOptions, base: dict, registry: Registry) -> TrialRecipe:
    """Draw a trial's values (define-by-run: conditional keys are drawn only where they apply)."""
    values: dict[str, Any] = {}
    skipped = []
    for key in _ordered(sweep.space):
        if applies(key, base, values, registry):
            values[key] = suggest(trial, sweep.space[key], key)
        else:
            skipped.append(key)
    return build(base, values, registry, skipped)


def build(base: dict, values: dict[str, Any], registry: Registry, skipped: list[str] | None = None) -> TrialRecipe:
    """The base recipe with a trial's values set (and, where a component changed, its foreign keys out)."""
    data = copy.deepcopy(base)
    data.pop("sweep", None)
    dropped: list[str] = []
    for key, value in values.items():
        path = parse_key_path(key)
        if _names_component(key):
            section = path[0]
            table = data.setdefault(section, {})
            if isinstance(table, dict) and table.get(_tag(section)) != value:
                fields = _component_fields(registry, section, value)
                for name in [k for k in table if fields is not None and k not in fields]:
                    dropped.append(f"{section}.{name}")
                    del table[name]
        set_key(data, path, value)
    return TrialRecipe(data, values, list(skipped or []), dropped)


def set_key(data: dict, path: tuple, value: Any) -> None:
    """Set a key path in recipe data, making the tables (or growing the arrays) on the way."""
    node: Any = data
    for part, nxt in zip(path[:-1], path[1:], strict=True):
        if isinstance(node, list):
            while len(node) <= part:
                node.append({})
            node = node[part]
        else:
            node = node.setdefault(part, [] if isinstance(nxt, int) else {})
    if isinstance(node, list):
        while len(node) <= path[-1]:
            node.append(None)
    node[path[-1]] = value


def absolute_paths(recipe: Recipe) -> dict[str, Any]:
    """The recipe's data as written, with every file option made absolute as validation resolved it:
    trial recipes are written elsewhere, and a joining machine may start from another folder."""
    data = copy.deepcopy(recipe.source.data)
    for spec in recipe.components():
        node: Any = data
        for part in spec.key:
            node = node[part] if isinstance(node, dict | list) and _has(node, part) else None
        if isinstance(node, dict):
            _copy_paths(spec.options, node)
    return data


def _has(node: dict | list, part: Any) -> bool:
    return part in node if isinstance(node, dict) else isinstance(part, int) and part < len(node)


def _copy_paths(options: Options, table: dict) -> None:
    for name, info in type(options).model_fields.items():
        if name not in table:
            continue
        value = getattr(options, name)
        if file_marker(info) is not None:
            table[name] = value
        elif isinstance(value, Options) and isinstance(table[name], dict):
            _copy_paths(value, table[name])
        elif isinstance(value, list) and isinstance(table[name], list):
            for item, raw in zip(value, table[name], strict=False):
                if isinstance(item, Options) and isinstance(raw, dict):
                    _copy_paths(item, raw)
