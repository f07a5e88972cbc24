"""`finetune sweep`: run (or continue, or join) a recipe's study; `finetune sweep report DIR`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from runner.cli.console import console as new_console
from runner.errors import FinetuneError, RunInterrupted
from runner.plugins.manager import get_plugins

USAGE = (
    "finetune sweep RECIPE [--storage URL] | finetune sweep --join NAME [--storage URL] | "
    "finetune sweep report DIR [--storage URL]"
)


def _needs_optuna() -> None:
    if importlib.util.find_spec("optuna") is None:
        raise FinetuneError(
            "finetune sweep needs the sweep extra (Optuna)", hint="pip install 'finetune-runner[sweep]'"
        )


def cmd_sweep(args) -> int:
    _needs_optuna()
    from runner.sweep import study as studies

    console = new_console()
    if args.target[:1] == ["report"] and len(args.target) == 2 and not Path("report").is_file():
        return _report(Path(args.target[1]), args, console)
    if args.join and args.target:
        raise FinetuneError("--join takes the recipe from the study: give no recipe", hint=USAGE)
    if not args.join and len(args.target) != 1:
        raise FinetuneError("expected one recipe", hint=USAGE)
    from runner.running.recipes import go_offline, load_recipe

    recipe = None  # a joining worker has no Recipe object: the Hub is probed as for any command
    if args.join:
        setup = studies.setup_from_study(args.join, args.storage, args.output)
    else:
        path = Path(args.target[0])
        recipe = load_recipe(path, args.overrides)
        setup = studies.setup_from_recipe(recipe, path, args.output, args.storage)
    # A searched text value may name a Hub model or dataset the base recipe does not: probe then.
    texts = recipe is not None and any(
        isinstance(value, str) for entry in recipe.sweep.space.values() for value in entry.choice or ()
    )
    go_offline(recipe=None if texts else recipe)
    studies.write_pointer(setup)
    return _work(setup, args, console)


def _work(setup, args, console) -> int:
    from runner.sweep.seeds import run_seed_repeats
    from runner.sweep.summary import write_outputs
    from runner.sweep.worker import Worker

    plugins = get_plugins()
    console.print(
        f"sweep [bold]{setup.name}[/]: {setup.target} trials, {setup.direction} validation {setup.metric}; "
        f"{setup.options.sampler} sampler, {setup.options.pruner} pruner; {setup.storage_label}"
    )
    worker = Worker(setup, plugins, console.print, trust_remote_code=args.trust_remote_code, debug=args.debug)
    try:
        worker.run()
        if setup.options.seeds:  # the best settings again with other seeds, once the search is over
            run_seed_repeats(worker)
    except RunInterrupted:
        write_outputs(setup, plugins.registry)
        raise
    found = write_outputs(setup, plugins.registry)
    _conclude(found, setup, console)
    return 0


def _conclude(found: dict, setup, console) -> None:
    states = [t["state"] for t in found["trials"]]
    counts = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))
    console.print(f"study {setup.name}: {counts or 'no trials'}")
    best = found["best"]
    if best is not None:
        from runner.sweep.worker import shown_value

        settings = "  ".join(f"{k}={shown_value(v)}" for k, v in best["params"].items())
        console.print(f"best: trial {best['number']}, {found['metric']} {best['value']:.4g}: {settings}")
        console.print(f"best recipe: {found['best_recipe']}")
    seeds = found.get("seeds")
    if seeds and seeds.get("mean") is not None:
        console.print(
            f"over {len(seeds['values'])} other seeds: {seeds['metric']} {seeds['mean']:.4g} ± {seeds['std']:.2g} (std)"
        )
    console.print(f"report: {setup.directory / 'sweep.html'}")


def _report(directory: Path, args, console) -> int:
    from runner.sweep import study as studies
    from runner.sweep.summary import write_outputs

    pointer = studies.read_pointer(directory)
    # sweep.json keeps a database URL without its password: --storage gives it again, or the driver
    # finds it (PGPASSWORD, ~/.pgpass)
    setup = studies.setup_from_study(pointer["name"], args.storage or pointer["storage"], directory)
    found = write_outputs(setup, get_plugins().registry)
    _conclude(found, setup, console)
    return 0
