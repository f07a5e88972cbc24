"""What `finetune validate` checks of a `[sweep]` beyond its own options: that each `[sweep.space]` key
names an option the recipe has, and that the metric is one the recipe measures on validation.

A space key is checked as the same key written in the recipe body would be: an option its
component does not take is "unknown key" with the same "did you mean", at the space entry's line.
Where the space also chooses the section's component (`"strategy.type" = { choice = ["lora",
"ia3"] }`), a key that any of the choices takes is allowed: trials of the others leave it out.
"""

from __future__ import annotations

from typing import Any

from runner.errors import Issue, KeyPath, RecipeError, clip, format_key
from runner.recipe.keys import parse_key_path
from runner.recipe.resolved import ComponentSpec, DataOptions, EvaluationOptions, Recipe, RunOptions
from runner.recipe.sections import LISTS, SECTIONS, TAGS, suggest
from runner.recipe.sweep_section import SweepOptions

_PLAIN = {"run": RunOptions, "evaluation": EvaluationOptions, "data": DataOptions}


def check_space(validator, raw_space: Any, components: dict[KeyPath, ComponentSpec]) -> None:
    """Add an issue for every space key that names no option of the recipe, through `validator` (the
    recipe's runner.recipe.validate.Validator, which imports this module). `components`: the
    recipe's validated components by key path ((section,), ("metrics", 0), ("data", "sources", 0))."""
    if not isinstance(raw_space, dict):
        return
    parsed = {parse_key_path(key): entry for key, entry in raw_space.items()}
    for key, entry in raw_space.items():
        path = parse_key_path(key)
        if path is None or not isinstance(path[0], str) or path[:2] in (("run", "output_dir"), ("run", "name")):
            continue  # validate's own check of the section names these
        problem = _problem(validator, path, entry, parsed, components)
        if problem is not None:
            message, hint = problem
            validator.issue(("sweep", "space", key), message, hint)


def _node(path: tuple) -> tuple[tuple, str | None, str] | str | None:
    """Where the options a key sets live: (key path of the component or plain section, its component
    kind or None, the key naming the component); a problem's text; None: nothing to check."""
    section = path[0]
    if section in SECTIONS:
        return (section,), SECTIONS[section][0], TAGS.get(section, "type")
    if section in LISTS or path[:2] == ("data", "sources"):
        at = 1 if section in LISTS else 2
        if len(path) <= at or not isinstance(path[at], int):
            return "an array of tables: name an entry by its index"
        return path[: at + 1], LISTS.get(section, "data_source"), "type"
    if section in _PLAIN:
        return (section,), None, ""
    return None


def _problem(validator, path, entry, space, components) -> tuple[str, str | None] | None:
    node = _node(path)
    if node is None:
        return None
    if isinstance(node, str):
        return node, f'e.g. "{format_key(path[:1] if path[0] != "data" else path[:2])}[0].<option>"'
    prefix, kind, tag = node
    rel = path[len(prefix) :]
    if not rel:
        return "names a whole table, not one of its options", f'e.g. "{format_key(prefix)}.<option>"'
    if kind is None:
        return _unknown(validator, _PLAIN[prefix[0]], None, prefix, rel, entry)
    if len(prefix) > 1 and prefix not in components and not _present(validator.source.data, prefix):
        return f"the recipe has no {format_key(prefix)} to search", "a space key sets options of entries the recipe has"
    if rel == (tag,):
        names = validator.registry.names(kind)
        for value in (entry.get("choice") or []) if isinstance(entry, dict) else []:
            if not isinstance(value, str) or validator.registry.get(kind, value) is None:
                close = suggest(str(value), names) if isinstance(value, str) else None
                hint = f"did you mean '{close}'?" if close else f"available: {', '.join(names) or 'none'}"
                return f"unknown {kind.replace('_', ' ')} '{clip(str(value))}'", hint
        return None
    candidates = _candidates(validator, kind, space.get((*prefix, tag)), components.get(prefix))
    found = []
    for cls in candidates:  # allowed when any component a trial may have takes it
        problem = _unknown(validator, cls.Options, cls.aliases, prefix, rel, entry)
        if problem is None:
            return None
        found.append(problem)
    # the closest "did you mean" any of them offers
    return next((p for p in found if (p[1] or "").startswith("did you mean")), found[0] if found else None)


def _present(data: Any, path: tuple) -> bool:
    for part in path:
        in_table = isinstance(data, dict) and isinstance(part, str) and part in data
        if not in_table and not (isinstance(data, list) and isinstance(part, int) and part < len(data)):
            return False
        data = data[part]
    return True


def _candidates(validator, kind: str, tag_entry: Any, spec: ComponentSpec | None) -> list[type]:
    """The components a trial's section may have: the space's choices of it, else the recipe's."""
    choices = tag_entry.get("choice") if isinstance(tag_entry, dict) else None
    if isinstance(choices, list):
        found = [validator.registry.get(kind, c) for c in choices if isinstance(c, str)]
        chosen = [cls for cls in found if cls is not None]
        if chosen:
            return chosen
    return [spec.cls] if spec is not None else []


def _unknown(validator, model, aliases, prefix: tuple, rel: tuple, entry: Any) -> tuple[str, str | None] | None:
    """The recipe body's verdict on the key: its options model validates a table holding just the
    key, and an "unknown key" issue on the way to it is the key's."""
    value = _example(entry)
    raw: Any = value
    for part in reversed(rel):
        raw = [raw] if isinstance(part, int) else {part: raw}
    if not isinstance(raw, dict):
        return None
    probe = type(validator)(validator.source, validator.registry)  # a fresh validator of the same recipe
    probe.options(model, raw, prefix, aliases or {})
    on_the_way = {(*prefix, *rel[:n]) for n in range(1, len(rel) + 1)}
    for issue in probe.issues:
        if issue.key in on_the_way and issue.message == "unknown key":
            return issue.message, issue.hint
    return None


def _example(entry: Any) -> Any:
    if isinstance(entry, dict):
        for kind in ("choice", "uniform", "log_uniform", "int", "log_int"):
            values = entry.get(kind)
            if isinstance(values, list) and values:
                return values[0]
    return None


# -- the metric ----------------------------------------------------------------------------------
def metric_problem(recipe: Recipe, options: SweepOptions) -> tuple[KeyPath, str, str | None] | None:
    """Why the study cannot optimise its metric (a test metric, one the recipe does not measure)."""
    metric = _metric(recipe, options)
    split, _, name = metric.rpartition(".")
    key = ("sweep", "metric") if "metric" in (recipe.source.data.get("sweep") or {}) else ("sweep",)
    if split == "test":
        hint = "name the validation metric, e.g. 'accuracy'"
        return key, "a sweep chooses on the validation split; choosing on test leaks it", hint
    if split not in ("", "validation"):
        return key, f"not a validation metric: '{clip(metric)}'", "e.g. 'accuracy' or 'loss'"
    known = _greater(recipe)
    if name != "loss" and name not in known:
        return key, f"the recipe measures no '{clip(name)}'", f"one of: {', '.join(['loss', *known])}"
    return None


def sweep_objective(recipe: Recipe, options: SweepOptions) -> tuple[str, str]:
    """The validation metric a study optimises and its direction; RecipeError when it cannot."""
    problem = metric_problem(recipe, options)
    if problem is not None:
        key, message, hint = problem
        raise RecipeError([Issue(message, recipe.source.locate(key), key, hint)])
    name = _metric(recipe, options).rpartition(".")[2]
    greater = _greater(recipe)
    direction = options.direction or ("maximize" if name != "loss" and greater.get(name, False) else "minimize")
    return name, direction


def _metric(recipe: Recipe, options: SweepOptions) -> str:
    return options.metric or getattr(recipe.training.options, "best_metric", None) or "loss"


def _greater(recipe: Recipe) -> dict[str, bool]:
    return {spec.create().key(): spec.cls.greater_is_better for spec in recipe.metrics}
