"""The CLI's commands. Heavy imports happen inside the commands that train or load models."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from runner.cli.lock import check_locked, keep_lock
from runner.errors import FinetuneError, RecipeError, RunInterrupted, TrainingDiverged
from runner.plugins.manager import get_plugins
from runner.recipe.build_check import check_build
from runner.recipe.load import load_recipe
from runner.recipe.resolved import Recipe
from runner.recipe.validate import validate
from runner.storage.rundir import RunDir


def load_and_validate(path: Path, overrides: list[str] | None = None) -> Recipe:
    return validate(load_recipe(path, overrides), get_plugins().registry)


def _console():
    from rich.console import Console

    console = Console(highlight=False)
    console.soft_wrap = not console.is_terminal  # piped into a log: one line per message, never cut
    return console


def cmd_validate(args) -> int:
    console = _console()
    failed = 0
    for path in args.recipes:
        try:
            recipe = load_and_validate(path, args.overrides)
            check_locked(args, recipe, path)  # --locked: a difference from its lock is a failure
        except RecipeError as exc:
            failed += 1
            console.print(f"[red]✗[/] {path}", highlight=False)
            for issue in exc.issues:
                print(f"  {issue.render()}")
        except FinetuneError as exc:
            failed += 1
            console.print(f"[red]✗[/] {path}")
            print(f"  {exc.render()}")
        else:
            names = f"{recipe.task.name}, {recipe.model.name} model, {recipe.strategy.name}"
            console.print(f"[green]✓[/] {path} [dim]({names})[/]")
    return 2 if failed else 0


def hub_ids(recipe: Recipe) -> list[str]:
    """The Hub ids a recipe reads: Hub datasets, and model or tokenizer options (typed HubOrPath)
    whose value is no local path. The inputs `finetune lock` pins as Hub ids, found the same way
    (runner.recipe.lockfile), without contacting the Hub or hashing anything."""
    from runner.recipe.lockfile import file_options

    ids = []
    for spec in recipe.components():
        if spec.kind == "data_source" and spec.name == "hub":
            ids.append(spec.options.path)
            continue
        for _key, value, marker in file_options(spec):
            if isinstance(value, str) and marker.hub and not os.path.exists(value):
                ids.append(value)
    return ids


def _offline(requested: bool = False, recipe: Recipe | None = None) -> None:
    """Offline when asked, or when the Hub is unreachable (decided before any Hub library loads:
    huggingface_hub and datasets read these variables once, at import).

    Given the `recipe`, the Hub is probed only if the recipe reads from it; a recipe that does not
    goes offline silently (nothing to download, so no probe to wait for and no note to read). A
    variable the user set is left as it is."""
    from runner.toolkit.hub import go_offline_if_unreachable

    if requested:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        return
    if recipe is not None and not hub_ids(recipe):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        return
    note = go_offline_if_unreachable()
    if note:
        print(note, file=sys.stderr)


def _worker_args(args, run_dir: RunDir, resume_from: Path | None = None, force: bool = False) -> list[str]:
    """The `finetune` command line each worker process runs."""
    flags = ["worker", str(run_dir.path)]
    flags += ["--resume-from", str(resume_from)] if resume_from else []
    flags += ["--force"] if force else []
    flags += ["--trust-remote-code"] if args.trust_remote_code else []
    return (["--debug"] if args.debug else []) + flags


def _execute(args, recipe: Recipe, run_dir: RunDir, resume_from: Path | None = None, force: bool = False):
    from runner.pipeline.run import execute

    return execute(
        recipe,
        run_dir,
        get_plugins(),
        trust_remote_code=args.trust_remote_code,
        resume_from=resume_from,
        force=force,
        debug=args.debug,
    )


def _train(args, recipe: Recipe, run_dir: RunDir, launch, resume_from: Path | None = None, force: bool = False) -> int:
    """Train in this process, or start the worker processes that do."""
    if launch.needed(recipe):
        return launch.start(_worker_args(args, run_dir, resume_from, force), run_dir)
    return _audits_exit(_execute(args, recipe, run_dir, resume_from, force).audits_failed)


def _audits_exit(failed: list[str]) -> int:
    """A completed run's exit code: 3 when an audit failed."""
    if failed:
        print(f"failed audits: {', '.join(failed)} (see audits.json)", file=sys.stderr)
        return 3
    return 0


def cmd_run(args) -> int:
    from runner.distributed.launch import Launch

    recipe = load_and_validate(args.recipe, args.overrides)
    if recipe.sweep is not None:
        print(f"note: {args.recipe} has a [sweep]; this runs the recipe once as written (finetune sweep runs it)")
    _offline(recipe=recipe)
    lock = check_locked(args, recipe, args.recipe)  # --locked: refuse before anything is built or written
    check_build(recipe)  # what only torch can tell (a model config that does not build), before any data
    launch = Launch.from_args(args)
    if launch.needed(recipe):
        launch.check(recipe, output_given=args.output is not None)
    if launch.joins:  # a node other than 0: node 0 creates the shared run directory and writes into it
        from runner.distributed.process_group import join_run_dir

        return _train(args, recipe, join_run_dir(args.output, recipe.resolved(), launch.node_rank), launch)
    if args.output is not None:
        if args.output.exists() and any(args.output.iterdir()):
            raise FinetuneError(f"--output {args.output} exists and is not empty", hint="name a new directory")
        args.output.mkdir(parents=True, exist_ok=True)
        run_dir = RunDir(args.output)
    else:
        run_dir = RunDir.create(Path(recipe.run.output_dir), recipe.name)
    keep_lock(lock, run_dir.path)  # recipe.resolved.toml + recipe.lock reproduce the run
    if launch.needed(recipe):
        run_dir.write_recipe(recipe.resolved())  # what every worker reads (in-process, execute writes it)
        return _train(args, recipe, run_dir, launch)
    try:
        return _train(args, recipe, run_dir, launch)
    except FinetuneError as exc:
        if exc.exit_code == 2 and _nothing_trained(run_dir):
            discard_run_dir(run_dir)
        raise


def _nothing_trained(run_dir: RunDir) -> bool:
    """No checkpoint and no training step: a run that failed while preparing (data, model)."""
    checkpoints = run_dir.checkpoints
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        return False
    return not any(r.get("split") == "train" for r in run_dir.read_metrics_log())


def discard_run_dir(run_dir: RunDir) -> None:
    """Remove the directory of a run that failed before training: it holds nothing to resume or
    read, and listed beside real runs it would look like one. The error says what went wrong."""
    import shutil

    shutil.rmtree(run_dir.path, ignore_errors=True)
    print(f"nothing was trained: removed {run_dir.path}", file=sys.stderr)


def cmd_worker(args) -> int:
    """One process of a launched run (started by torchrun or DeepSpeed's launcher)."""
    from runner.distributed import process_group
    from runner.distributed.launch import stop_with_parent

    stop_with_parent(signal.SIGKILL)  # die with the launcher, which a second Ctrl-C kills
    run_dir = RunDir.open(args.run_dir)
    recipe = load_and_validate(run_dir.recipe)
    if args.resume_from is not None:  # on another number of processes: the accumulation `resume` said
        from runner.distributed import resize

        world_size = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun and DeepSpeed's launcher set it
        resized = resize.plan(run_dir, recipe, world_size, args.resume_from, args.force)
        if resized is not None and resized.overrides:
            recipe = load_and_validate(run_dir.recipe, resized.overrides)
    try:
        _execute(args, recipe, run_dir, args.resume_from, args.force)
    except (process_group.PeerFailed, RunInterrupted, TrainingDiverged) as exc:
        if process_group.is_main() and not isinstance(exc, process_group.PeerFailed):
            raise
        return exc.exit_code  # every rank stopped together: rank 0 alone says why, once
    return 0  # a completed run: the launcher reads the exit code (3: an audit failed) from status.json


def _still_running(run_dir: RunDir) -> int | None:
    status = run_dir.status()
    pid = status.get("pid")
    if status.get("state") != "running" or not pid or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return None
    return pid


def cmd_resume(args) -> int:
    from runner.distributed import resize
    from runner.distributed.launch import Launch
    from runner.storage import checkpoints

    run_dir = RunDir.open(args.run_dir)
    status = run_dir.status()
    if status.get("state") == "completed":
        print(f"{run_dir.path} is complete (step {status.get('global_step')}); nothing to resume")
        return 0
    launch = Launch.from_args(args)
    pid = None if launch.joins else _still_running(run_dir)  # node 0's process ids mean nothing here
    if pid:
        raise FinetuneError(f"{run_dir.path} is still running (process {pid})")
    recipe = load_and_validate(run_dir.recipe)
    _offline(recipe=recipe)
    launch.check_resume(run_dir, recipe, args.force)  # a global batch another world size cannot keep
    if launch.needed(recipe):
        launch.check(recipe, output_given=True)  # the run directory exists already
    if launch.joins:  # node 0 verifies and tidies the checkpoints and metrics; this node names the same one
        named = run_dir.checkpoints / args.checkpoint if args.checkpoint else None
        checkpoint = named or checkpoints.latest_complete(run_dir.checkpoints)
    else:
        checkpoint, notes = checkpoints.resume_point(run_dir.checkpoints, args.checkpoint)
        for note in notes:
            print(note)
        run_dir.rewind_metrics(checkpoints.step_of(checkpoint) if checkpoint else -1)
    if checkpoint is None:
        print(f"{run_dir.path} has no complete checkpoint: starting again from step 0")
    else:
        print(f"resuming {run_dir.path} from {checkpoint.name}")
    # On another number of processes: the accumulation that keeps the global batch, a DeepSpeed
    # checkpoint made universal; the workers compute the same accumulation (cmd_worker).
    overrides = resize.prepare(
        run_dir, recipe, launch.world_size(), checkpoint, force=args.force, owner=not launch.joins
    )
    if overrides:
        recipe = load_and_validate(run_dir.recipe, overrides)
    return _train(args, recipe, run_dir, launch, checkpoint, args.force)


def cmd_plan(args) -> int:
    from runner.cli.plan import plan

    recipe = load_and_validate(args.recipe, args.overrides)
    _offline(args.offline, recipe)
    check_build(recipe)
    world_size = args.nproc * args.nnodes
    plan(recipe, _console(), offline=args.offline, samples=args.samples, world_size=world_size, nnodes=args.nnodes)
    return 0


def cmd_eval(args) -> int:
    from runner.cli.saved import evaluate_run

    _offline()
    evaluate_run(RunDir.open(args.run_dir), args.split, _console(), debug=args.debug)
    return 0


def cmd_report(args) -> int:
    from runner.report.model_card import write_model_card
    from runner.report.page import build_report

    run_dir = RunDir.open(args.run_dir)
    print(build_report(run_dir.path))
    if run_dir.model.is_dir():
        write_model_card(run_dir.path, run_dir.model)
        print(run_dir.model / "README.md")
    return 0


def cmd_compare(args) -> int:
    from runner.report.compare import compare_runs, render_comparison

    result = compare_runs(args.run_dirs)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        render_comparison(result, _console())
    return 0


def cmd_audit(args) -> int:
    from runner.cli.reaudit import audit_run

    _offline()
    return _audits_exit(audit_run(RunDir.open(args.run_dir), args.audits, debug=args.debug))


def cmd_generate(args) -> int:
    from runner.cli.saved import predict_run

    _offline()
    rows = predict_run(RunDir.open(args.run_dir), args.prompt, debug=args.debug, max_new_tokens=args.max_new_tokens)
    for row in rows:
        answer = row.get("response", row.get("completion", ""))
        print(f"prompt: {row['prompt']}\nresponse: {answer}")
    return 0


def cmd_export(args) -> int:
    from runner.cli.saved import export_run

    _offline()
    written = export_run(RunDir.open(args.run_dir), args.merge, args.output, debug=args.debug)
    print(f"{'merged model' if args.merge else 'model'} written to {written}")
    return 0


def _read_inputs(path: Path) -> list[str]:
    if not path.is_file():
        raise FinetuneError(f"--input {path}: no such file")
    texts = []
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".jsonl":
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FinetuneError(f"{path}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise FinetuneError(f"{path}:{n}: expected an object with a 'text' string")
            texts.append(row["text"])
    else:
        texts = [line for line in lines if line.strip()]
    return texts


def cmd_predict(args) -> int:
    from runner.cli.saved import predict_run

    texts = args.text if args.text else _read_inputs(args.input)
    _offline()
    rows = predict_run(RunDir.open(args.run_dir), texts, debug=args.debug)
    lines = [
        json.dumps({"text": text, **row}, ensure_ascii=False) + "\n" for text, row in zip(texts, rows, strict=True)
    ]
    if args.output:
        args.output.write_text("".join(lines), encoding="utf-8")
    else:
        sys.stdout.writelines(lines)
    return 0


def cmd_new(args) -> int:
    from runner.cli.scaffold import new_plugin

    root = new_plugin(args.name, args.dir)
    print(f"created {root}: pip install -e {root}, then pytest {root / 'tests'}")
    return 0
