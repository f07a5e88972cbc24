"""Running and resuming a recipe: the run directory, the checks before it, and how the run ended.

`run` and `resume` are what `finetune run` and `finetune resume` do, and what the Python API
exports: they raise for what stops a run from starting (a RecipeError naming every problem, a
FinetuneError such as a lock that differs), and return a `RunOutcome` for a run that started and
ended, however it ended: completed (exit code 0, or 3 when an audit failed), interrupted with
Ctrl-C or SIGTERM after saving a checkpoint (130), diverged (1), or stopped early by a sweep's
pruner. Launched on several processes (`Launch`), the run's outcome is what rank 0 recorded.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.distributed.launch import Launch
from runner.errors import FinetuneError, RunInterrupted, RunStopped, TrainingDiverged
from runner.plugins.manager import Plugins, get_plugins
from runner.recipe.build_check import check_build
from runner.recipe.resolved import Recipe
from runner.running.finished import FinishedRun
from runner.running.locking import check_locked, keep_lock
from runner.running.recipes import Say, go_offline, load_recipe, tell
from runner.storage import checkpoints
from runner.storage.rundir import RunDir

if TYPE_CHECKING:  # pragma: no cover - typing only
    from runner.components import Reporter


@dataclass
class RunOutcome:
    """How a run ended, and where to find what it left.

    `status` is the run directory's: "completed", "interrupted", "stopped" or "failed";
    `exit_code` is the one `finetune` exits with (0 done, 1 diverged or failed, 3 an audit failed,
    130 interrupted); `message` says why a run did not complete (what `finetune` prints as its
    error). A run trained in this process also hands over its model and tokenizer."""

    run_dir: RunDir
    status: str
    exit_code: int
    message: str | None = None
    audits_failed: list[str] = field(default_factory=list)
    global_step: int | None = None
    model: Any = None
    tokenizer: Any = None
    error: BaseException | None = None  # the exception behind `message`, for a traceback (--debug)
    final: dict[str, Any] | None = None  # the final metrics, as a run in this process returned them

    @property
    def path(self) -> Path:
        return self.run_dir.path

    @property
    def metrics(self) -> dict[str, Any]:
        """The final metrics by split (metrics.json); empty unless the run completed."""
        return self.final if self.final is not None else self.opened().metrics

    @property
    def evaluation(self) -> dict[str, Any]:
        """Baselines beside the fine-tuned model, intervals, diagnosis (evaluation.json); empty
        unless the run completed."""
        return self.opened().evaluation

    @property
    def baselines(self) -> list[dict[str, Any]]:
        """What the fine-tuned model is compared with (the base model, the majority class, ...),
        each with its metrics by split."""
        return self.evaluation.get("baselines", [])

    @property
    def model_dir(self) -> Path | None:
        """The final model (safetensors, loadable with transformers or peft); None unless complete."""
        return self.opened().model_dir

    @property
    def report(self) -> Path | None:
        return self.opened().report

    def opened(self) -> FinishedRun:
        """The run directory as `runner.open_run` reads it: to predict, evaluate, export."""
        return FinishedRun(self.run_dir)


@dataclass
class InProcess:
    """What a caller running a recipe in its own process may add (a sweep's trial): reporters of its
    own, a `stop_when` asked after each step for a reason to stop early, and `about`, added to what
    reporters are told at the start."""

    observers: list[Reporter] = field(default_factory=list)
    stop_when: Callable[[], str | None] | None = None
    about: dict[str, Any] | None = None


def _recipe(recipe: Recipe | str | os.PathLike, overrides: list[str] | None, plugins: Plugins) -> Recipe:
    if isinstance(recipe, Recipe):
        if overrides:
            return load_recipe(recipe.source.path, [*recipe.source.overrides, *overrides], plugins)
        return recipe
    return load_recipe(recipe, overrides, plugins)


def run(
    recipe: Recipe | str | os.PathLike,
    *,
    overrides: list[str] | None = None,
    output: str | os.PathLike | None = None,
    locked: bool = False,
    nproc: int = 1,
    launch: Launch | None = None,
    trust_remote_code: bool = False,
    debug: bool = False,
    plugins: Plugins | None = None,
    in_process: InProcess | None = None,
    say: Say = tell,
) -> RunOutcome:
    """Run a recipe (a Recipe, or the path of one with `overrides`) in a new run directory: `output`
    (which must not exist or be empty), else `<run.output_dir>/<name>/<time>`. `locked`: refuse
    when anything differs from the recipe's lock. `nproc`: processes on this machine (`finetune
    run --nproc`; one trains in this process); `launch`: several machines. `trust_remote_code`:
    allow code from the Hub (never a recipe's to allow)."""
    plugins = plugins or get_plugins()
    recipe = _recipe(recipe, overrides, plugins)
    launch = launch or Launch(nproc=nproc)
    if recipe.sweep is not None:
        say(f"note: {recipe.source.path} has a [sweep]; this runs the recipe once as written (finetune sweep runs it)")
    go_offline(recipe=recipe, say=say)
    lock = check_locked(recipe, recipe.source.path, say) if locked else None  # before anything is built or written
    check_build(recipe)  # what only torch can tell (a model config that does not build), before any data
    if launch.needed(recipe):
        launch.check(recipe, output_given=output is not None)
    if launch.joins:  # a node other than 0: node 0 creates the shared run directory and writes into it
        from runner.distributed.process_group import join_run_dir

        run_dir = join_run_dir(Path(output), recipe.resolved(), launch.node_rank)
        return _launched(launch, run_dir, None, False, trust_remote_code, debug)
    run_dir = _new_run_dir(recipe, output)
    keep_lock(lock, run_dir.path)  # recipe.resolved.toml + recipe.lock reproduce the run
    if launch.needed(recipe):
        run_dir.write_recipe(recipe.resolved())  # what every worker reads (in-process, execute writes it)
        return _launched(launch, run_dir, None, False, trust_remote_code, debug)
    try:
        return _in_process(recipe, run_dir, plugins, None, False, trust_remote_code, debug, in_process)
    except FinetuneError as exc:
        if exc.exit_code == 2 and _nothing_trained(run_dir):
            shutil.rmtree(run_dir.path, ignore_errors=True)
            say(f"nothing was trained: removed {run_dir.path}", "note")
        raise


def resume(
    run_dir: str | os.PathLike | RunDir,
    *,
    checkpoint: str | None = None,
    force: bool = False,
    nproc: int = 1,
    launch: Launch | None = None,
    trust_remote_code: bool = False,
    debug: bool = False,
    plugins: Plugins | None = None,
    in_process: InProcess | None = None,
    say: Say = tell,
) -> RunOutcome:
    """Continue a run from its newest complete checkpoint (or `checkpoint`, e.g. "checkpoint-40"),
    on `nproc` processes or the machines `launch` says (another number than the run's keeps its
    global batch). A run without a checkpoint starts again from step 0; a completed one is left as it is. `force`:
    resume although the data or the recipe changed."""
    from runner.distributed import resize

    plugins = plugins or get_plugins()
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    launch = launch or Launch(nproc=nproc)
    status = run_dir.status()
    if status.get("state") == "completed":
        say(f"{run_dir.path} is complete (step {status.get('global_step')}); nothing to resume")
        return RunOutcome(run_dir, "completed", 0, global_step=status.get("global_step"))
    pid = None if launch.joins else _still_running(run_dir)  # node 0's process ids mean nothing here
    if pid:
        raise FinetuneError(f"{run_dir.path} is still running (process {pid})")
    recipe = load_recipe(run_dir.recipe, plugins=plugins)
    go_offline(recipe=recipe, say=say)
    launch.check_resume(run_dir, recipe, force)  # a global batch another world size cannot keep
    if launch.needed(recipe):
        launch.check(recipe, output_given=True)  # the run directory exists already
    if launch.joins:  # node 0 verifies and tidies the checkpoints and metrics; this node names the same one
        named = run_dir.checkpoints / checkpoint if checkpoint else None
        resume_from = named or checkpoints.latest_complete(run_dir.checkpoints)
    else:
        resume_from, notes = checkpoints.resume_point(run_dir.checkpoints, checkpoint)
        for note in notes:
            say(note)
        run_dir.rewind_metrics(checkpoints.step_of(resume_from) if resume_from else -1)
    if resume_from is None:
        say(f"{run_dir.path} has no complete checkpoint: starting again from step 0")
    else:
        say(f"resuming {run_dir.path} from {resume_from.name}")
    # On another number of processes: the accumulation that keeps the global batch, a checkpoint
    # made loadable there by the engine; the workers compute the same accumulation (`work`).
    world = launch.world_size()
    changes = resize.prepare(run_dir, recipe, world, resume_from, force=force, owner=not launch.joins, say=say)
    if changes:
        recipe = load_recipe(run_dir.recipe, changes, plugins)
    if launch.needed(recipe):
        return _launched(launch, run_dir, resume_from, force, trust_remote_code, debug)
    return _in_process(recipe, run_dir, plugins, resume_from, force, trust_remote_code, debug, in_process)


def work(
    run_dir: str | os.PathLike, resume_from: Path | None, force: bool, trust_remote_code: bool, debug: bool
) -> int:
    """One process of a launched run (`finetune worker`, started by torchrun or DeepSpeed's
    launcher): the recipe its launching process wrote into the run directory, on WORLD_SIZE
    processes. Rank 0 alone says why a run stopped, once; the others exit with its code."""
    from runner.distributed import process_group, resize
    from runner.distributed.launch import stop_with_parent

    stop_with_parent(signal.SIGKILL)  # die with the launcher, which a second Ctrl-C kills
    run_dir = RunDir.open(run_dir)
    recipe = load_recipe(run_dir.recipe)
    if resume_from is not None:  # on another number of processes: the accumulation `resume` said
        world_size = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun and DeepSpeed's launcher set it
        resized = resize.plan(run_dir, recipe, world_size, resume_from, force)
        if resized is not None and resized.overrides:
            recipe = load_recipe(run_dir.recipe, resized.overrides)
    from runner.pipeline.run import execute

    try:
        execute(recipe, run_dir, get_plugins(), trust_remote_code=trust_remote_code, resume_from=resume_from,
                force=force, debug=debug)  # fmt: skip
    except (process_group.PeerFailed, RunInterrupted, TrainingDiverged) as exc:
        if process_group.is_main() and not isinstance(exc, process_group.PeerFailed):
            raise
        return exc.exit_code  # every rank stopped together: rank 0 alone says why, once
    return 0  # a completed run: the launcher reads the exit code (3: an audit failed) from status.json


# -- the run directory ---------------------------------------------------------------------------
def _new_run_dir(recipe: Recipe, output: str | os.PathLike | None) -> RunDir:
    if output is None:
        return RunDir.create(Path(recipe.run.output_dir), recipe.name)
    path = Path(output)
    if path.exists() and any(path.iterdir()):
        raise FinetuneError(f"--output {path} exists and is not empty", hint="name a new directory")
    path.mkdir(parents=True, exist_ok=True)
    return RunDir(path)


def _nothing_trained(run_dir: RunDir) -> bool:
    """No checkpoint and no training step: a run that failed while preparing (data, model). Its
    directory holds nothing to resume or read; listed beside real runs it would look like one."""
    if run_dir.checkpoints.is_dir() and any(run_dir.checkpoints.iterdir()):
        return False
    return not any(r.get("split") == "train" for r in run_dir.read_metrics_log())


def _still_running(run_dir: RunDir) -> int | None:
    status = run_dir.status()
    pid = status.get("pid")
    if status.get("state") != "running" or not pid or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return None
    return None if _zombie(pid) else pid


def _zombie(pid: int) -> bool:
    """A process that died (killed with SIGKILL, say) but whose parent has not collected it yet:
    it still answers signal 0, yet runs nothing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS): as if it were alive
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"  # the state follows the command name in parentheses


# -- training ------------------------------------------------------------------------------------
def _in_process(recipe, run_dir, plugins, resume_from, force, trust_remote_code, debug, extra) -> RunOutcome:
    """Train in this process; the run's ending as data, its user errors raised."""
    from runner.pipeline.run import execute

    extra = extra or InProcess()
    try:
        result = execute(
            recipe, run_dir, plugins, trust_remote_code=trust_remote_code, resume_from=resume_from, force=force,
            debug=debug, observers=extra.observers, stop_when=extra.stop_when, about=extra.about,
        )  # fmt: skip
    except (RunInterrupted, RunStopped, TrainingDiverged) as exc:
        state = run_dir.status()
        return RunOutcome(run_dir, state.get("state", "failed"), exc.exit_code, exc.render(),
                          global_step=state.get("global_step"), error=exc)  # fmt: skip
    failed = list(result.audits_failed)
    message = f"failed audits: {', '.join(failed)} (see audits.json)" if failed else None
    return RunOutcome(
        run_dir, "completed", 3 if failed else 0, message, failed, result.global_step, result.model,
        result.tokenizer, final=result.metrics,
    )  # fmt: skip


def _launched(launch: Launch, run_dir: RunDir, resume_from, force: bool, trust_remote_code: bool, debug: bool):
    """Start the worker processes and wait; the outcome rank 0 recorded in the run directory."""
    argv = ["worker", str(run_dir.path)]
    argv += ["--resume-from", str(resume_from)] if resume_from else []
    argv += ["--force"] if force else []
    argv += ["--trust-remote-code"] if trust_remote_code else []
    code = launch.start((["--debug"] if debug else []) + argv, run_dir)
    state = run_dir.status()
    failed = list(state.get("audits_failed") or [])
    return RunOutcome(run_dir, state.get("state", "failed"), code, audits_failed=failed,
                      global_step=state.get("global_step"))  # fmt: skip
