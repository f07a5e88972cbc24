"""`finetune validate`, `run`, `resume` and `worker`: arguments in, the front door's outcome printed.

Loading, the lock, the run directory and the resume point are the front door's (runner/running);
these commands turn the arguments into its calls and its outcome into lines and an exit code.
"""

from __future__ import annotations

import sys
import traceback

from runner.cli.console import console
from runner.errors import FinetuneError, RecipeError
from runner.running.recipes import load_recipe


def cmd_validate(args) -> int:
    from runner.running.locking import check_locked

    out = console()
    failed = 0
    for path in args.recipes:
        try:
            recipe = load_recipe(path, args.overrides)
            if args.locked:  # a difference from its lock is a failure
                check_locked(recipe, path)
        except RecipeError as exc:
            failed += 1
            out.print(f"[red]✗[/] {path}", highlight=False)
            for issue in exc.issues:
                print(f"  {issue.render()}")
        except FinetuneError as exc:
            failed += 1
            out.print(f"[red]✗[/] {path}")
            print(f"  {exc.render()}")
        else:
            names = f"{recipe.task.name}, {recipe.model.name} model, {recipe.strategy.name}"
            out.print(f"[green]✓[/] {path} [dim]({names})[/]")
    return 2 if failed else 0


def _launch(args):
    from runner.distributed.launch import Launch

    return Launch(args.nproc, args.nnodes, args.node_rank, args.master_addr, args.master_port, args.hostfile)


def _ended(outcome, debug: bool) -> int:
    """The exit code of a run that started; why it did not complete, said once."""
    if outcome.message:
        if debug and outcome.error is not None:
            traceback.print_exception(outcome.error)
        prefix = "" if outcome.audits_failed else "error: "
        print(f"{prefix}{outcome.message}", file=sys.stderr)
    return outcome.exit_code


def cmd_run(args) -> int:
    from runner.running.starting import run

    outcome = run(
        args.recipe, overrides=args.overrides, output=args.output, locked=args.locked, launch=_launch(args),
        trust_remote_code=args.trust_remote_code, debug=args.debug,
    )  # fmt: skip
    return _ended(outcome, args.debug)


def cmd_resume(args) -> int:
    from runner.running.starting import resume

    outcome = resume(
        args.run_dir, checkpoint=args.checkpoint, force=args.force, launch=_launch(args),
        trust_remote_code=args.trust_remote_code, debug=args.debug,
    )  # fmt: skip
    return _ended(outcome, args.debug)


def cmd_worker(args) -> int:
    """One process of a launched run (started by torchrun or DeepSpeed's launcher)."""
    from runner.running.starting import work

    return work(args.run_dir, args.resume_from, args.force, args.trust_remote_code, args.debug)
