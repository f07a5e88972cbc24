"""Running a recipe: data, tokenizer, model, strategy, training, evaluation, saving.

`execute` runs (or resumes) one run in its run directory: it starts the reporters and lifecycle
hooks, has `steps.Pipeline` do the steps, and keeps the run's status truthful whatever happens
(completed, interrupted with the checkpoint to resume from, or failed with the error). A resume
continues from the last complete checkpoint and refuses data that changed (`preparing`).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from runner.components import Reporter
from runner.distributed import process_group
from runner.errors import RunInterrupted, RunStopped
from runner.pipeline.events import Events
from runner.pipeline.steps import Pipeline, RunResult
from runner.plugins.manager import Plugins
from runner.recipe.resolved import Recipe
from runner.storage import checkpoints
from runner.storage.rundir import ReadOnlyRunDir, RunDir
from runner.toolkit.quantized import quiet_notices


def quiet_libraries(debug: bool, recipe: Recipe | None = None) -> None:
    """Library chatter (progress bars, info logs) would drown the reporter; --debug brings it back.
    With the `recipe`, the warnings its components declare harmless (`quiet_warnings`) go too."""
    if not debug:  # first: the imports below may bring bitsandbytes (see runner/toolkit/quantized.py)
        quiet_notices()
    import datasets
    import torch
    import transformers

    if not torch.cuda.is_available():  # DeepSpeed warns on every import when it has to guess this
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if debug:
        transformers.logging.set_verbosity_info()
        return
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for spec in recipe.components() if recipe is not None else ():
        for message in spec.cls.quiet_warnings:  # e.g. peft fixing a setting itself (plugins/strategies)
            warnings.filterwarnings("ignore", message=message)
    # The trained tokenizer's progress bars (the `tokenizers` library draws its own, on stdout) are
    # switched off where it is trained: plugins/tokenizers/trained.py passes show_progress=False.


def execute(
    recipe: Recipe,
    run_dir: RunDir,
    plugins: Plugins,
    *,
    trust_remote_code: bool = False,
    resume_from: Path | None = None,
    force: bool = False,
    debug: bool = False,
    observers: list[Reporter] | None = None,
    stop_when: Callable[[], str | None] | None = None,
    about: dict | None = None,
) -> RunResult:
    """Run `recipe` in `run_dir`, from scratch or from the checkpoint `resume_from`.

    In a launched run every process calls this; only rank 0 reports and writes the run directory.
    A caller running it in-process (a sweep) may add `observers` (reporters of its own), a
    `stop_when` asked after each step for a reason to stop early (then RunStopped is raised and
    the run's state is "stopped"), and `about`, added to what reporters are told at start."""
    main = process_group.is_main()
    if not main:
        run_dir = ReadOnlyRunDir(run_dir.path)
    resolved = recipe.resolved()
    run_info = {
        "name": recipe.name,
        "run_dir": str(run_dir.path),
        "seed": recipe.run.seed,
        "recipe": resolved,
        **(about or {}),
    }
    reporters = [*(spec.create() for spec in recipe.reporters), *(observers or [])] if main else []
    events = Events(reporters, run_dir, plugins.hook if main else None, run_info, stop_when)
    if resume_from is None:
        run_dir.write_recipe(resolved)
    run_dir.set_status("running", pid=os.getpid(), started=time.strftime("%Y-%m-%dT%H:%M:%S"))
    status, final, baselines = "failed", {}, []
    try:  # from here on, whatever raises (a plugin's on_run_start included) leaves a truthful status
        if main:
            plugins.hook.on_run_start(run=run_info)
        events.start(run_info)
        quiet_libraries(debug, recipe)
        if recipe.run.threads:
            import torch

            torch.set_num_threads(recipe.run.threads)
        process_group.init(recipe.distributed.create().collective_timeout())
        result = Pipeline(recipe, run_dir, plugins, events, trust_remote_code, resume_from, force).run()
        status, final, baselines = "completed", result.metrics, result.baselines
        return result
    except RunInterrupted:
        status = "interrupted"
        raise
    except RunStopped:
        status = "stopped"
        raise
    except KeyboardInterrupt:
        status = "interrupted"
        last = checkpoints.latest_complete(run_dir.checkpoints)
        run_dir.set_status("interrupted", checkpoint=str(last) if last else None)
        where = f"the last complete checkpoint is {last}" if last else "no checkpoint was saved"
        raise RunInterrupted(f"interrupted; {where}", hint=f"finetune resume {run_dir.path}") from None
    except BaseException as exc:
        run_dir.set_status("failed", error=f"{type(exc).__name__}: {exc}", exit_code=getattr(exc, "exit_code", 1))
        raise
    finally:
        events.finish(status, {"name": recipe.name, "metrics": final, "baselines": baselines,
                               "run_dir": str(run_dir.path),
                               "model_dir": str(run_dir.model) if status == "completed" else None})  # fmt: skip
        if main:
            plugins.hook.on_run_end(run=run_info, status=status, metrics=final)
        process_group.finish()
