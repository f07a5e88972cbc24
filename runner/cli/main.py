"""The `finetune` command: parse the arguments, call the command, turn errors into exit codes.

`--help`, `validate`, `plugins` and `recipes` import neither torch nor transformers: they answer
in a fraction of a second. User errors print one message and exit with code 2 (`--debug` adds the
traceback); a diverged run exits 1, an interrupted one 130.
"""

from __future__ import annotations

import errno
import sys
import traceback

from runner.cli.parser import build_parser
from runner.errors import FinetuneError, clip


def dispatch(args) -> int:
    """Call the command's handler; each module is imported only when its command runs."""
    command = args.command
    if command in ("validate", "run", "resume", "worker"):
        from runner.cli import run_cmd

        return {"validate": run_cmd.cmd_validate, "run": run_cmd.cmd_run, "resume": run_cmd.cmd_resume,
                "worker": run_cmd.cmd_worker}[command](args)  # fmt: skip
    if command in ("eval", "predict", "generate", "export", "audit", "report", "compare"):
        from runner.cli import finished

        return {"eval": finished.cmd_eval, "predict": finished.cmd_predict, "generate": finished.cmd_generate,
                "export": finished.cmd_export, "audit": finished.cmd_audit, "report": finished.cmd_report,
                "compare": finished.cmd_compare}[command](args)  # fmt: skip
    if command == "plan":
        from runner.cli.plan import cmd_plan

        return cmd_plan(args)
    if command == "lock":
        from runner.cli.lock import cmd_lock

        return cmd_lock(args)
    if command == "sweep":
        from runner.cli.sweep import cmd_sweep

        return cmd_sweep(args)
    if command == "recipes":
        from runner.cli.packs import cmd_recipes

        return cmd_recipes(args)
    if command == "plugins":
        from runner.cli.plugins_cmd import cmd_plugins

        return cmd_plugins(args)
    if command == "reference":
        from runner.cli.reference import cmd_reference

        return cmd_reference(args)
    if command == "schema":
        from runner.cli.schema import cmd_schema

        return cmd_schema(args)
    if command == "new":
        from runner.cli.scaffold import cmd_new

        return cmd_new(args)
    raise AssertionError(f"no handler for the command {command!r}")  # the parser knows no other


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return dispatch(args)
    except FinetuneError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        # A path the user typed (--output, a run directory) that no file system accepts: their error.
        if args.debug:
            traceback.print_exc()
        name = clip(str(exc.filename or ""))
        print(f"error: {name}: the name is too long for the file system (at most 255 bytes a name)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
