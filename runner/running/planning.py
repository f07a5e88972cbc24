"""What a run would do, without training: `runner.plan` and `finetune plan`.

A Plan is data (the command line renders it with rich): where every value of the recipe came
from, its components, what the data, tokenizer and model turn out to be (rows, maximum length,
parameters, memory per device, optimizer steps), formatted training samples, and warnings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.components import RunContext
from runner.errors import FinetuneError, format_key
from runner.plugins.manager import Plugins, get_plugins
from runner.recipe.build_check import check_build
from runner.recipe.keys import leaves
from runner.recipe.resolved import Recipe
from runner.running.recipes import Say, go_offline, load_recipe, tell


@dataclass
class Plan:
    """What `finetune plan` shows. `provenance`: (key path as --set takes it, value, where it came
    from: a file and line, an override, or "default"); `components`: (section, type, what it
    does); `facts`: rows, labels, max length, parameters, memory, optimizer steps, evaluation, run
    directory, ... (a row --offline cannot work out says "unknown (...)" with the reason);
    `samples`: formatted training rows as (text, trained on) pieces; `notes`: what the data and
    tokenizer said while loading."""

    name: str
    path: Path
    chain: list[Path]
    overrides: list[str]
    provenance: list[tuple[str, Any, str]]
    components: list[tuple[str, str, str]]
    facts: dict[str, str] = field(default_factory=dict)
    samples: list[list[tuple[str, bool]]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def plan(
    recipe: Recipe | str | os.PathLike,
    *,
    overrides: list[str] | None = None,
    offline: bool = False,
    samples: int = 3,
    nproc: int = 1,
    nnodes: int = 1,
    plugins: Plugins | None = None,
    say: Say = tell,
) -> Plan:
    """What `finetune run` would do with `recipe` (a Recipe, or a path with `overrides`) on
    `nproc` processes on each of `nnodes` machines, without training. `offline`: never ask the
    Hub, and say which rows cannot be known; otherwise a data or model error raises as a run's would."""
    plugins = plugins or get_plugins()
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides, plugins)
    elif overrides:
        recipe = load_recipe(recipe.source.path, [*recipe.source.overrides, *overrides], plugins)
    go_offline(recipe=recipe, requested=offline, say=say)
    check_build(recipe)
    src = recipe.source
    prov = src.provenance
    found = Plan(
        name=recipe.name,
        path=Path(src.path),
        chain=[Path(p) for p in src.chain],
        overrides=list(src.overrides),
        provenance=[
            (format_key(key), value, str(prov[key]) if prov.get(key) else "default")
            for key, value in leaves(recipe.resolved())
        ],  # fmt: skip
        components=[(format_key(spec.key), spec.name, spec.cls.summary()) for spec in recipe.components()],
    )
    _work_out(recipe, found, offline, samples, nproc * nnodes, nnodes)
    return found


# The rows a plan works out from the built model: said to be unknown, with the reason, when --offline cannot build it.
MODEL_ROWS = ("parameters", "memory per device")


def _unknown(reason: str, because: str = "") -> str:
    """A plan row's value when --offline cannot work it out: "unknown (offline: <reason>)"."""
    reason = reason.rstrip(".")
    if because:
        reason = f"{because}, and {reason}"
    return f"unknown ({reason})" if "offline" in reason else f"unknown (offline: {reason})"


def _work_out(recipe: Recipe, found: Plan, offline: bool, samples: int, world_size: int, nnodes: int) -> None:
    """Load the data, build the tokenizer and an empty model as a run would, and fill `found`."""
    from runner.pipeline.encoding import default_cache_dir

    notes = found.notes
    ctx = RunContext(seed=recipe.run.seed, cache_dir=default_cache_dir(), info=notes.append, warn=notes.append)
    task = recipe.task.create()
    facts = found.facts
    data = tokenizer = None
    unknown: dict[str, str] = {}  # rows --offline cannot work out: why
    try:
        from runner.pipeline.data import prepare_data
        from runner.pipeline.run import quiet_libraries

        quiet_libraries(False, recipe)
        data = prepare_data(recipe, task, ctx)
        notes += data.notes
        facts["rows"] = ", ".join(f"{k} {v}" for k, v in data.sizes().items())
        if hasattr(task, "labels") and task.labels:
            facts["labels"] = ", ".join(task.labels)
    except FinetuneError as exc:
        if not offline:
            raise
        facts["data"] = f"not loaded: {exc.message}"
        unknown = {"optimizer steps": _unknown(exc.message)}
        if recipe.tokenizer.cls.trains_on_data:  # its vocabulary, and so the model's size, comes from the data
            unknown.update(dict.fromkeys(MODEL_ROWS, _unknown(exc.message, "the tokenizer is trained on the data")))

    model_component = recipe.model.create()
    if data is not None or not recipe.tokenizer.cls.trains_on_data:  # a given tokenizer needs no data
        try:
            from runner.pipeline.preparing import resolve_max_length
            from runner.running.plan_memory import memory_facts
            from runner.toolkit.modeling import count_parameters, describe_parameters, ensure_pad_token

            parts = data.parts("train") if data is not None else []
            tokenizer = recipe.tokenizer.create().build(
                ctx, lambda: (t for p in parts for t in p.task.training_texts(p.splits["train"]))
            )
            ensure_pad_token(tokenizer)
            for variant in {id(p.task): p.task for p in parts if p.task is not task}.values():
                variant.prepare_tokenizer(tokenizer)
            task.prepare_tokenizer(tokenizer)
            max_length = resolve_max_length(recipe, tokenizer, model_component)
            facts["max length"] = f"{max_length} tokens, {recipe.tokenizer.options.padding} padding"
            spec = recipe.training.create().model_spec(task.model_spec(tokenizer, max_length))
            model = model_component.build_empty(ctx, spec)
            model = recipe.strategy.create().apply(model, ctx, spec)
            counts = count_parameters(model)
            facts["parameters"] = describe_parameters(counts)
            adapted = _adapted_modules(model)
            if adapted:
                facts["adapted modules"] = adapted
            per_machine = max(1, world_size // nnodes)
            estimate, warnings = memory_facts(recipe, model, counts, spec, max_length, world_size, per_machine)
            facts.update(estimate)
            found.warnings += warnings
        except FinetuneError as exc:
            if not offline:
                raise
            facts["model"] = f"not built: {exc.message}"
            unknown.update(dict.fromkeys(MODEL_ROWS, _unknown(exc.message)))
    if data is not None:
        steps = recipe.training.create().planned_steps(data.sizes()["train"], world_size)
        if steps:
            facts["optimizer steps"] = str(steps)
    for key, why in unknown.items():  # said, with the reason, rather than left out
        facts.setdefault(key, why)
    facts["evaluation"] = _evaluation(recipe)
    facts["run directory"] = f"{recipe.run.output_dir}/{recipe.name}/<timestamp>/"

    if data is not None and tokenizer is not None and samples:
        first = data.parts("train")[0]
        rows = [dict(r) for r in first.splits["train"].select(range(min(samples, len(first.splits["train"]))))]
        found.samples = [list(pieces) for pieces in first.task.preview(rows, tokenizer, max_length) or []]


def _adapted_modules(model) -> str:
    """Which modules an adapter strategy wraps (peft's `targeted_module_names`), by their last name:
    what `target_modules = "all-linear"` or the architecture's default resolved to."""
    names = getattr(model, "targeted_module_names", None)
    if not names:
        return ""
    kinds = sorted({name.rsplit(".", 1)[-1] for name in names})
    return f"{', '.join(kinds)} ({len(names)} modules)"


def _evaluation(recipe: Recipe) -> str:
    """What the fine-tuned model will be compared with, and how sure the test figures will be."""
    e, task = recipe.evaluation, recipe.task.cls
    against = ["the untouched base model"] if e.baseline else []
    if e.baseline and task.produces == "classes":
        against.append("the majority class")
    # few-shot answers are scored by text metrics only (runner.evaluation.evaluator.baselines)
    text_metrics = any(spec.cls.consumes == {"text"} for spec in recipe.metrics)
    if e.baseline and task.generates and e.few_shot and text_metrics:
        against.append(f"{e.few_shot}-shot prompting")
    compared = f"against {', '.join(against)}" if against else "no baseline"
    sure = f"; test intervals from {e.bootstrap} resamples ({e.confidence:.0%})" if e.bootstrap else ""
    audits = f"; audits: {', '.join(spec.create().key() for spec in recipe.audits)}" if recipe.audits else ""
    return compared + sure + audits
