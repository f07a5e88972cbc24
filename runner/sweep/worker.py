"""One worker of a study: take the next trial, run it, tell the study; then the seed repeats.

Any number of workers (processes on one machine, machines on one database) run this same loop on a
study. Optuna hands each its own trial; a worker counts the trials numbered before its own, so the
study stops at exactly `trials` even when workers ask at the same moment. A trial interrupted with
Ctrl-C, or whose worker died (runner.sweep.recovery), is queued again with the same settings and
continued by whichever worker takes it, under that worker's --output (runner.sweep.continuation).
A worker with nothing left to take waits while trials of other workers run, so that it takes over
any whose worker dies; the study ends when its last trial does.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import tomli_w

from runner.errors import FinetuneError, RunInterrupted
from runner.plugins.manager import Plugins
from runner.storage.rundir import atomic_write
from runner.sweep import continuation, recovery, space
from runner.sweep.study import Setup, continue_later, open_study, quiet_optuna, worker_seed
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
    queued = {json.dumps(fixed_params(t), sort_keys=True) for t in study.get_trials(deepcopy=False)}
    for combination in itertools.product(*values):
        params = dict(zip(keys, combination, strict=True))
        if json.dumps(params, sort_keys=True) not in queued:
            study.enqueue_trial(params, user_attrs={"grid": True})


def fixed_params(trial) -> dict[str, Any]:
    """The settings a queued trial was given (its params are only filled in as it draws them)."""
    # a live trial (from ask) keeps its record in the storage; a FrozenTrial carries it
    frozen = trial if hasattr(trial, "system_attrs") else trial.study._storage.get_trial(trial._trial_id)
    return frozen.system_attrs.get("fixed_params") or dict(frozen.params)


def pruner_for(setup: Setup):
    optuna = quiet_optuna()
    if setup.options.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=setup.options.startup_trials, n_warmup_steps=0)
    if setup.options.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def continued_numbers(trials) -> set[int]:
    """Trials whose settings were queued again (interrupted, or their worker died)."""
    return {int(t.user_attrs["continues"]) for t in trials if "continues" in t.user_attrs}


class Worker:
    def __init__(self, setup: Setup, plugins: Plugins, say, *, trust_remote_code=False, debug=False):
        self.setup, self.plugins, self.say = setup, plugins, say
        self.trust_remote_code, self.debug = trust_remote_code, debug
        self.states = quiet_optuna().trial.TrialState
        prepare = (lambda study: queue_grid(study, setup)) if setup.options.sampler == "grid" else None
        self.study, created = open_study(setup, prepare)
        # Of workers started together only the study's creator samples with the recipe's seed.
        self.study.sampler = sampler_for(setup, worker_seed(setup, created))
        self.study.pruner = pruner_for(setup)
        self.host = socket.gethostname()

    # -- counting ---------------------------------------------------------------------------------
    def counts(self, trial, continued: set[int]) -> bool:
        """Trials that use up the study's length: finished ones, running ones, failed settings; not
        one whose settings were queued again (interrupted, or its worker died) nor a surplus ask."""
        s, attrs = trial.state, trial.user_attrs
        if s == self.states.FAIL:
            return not attrs.get("interrupted") and not attrs.get("surplus") and trial.number not in continued
        return s in (self.states.COMPLETE, self.states.PRUNED, self.states.RUNNING)

    def _trials(self, study=None):
        return (study or self.study).get_trials(deepcopy=False)

    def search_left(self) -> bool:
        """A trial queued again waits, or the study is short of `trials` (grid points queued beyond
        them wait for a longer study)."""
        trials = self._trials()
        again = any(t.state == self.states.WAITING and "continues" in t.user_attrs for t in trials)
        continued = continued_numbers(trials)
        return again or sum(self.counts(t, continued) for t in trials) < self.setup.target

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        """The search: trials until the study has its length (then, with `seeds`, the caller runs
        runner.sweep.seeds.run_seed_repeats with this worker)."""
        recovery.recover(self.study, self.host, self.say)
        trials = self._trials()
        continued = continued_numbers(trials)
        done = sum(self.counts(t, continued) and t.state != self.states.RUNNING for t in trials)
        if done:
            self.say(f"continuing study '{self.setup.name}': {done} of {self.setup.target} trials done")
        self.work(self.study, self.search_left, self.surplus, self.search_trial)

    def work(self, study, left, surplus, take) -> None:
        """Take trials while `left()`; then wait while trials of others run, to take over any whose
        worker dies."""
        waiting: set[int] = set()
        while True:
            recovery.recover(study, self.host, self.say)
            if left():
                trial = study.ask()
                self._claim(study, trial)
                if not surplus(trial):
                    take(trial)
                waiting = set()
                continue
            running = [t for t in self._trials(study) if t.state == self.states.RUNNING]
            others = {t.number for t in running if recovery.watchable(study, t, self.host)}
            if not others:
                return
            if others != waiting:
                shown = ", ".join(map(str, sorted(others)))
                trials = f"trial{'s' if len(others) > 1 else ''} {shown}"
                self.say(f"waiting for {trials} of other workers: taken over here if its worker stops")
                waiting = others
            try:
                time.sleep(recovery.poll_seconds(study))
            except KeyboardInterrupt:
                raise RunInterrupted(
                    f"sweep '{self.setup.name}' stopped while waiting for other workers' trials",
                    hint="they go on; run the same `finetune sweep` again to work on the study",
                ) from None

    def _claim(self, study, trial) -> None:
        """Say whose trial it is at once: a worker killed from here on is found by its heartbeats
        stopping (Optuna never gives up a trial that has none) or its process id."""
        if recovery.beats(study):
            study._storage.record_heartbeat(trial._trial_id)
        trial.set_user_attr("host", self.host)
        trial.set_user_attr("pid", os.getpid())

    def surplus(self, trial) -> bool:
        """Another worker asked at the same moment and the study is full, or this is a grid point
        queued twice: give this ask back."""
        attrs = trial.user_attrs
        if "continues" in attrs:  # a queued trial (an interrupted one, again) always runs
            return False
        trials = self._trials()
        continued = continued_numbers(trials)
        before = [t for t in trials if t.number < trial.number and self.counts(t, continued)]
        twice = attrs.get("grid") and any(
            t.number < trial.number and t.user_attrs.get("grid") and not t.user_attrs.get("surplus")
            and fixed_params(t) == fixed_params(trial) for t in trials
        )  # fmt: skip
        if len(before) < self.setup.target and not twice:
            return False
        self.give_back(self.study, trial)
        if attrs.get("grid") and not twice:  # a grid point popped by this ask stays queued for a longer study
            self.study.enqueue_trial(fixed_params(trial), user_attrs={"grid": True})
        return True

    def give_back(self, study, trial) -> None:
        trial.set_user_attr("surplus", True)
        study.tell(trial, state=self.states.FAIL)

    def search_trial(self, trial) -> None:
        chosen = space.choose(trial, self.setup.options, self.setup.base, self.plugins.registry)
        settings = "  ".join(f"{k}={shown_value(v)}" for k, v in chosen.values.items())
        more = f" (continues trial {trial.user_attrs['continues']})" if "continues" in trial.user_attrs else ""
        self.say(f"[bold]trial {trial.number}[/]{more}: {settings}")
        for key in chosen.not_applicable:
            self.say(f"  {key}: not an option of this trial's component; not searched here")
        if chosen.dropped:
            self.say(f"  left out (the trial's component does not take them): {', '.join(chosen.dropped)}")
        about = {"sweep": {"study": self.setup.name, "trial": trial.number, "params": chosen.values}}
        header = f"# Trial {trial.number} of study '{self.setup.name}'.\n"
        name = f"trials/trial-{trial.number:04d}"
        self.attempt(self.study, trial, chosen, name, header, Pruning(trial, self.setup.metric), about, None)

    # -- one trial's run --------------------------------------------------------------------------
    def attempt(self, study, trial, chosen, name, header, pruning, about, label) -> None:
        """Run a trial in its directory `name` under this worker's --output (continuing what it
        continues), and tell the study."""
        name, origin = self._continues(study, trial, name)
        with recovery.heartbeat(study, trial):
            try:
                where = continuation.place(
                    self.setup.directory, name, chosen.values, origin, "continues" in trial.user_attrs
                )
            except FinetuneError as exc:
                self._tell(study, trial, TrialResult("failed", error=exc.render()), label)
                return
            recipe_path = self.setup.directory / f"{name}.toml"
            self._write_recipe(recipe_path, chosen.data, header)
            self._mark(trial, chosen, where.path, name)
            if where.note:
                self.say(f"  {where.note}")
            result = self._run(study, trial, recipe_path, where.path, pruning, about, where.resume)
        self._tell(study, trial, result, label)

    def _continues(self, study, trial, name: str) -> tuple[str, str | None]:
        """The run directory's name, and where the trial it continues last ran (on its machine)."""
        number, resume = trial.user_attrs.get("continues"), trial.user_attrs.get("resume")
        if number is None:
            return name, None
        if resume and Path(resume).is_absolute():  # queued by an earlier version: a path, not a name
            return f"{Path(name).parent}/{Path(resume).name}", resume
        original = next((t for t in self._trials(study) if t.number == int(number)), None)
        origin = original.user_attrs.get("run_dir") if original is not None else None
        return resume or name, origin

    def _write_recipe(self, path: Path, data: dict, header: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, header + tomli_w.dumps(data))

    def _mark(self, trial, chosen: space.TrialRecipe, run_path: Path, name: str) -> None:
        for key, value in {
            "settings": chosen.values, "run_dir": str(run_path), "run_name": name,
            "not_applicable": chosen.not_applicable, "dropped": chosen.dropped,
        }.items():  # fmt: skip
            trial.set_user_attr(key, value)

    def _run(self, study, trial, recipe_path, run_path, pruning, about, resume=False) -> TrialResult:
        try:
            return run_trial(
                recipe_path, run_path, self.plugins, pruning, metric=self.setup.metric, about=about,
                resume=resume, trust_remote_code=self.trust_remote_code, debug=self.debug,
            )  # fmt: skip
        except (RunInterrupted, KeyboardInterrupt):
            self._interrupted(study, trial)
            raise RunInterrupted(
                f"sweep '{self.setup.name}' interrupted during trial {trial.number}",
                hint=f"run the same `finetune sweep` again: it continues the study (and {run_path.name} "
                "from its last checkpoint)",
            ) from None

    def _interrupted(self, study, trial) -> None:
        """Ctrl-C: fail the trial and queue its settings again, to be continued from its checkpoint."""
        optuna = quiet_optuna()
        try:
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=self.states.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # another worker gave it up meanwhile and queued it
        continue_later(study, study._storage.get_trial(trial._trial_id))

    def _tell(self, study, trial, result: TrialResult, label: str | None = None) -> None:
        s, optuna = self.states, quiet_optuna()
        name = label or f"trial {trial.number}"
        try:
            if result.error:
                trial.set_user_attr("error", result.error)
            if result.state == "complete":
                study.tell(trial, result.value)
            else:
                study.tell(trial, state=s.PRUNED if result.state == "pruned" else s.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            self.say(f"{name}: another worker gave it up meanwhile (no heartbeat); its result is not counted")
            return
        what = f"{self.setup.metric} {result.value:.4g}" if result.value is not None else result.error or ""
        first = what.splitlines()[0] if what else ""
        self.say(f"{name} {result.state} in {result.seconds:.0f}s: {first}")
        if result.state == "failed" and result.error and "\n" in result.error:
            self.say("  " + result.error.replace("\n", "\n  "))

    def seed_values(self) -> list[int]:
        return [(self.setup.seed + i) % 2**32 for i in range(1, self.setup.options.seeds + 1)]


def shown_value(value: Any) -> str:
    """A searched value as the sweep prints it: 3 significant digits, small or large ones in e-notation."""
    if isinstance(value, float):
        return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.2e}"
    return str(value)
