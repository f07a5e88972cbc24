"""One worker of a study: take the next trial, run it, tell the study; then the seed repeats.

Any number of workers (processes on one machine, machines on one database) run this same loop on a
study. Optuna hands each its own trial; a worker counts the trials numbered before its own, so the
study stops at exactly `trials` even when workers ask at the same moment. A trial interrupted with
Ctrl-C (or whose worker on this machine died) is queued again with the same settings, and the next
worker continues its run directory from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import tomli_w

from runner.errors import RunInterrupted
from runner.plugins.manager import Plugins
from runner.storage import checkpoints
from runner.storage.rundir import atomic_write
from runner.sweep import space
from runner.sweep.study import HEARTBEAT_S, Setup, open_storage, open_study, quiet_optuna, requeue, worker_seed
from runner.sweep.trial import Pruning, TrialResult, run_trial

SEEDS = ".seeds"  # the study of the seed repeats is named <study>.seeds


def sampler_for(setup: Setup, seed: int):
    optuna = quiet_optuna()
    options = setup.options
    if options.sampler in ("random", "grid"):  # a grid is queued up front (queue_grid); nothing left to draw
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(n_startup_trials=max(options.startup_trials, 1), seed=seed)


def queue_grid(study, setup: Setup) -> None:
    """Every combination of a grid, queued in the order the recipe lists the values (put the likeliest
    first: the pruner compares later trials with the finished ones). Optuna's GridSampler would stop
    the study from inside, which only its own optimize loop allows, and shuffles the order."""
    keys = list(setup.options.space)
    values = [space.grid_values(setup.options.space[key]) for key in keys]
    queued = {json.dumps(t.params, sort_keys=True) for t in study.get_trials(deepcopy=False)}
    for combination in itertools.product(*values):
        params = dict(zip(keys, combination, strict=True))
        if json.dumps(params, sort_keys=True) not in queued:
            study.enqueue_trial(params, user_attrs={"grid": True})


def pruner_for(setup: Setup):
    optuna = quiet_optuna()
    if setup.options.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=setup.options.startup_trials, n_warmup_steps=0)
    if setup.options.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


@contextlib.contextmanager
def heartbeat(trial):
    """On a database storage, tell the study every HEARTBEAT_S seconds that this trial's worker
    lives: Optuna's own optimize loop does this, ask-and-tell leaves it to the caller."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = trial.study._storage
    if not is_heartbeat_enabled(storage):  # a journal file: a dead worker is found by its process id
        yield
        return
    stop = threading.Event()

    def beat():
        while True:
            storage.record_heartbeat(trial._trial_id)
            if stop.wait(HEARTBEAT_S):
                return

    thread = threading.Thread(target=beat, name="sweep-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Worker:
    def __init__(self, setup: Setup, plugins: Plugins, say, *, trust_remote_code=False, debug=False):
        self.setup, self.plugins, self.say = setup, plugins, say
        self.trust_remote_code, self.debug = trust_remote_code, debug
        optuna = quiet_optuna()
        self.states = optuna.trial.TrialState
        created = setup.name not in optuna.study.get_all_study_names(open_storage(setup.storage))
        self.study = open_study(setup, sampler_for(setup, worker_seed(setup, created)), pruner_for(setup))
        if setup.options.sampler == "grid":
            queue_grid(self.study, setup)
        self.host = socket.gethostname()

    # -- counting ---------------------------------------------------------------------------------
    def counts(self, trial) -> bool:
        """Trials that use up the study's length: finished ones, running ones, failed settings; not
        an interrupted trial (its settings were queued again) nor a surplus ask."""
        s, attrs = trial.state, trial.user_attrs
        if s == self.states.FAIL:
            return not attrs.get("interrupted") and not attrs.get("surplus")
        return s in (self.states.COMPLETE, self.states.PRUNED, self.states.RUNNING)

    def _trials(self, study=None):
        return (study or self.study).get_trials(deepcopy=False)

    def search_left(self) -> bool:
        trials = self._trials()
        waiting = any(t.state == self.states.WAITING for t in trials)
        return waiting or sum(self.counts(t) for t in trials) < self.setup.target

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        self.recover_stale(self.study)
        done = sum(self.counts(t) and t.state != self.states.RUNNING for t in self._trials())
        if done:
            self.say(f"continuing study '{self.setup.name}': {done} of {self.setup.target} trials done")
        while self.search_left():
            trial = self.study.ask()
            if self.surplus(trial):
                break
            self.search_trial(trial)
        if self.setup.options.seeds:
            self.seed_repeats()

    def surplus(self, trial) -> bool:
        """Another worker asked at the same moment and the study is full: give this ask back."""
        if "continues" in trial.user_attrs:  # a queued trial (an interrupted one, again) always runs
            return False
        before = [t for t in self._trials() if t.number < trial.number and self.counts(t)]
        if len(before) < self.setup.target:
            return False
        trial.set_user_attr("surplus", True)
        self.study.tell(trial, state=self.states.FAIL)
        return True

    def _write_recipe(self, path: Path, data: dict, header: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, header + tomli_w.dumps(data))

    def _mark(self, trial, chosen: space.TrialRecipe, run_path: Path) -> None:
        for key, value in {
            "settings": chosen.values, "host": self.host, "pid": os.getpid(), "run_dir": str(run_path),
            "not_applicable": chosen.not_applicable, "dropped": chosen.dropped,
        }.items():  # fmt: skip
            trial.set_user_attr(key, value)

    def search_trial(self, trial) -> None:
        chosen = space.choose(trial, self.setup.options, self.setup.base, self.plugins.registry)
        name = f"trial-{trial.number:04d}"
        recipe_path = self.setup.directory / "trials" / f"{name}.toml"
        resume = trial.user_attrs.get("resume")
        run_path = Path(resume) if resume else self.setup.directory / "trials" / name
        self._write_recipe(recipe_path, chosen.data, f"# Trial {trial.number} of study '{self.setup.name}'.\n")
        self._mark(trial, chosen, run_path)
        settings = "  ".join(f"{k}={shown_value(v)}" for k, v in chosen.values.items())
        more = f" (continuing {run_path.name})" if resume else ""
        self.say(f"[bold]trial {trial.number}[/]{more}: {settings}")
        for key in chosen.not_applicable:
            self.say(f"  {key}: not an option of this trial's component; not searched here")
        if chosen.dropped:
            self.say(f"  left out (the trial's component does not take them): {', '.join(chosen.dropped)}")
        pruning = Pruning(trial, self.setup.metric)
        about = {"sweep": {"study": self.setup.name, "trial": trial.number, "params": chosen.values}}
        result = self._run(trial, recipe_path, run_path, pruning, about, resume=bool(resume))
        self._tell(self.study, trial, result)

    def _run(self, trial, recipe_path, run_path, pruning, about, resume=False) -> TrialResult:
        try:
            with heartbeat(trial):
                return run_trial(
                    recipe_path, run_path, self.plugins, pruning, metric=self.setup.metric, about=about,
                    resume=resume, trust_remote_code=self.trust_remote_code, debug=self.debug,
                )  # fmt: skip
        except (RunInterrupted, KeyboardInterrupt):
            self.requeue(self.study if pruning is not None else self._seeds_study(), trial.number, run_path)
            raise RunInterrupted(
                f"sweep '{self.setup.name}' interrupted during trial {trial.number}",
                hint=f"run the same `finetune sweep` again: it continues the study (and {run_path.name} "
                "from its last checkpoint)",
            ) from None

    def _tell(self, study, trial, result: TrialResult, label: str | None = None) -> None:
        s = self.states
        if result.error:
            trial.set_user_attr("error", result.error)
        if result.state == "complete":
            study.tell(trial, result.value)
        else:
            study.tell(trial, state=s.PRUNED if result.state == "pruned" else s.FAIL)
        what = f"{self.setup.metric} {result.value:.4g}" if result.value is not None else result.error or ""
        first = what.splitlines()[0] if what else ""
        self.say(f"{label or f'trial {trial.number}'} {result.state} in {result.seconds:.0f}s: {first}")
        if result.state == "failed" and result.error and "\n" in result.error:
            self.say("  " + result.error.replace("\n", "\n  "))

    def requeue(self, study, number: int, run_path: Path) -> None:
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
        has_checkpoint = run_path.is_dir() and checkpoints.latest_complete(run_path / "checkpoints") is not None
        requeue(study, trial, run_path if has_checkpoint else None)

    def recover_stale(self, study) -> None:
        """Trials left running by a process of this machine that is gone (killed, crashed), and, on a
        database, trials whose worker stopped sending heartbeats (a machine lost)."""
        quiet_optuna().storages.fail_stale_trials(study)
        for trial in study.get_trials(deepcopy=False, states=(self.states.RUNNING,)):
            attrs = trial.user_attrs
            if attrs.get("host") == self.host and attrs.get("pid") and not _alive(int(attrs["pid"])):
                self.say(f"trial {trial.number}: its worker (process {attrs['pid']}) is gone; queued again")
                self.requeue(study, trial.number, Path(attrs.get("run_dir", "")))

    # -- seed repeats -----------------------------------------------------------------------------
    def _seeds_study(self):
        optuna = quiet_optuna()
        return optuna.create_study(
            study_name=self.setup.name + SEEDS, storage=open_storage(self.setup.storage),
            direction=self.setup.direction, load_if_exists=True, sampler=optuna.samplers.RandomSampler(),
        )  # fmt: skip

    def seed_values(self) -> list[int]:
        return [(self.setup.seed + i) % 2**32 for i in range(1, self.setup.options.seeds + 1)]

    def seed_repeats(self) -> None:
        """The best settings again with other seeds: how much of the best score was the seed's luck."""
        running = [t.number for t in self._trials() if t.state == self.states.RUNNING]
        if running:
            numbers = ", ".join(map(str, running))
            self.say(f"trials {numbers} still run elsewhere: the worker that ends last runs the seed repeats")
            return
        complete = [t for t in self._trials() if t.state == self.states.COMPLETE]
        if not complete:
            self.say("no trial completed: no seed repeats")
            return
        best = self.study.best_trial
        study = self._seeds_study()
        self.recover_stale(study)
        seeds = self.seed_values()
        for seed in seeds:
            study.enqueue_trial({"run.seed": seed}, user_attrs={"best_trial": best.number}, skip_if_exists=True)
        while any(t.state == self.states.WAITING for t in study.get_trials(deepcopy=False)):
            trial = study.ask()
            if "best_trial" not in trial.user_attrs:  # not a queued seed: the queue emptied under another worker
                trial.set_user_attr("surplus", True)
                study.tell(trial, state=self.states.FAIL)
                break
            seed = trial.suggest_categorical("run.seed", seeds)
            settings = {**best.user_attrs["settings"], "run.seed": seed}
            chosen = space.build(self.setup.base, settings, self.plugins.registry)
            recipe_path = self.setup.directory / "seeds" / f"seed-{seed}.toml"
            run_path = self.setup.directory / "seeds" / f"seed-{seed}"
            resume = trial.user_attrs.get("resume")
            self._write_recipe(recipe_path, chosen.data, f"# Trial {best.number}'s settings with seed {seed}.\n")
            self._mark(trial, chosen, run_path)
            self.say(f"[bold]seed {seed}[/]: trial {best.number}'s settings")
            about = {"sweep": {"study": self.setup.name, "seed_of": best.number, "params": chosen.values}}
            result = self._run(trial, recipe_path, run_path, None, about, resume=bool(resume))
            self._tell(study, trial, result, label=f"seed {seed}")


def shown_value(value: Any) -> str:
    """A searched value as the sweep prints it: 3 significant digits, small or large ones in e-notation."""
    if isinstance(value, float):
        return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.2e}"
    return str(value)
