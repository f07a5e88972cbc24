"""`finetune plan`: what a run would do, and where every value of the recipe came from."""

from __future__ import annotations

from typing import Any

from runner.components import RunContext
from runner.errors import FinetuneError, format_key
from runner.recipe.resolved import Recipe


def _leaves(value: Any, prefix: tuple = ()):
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from _leaves(sub, (*prefix, key))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, sub in enumerate(value):
            yield from _leaves(sub, (*prefix, i))
    else:
        yield prefix, value


def _show(value: Any) -> str:
    import tomli_w

    text = tomli_w.dumps({"v": value}).strip()[4:] if value is not None else ""
    return text if len(text) <= 70 else text[:67] + "..."


def provenance_table(recipe: Recipe):
    from rich.table import Table

    table = Table(title="resolved recipe", show_lines=False)
    table.add_column("key", overflow="fold")
    table.add_column("value", overflow="fold")
    table.add_column("from", style="dim", overflow="fold")
    prov = recipe.source.provenance
    for key, value in _leaves(recipe.resolved()):
        origin = prov.get(key)
        table.add_row(format_key(key), _show(value), str(origin) if origin else "default")
    return table


def plan(recipe: Recipe, console, offline: bool, samples: int = 3) -> None:
    from rich.table import Table

    from runner.encoding import default_cache_dir

    src = recipe.source
    console.print(f"[bold]{recipe.name}[/]: {src.path}")
    if len(src.chain) > 1:
        console.print("extends: " + " -> ".join(str(p) for p in src.chain))
    for override in src.overrides:
        console.print(f"override: --set {override}")
    console.print(provenance_table(recipe))

    components = Table(title="components")
    for column in ("section", "type", "what it does"):
        components.add_column(column)
    for spec in recipe.components():
        components.add_row(format_key(spec.key), spec.name, spec.cls.summary())
    console.print(components)

    notes: list[str] = []
    ctx = RunContext(
        seed=recipe.run.seed,
        cache_dir=default_cache_dir(),
        info=notes.append,
        warn=notes.append,
    )
    task = recipe.task.create()
    facts: dict[str, str] = {}
    data = tokenizer = None
    try:
        from runner.data import prepare_data
        from runner.run import quiet_libraries

        quiet_libraries(False)
        data = prepare_data(recipe, task, ctx)
        notes += data.notes
        facts["rows"] = ", ".join(f"{k} {v}" for k, v in data.sizes().items())
        if hasattr(task, "labels") and task.labels:
            facts["labels"] = ", ".join(task.labels)
    except FinetuneError as exc:
        if not offline:
            raise
        facts["data"] = f"not loaded: {exc.message}"

    model_component = recipe.model.create()
    if data is not None:
        try:
            from runner.modeling import ensure_pad_token
            from runner.run import resolve_max_length

            parts = data.parts("train")
            tokenizer = recipe.tokenizer.create().build(
                ctx, lambda: (t for p in parts for t in p.task.training_texts(p.splits["train"]))
            )
            ensure_pad_token(tokenizer)
            for variant in {id(p.task): p.task for p in parts if p.task is not task}.values():
                variant.prepare_tokenizer(tokenizer)
            task.prepare_tokenizer(tokenizer)
            max_length = resolve_max_length(recipe, tokenizer, model_component)
            facts["max length"] = f"{max_length} tokens, {recipe.tokenizer.options.padding} padding"
            spec = task.model_spec(tokenizer, max_length)
            model = model_component.build_empty(ctx, spec)
            model = recipe.strategy.create().apply(model, ctx, spec)
            from runner.modeling import count_parameters, describe_parameters

            facts["parameters"] = describe_parameters(count_parameters(model))
        except FinetuneError as exc:
            if not offline:
                raise
            facts["model"] = f"not built: {exc.message}"
        trainer = recipe.training.create()
        steps = trainer.planned_steps(data.sizes()["train"])
        if steps:
            facts["optimizer steps"] = str(steps)
    facts["run directory"] = f"{recipe.run.output_dir}/{recipe.name}/<timestamp>/"

    if data is not None and tokenizer is not None:
        first = data.parts("train")[0]
        rows = [dict(r) for r in first.splits["train"].select(range(min(samples, len(first.splits["train"]))))]
        previews = first.task.preview(rows, tokenizer, max_length)
        for n, pieces in enumerate(previews or [], 1):
            from rich.text import Text

            text = Text()
            for piece, trained in pieces:
                text.append(piece, style="bold" if trained else "dim")
            console.print(f"[bold]sample {n}[/] (dim: not trained on; bold: trained on)")
            console.print(text)

    table = Table(title="plan", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for key, value in facts.items():
        table.add_row(key, value)
    console.print(table)
    for note in notes:
        console.print(f"[dim]- {note}[/]")
