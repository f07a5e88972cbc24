"""The `finetune` command line: every command, its arguments and its help.

Only argparse and the component kinds (loaded with `runner`) are imported here: `--help` answers
in a fraction of a second.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from runner import __version__
from runner.components import KINDS  # loaded with `runner` already

EPILOG = """\
exit codes: 0 done, 1 training diverged (NaN/inf loss), 2 error in a recipe, data or arguments,
3 an audit failed (the run is complete; see audits.json), 130 interrupted (a checkpoint was saved:
finetune resume RUN continues it)

examples:
  finetune run recipes/quickstart.toml
  finetune run my.toml --set training.learning_rate=3e-4 --set strategy.type=lora
  finetune validate recipes/*.toml
  finetune plan my.toml --offline
  finetune resume runs/quickstart/20261122-101500
  finetune sweep my.toml            (a study over the recipe's [sweep.space]; run it again to continue)
"""


LOCKED_HELP = "refuse to go on when anything differs from the recipe's lock (finetune lock), naming each difference"


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a recipe value, in TOML syntax (repeatable), e.g. training.epochs=1",
    )


def _add_launch_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("several processes (torchrun; DeepSpeed's launcher with --hostfile)")
    g.add_argument("--nproc", type=int, default=1, metavar="N", help="processes on this machine, one per device")
    g.add_argument("--nnodes", type=int, default=1, metavar="N", help="machines, each running this same command")
    g.add_argument("--node-rank", type=int, default=0, metavar="I", help="this machine's index (0: the master)")
    g.add_argument("--master-addr", metavar="HOST", help="address of the machine with --node-rank 0")
    g.add_argument("--master-port", type=int, default=29500, metavar="PORT", help="its port (default 29500)")
    g.add_argument("--hostfile", type=Path, help="DeepSpeed hostfile ('HOST slots=N' a line): start every machine")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune",
        description="Fine-tune language models from a declarative TOML recipe.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"finetune-runner {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="train, evaluate and save a recipe's model")
    p.add_argument("recipe", type=Path)
    _add_recipe_args(p)
    p.add_argument("--locked", action="store_true", help=LOCKED_HELP)
    p.add_argument("--output", type=Path, help="run directory to create (default: <output_dir>/<name>/<time>)")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow model/tokenizer/metric code from the Hub to run (a recipe alone can never allow it)",
    )
    _add_launch_args(p)

    p = sub.add_parser("validate", help="check recipes and report every error with file:line")
    p.add_argument("recipes", type=Path, nargs="+")
    _add_recipe_args(p)
    p.add_argument("--locked", action="store_true", help=LOCKED_HELP)

    p = sub.add_parser("lock", help="write RECIPE.lock: resolved recipe, Hub revisions, file hashes, versions")
    p.add_argument("recipe", type=Path)
    _add_recipe_args(p)

    p = sub.add_parser("plan", help="show what a run would do, without training")
    p.add_argument("recipe", type=Path)
    _add_recipe_args(p)
    p.add_argument("--offline", action="store_true", help="do not contact the Hub; show what is known locally")
    p.add_argument("--samples", type=int, default=3, help="formatted training samples to show (default 3)")
    p.add_argument("--nproc", type=int, default=1, metavar="N", help="processes per machine, for memory estimates")
    p.add_argument("--nnodes", type=int, default=1, metavar="N", help="machines, for memory estimates")

    p = sub.add_parser("eval", help="evaluate a finished run's model again")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--split", choices=["validation", "test"], default="test")

    p = sub.add_parser("report", help="rebuild a run's report.html and model card")
    p.add_argument("run_dir", type=Path)

    p = sub.add_parser("compare", help="runs side by side: differing recipe keys, final metrics")
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")

    p = sub.add_parser("audit", help="run a finished run's audits again, or other audits, on its model")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--audits", type=Path, metavar="FILE", help="a TOML file of [[audits]] tables to run instead")

    p = sub.add_parser("predict", help="predictions from a finished run's model")
    p.add_argument("run_dir", type=Path)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--text", action="append", help="a text to predict (repeatable)")
    group.add_argument("--input", type=Path, help="a .jsonl file with a 'text' field per line, or a .txt file")
    p.add_argument("--output", type=Path, help="write predictions as JSON lines here (default: stdout)")

    p = sub.add_parser("generate", help="text from a finished language-model or instruction run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="longest answer (default: the recipe's)")

    p = sub.add_parser("export", help="write a finished run's model as a standalone directory")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--merge", action="store_true", help="fold adapters (LoRA, IA3, ...) into the base weights")
    p.add_argument("--output", type=Path, help="where to write it (default: RUN_DIR/merged, or RUN_DIR/export)")

    p = sub.add_parser("resume", help="continue an interrupted run from its last complete checkpoint")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--checkpoint", help="resume from this checkpoint (e.g. checkpoint-40) instead of the newest")
    p.add_argument(
        "--force",
        action="store_true",
        help="resume even though the data or the recipe changed, or with a trainer that cannot keep the "
        "global batch on another number of processes",
    )
    p.add_argument("--trust-remote-code", action="store_true", help="as for `run`")
    _add_launch_args(p)

    # One process of a launched run; started by the launcher, not by hand (so not listed).
    p = sub.add_parser("worker")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--resume-from", type=Path)
    p.add_argument("--force", action="store_true")
    p.add_argument("--trust-remote-code", action="store_true")

    p = sub.add_parser("new", help="scaffold a plugin package")
    p.add_argument("what", choices=["plugin"])
    p.add_argument("name", help="package name, e.g. finetune-bitfit")
    p.add_argument("--dir", type=Path, default=Path("."), help="where to create it (default: here)")
    p.add_argument(
        "--kind",
        choices=["strategy", "reward"],
        default="strategy",
        help="what it registers: a strategy (BitFit, the default) or a reward (words an answer must contain)",
    )

    p = sub.add_parser("plugins", help="installed plugins, versions and the components they register")
    p = sub.add_parser(
        "reference",
        help="the options of installed components, as in the recipe reference (markdown)",
        description="Print the recipe reference for the installed plugins as markdown: every section and "
        "component, or only the components one plugin registers (--plugin) or of one kind (--kind).",
    )
    p.add_argument("--plugin", metavar="NAME", help="a plugin or its distribution, as `finetune plugins` lists them")
    p.add_argument("--kind", type=lambda s: s.replace("-", "_"), choices=list(KINDS), help="only this kind")
    p = sub.add_parser("recipes", help="recipes of the runner and of installed packs: list, show, copy")
    p.set_defaults(recipes_command=None)
    actions = p.add_subparsers(dest="recipes_command", metavar="ACTION")
    q = actions.add_parser("show", help="print a recipe: NAME, or PACK:NAME")
    q.add_argument("name", metavar="NAME")
    q = actions.add_parser("copy", help="write an editable copy of a recipe (its extends still names the pack)")
    q.add_argument("name", metavar="NAME")
    q.add_argument("dest", type=Path, nargs="?", metavar="DEST", help="a file or folder (default: ./NAME.toml)")
    q.add_argument("--flatten", action="store_true", help="write the fully resolved recipe instead, no extends")
    q.add_argument("--force", action="store_true", help="overwrite DEST when it exists")

    p = sub.add_parser(
        "sweep",
        help="search a recipe's [sweep.space]: a study of runs (Optuna); `sweep report DIR` rewrites its report",
        description="Run the study a recipe's [sweep] section describes, or continue it. Several processes or "
        "machines may work on one study (--storage, --join). `finetune sweep report DIR` rewrites sweep.html "
        "and best.toml from the study.",
    )
    p.add_argument("target", nargs="*", metavar="RECIPE | report DIR")
    _add_recipe_args(p)
    p.add_argument("--storage", metavar="URL", help="a database URL the workers share (default: a journal file)")
    p.add_argument("--join", metavar="NAME", help="work on an existing study; its recipe comes from the storage")
    p.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help="the sweep's directory (default <output_dir>/sweeps/NAME)",
    )
    p.add_argument("--trust-remote-code", action="store_true", help="as for `run`")

    p = sub.add_parser("schema", help="a JSON Schema of recipes for the installed plugins (editor completion)")
    p.add_argument("--output", type=Path, metavar="FILE", help="write it to FILE (default: stdout)")
    return parser
