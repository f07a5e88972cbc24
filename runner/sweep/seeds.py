"""Seed repeats: once the search is over, the best trial's settings again with other seeds, to show
how much of its score was the seed's luck.

They live in a study of their own, `<study>.seeds`; each repeat belongs to one trial, the best when
it was queued (`best_trial`), and runs in `seeds/trial-NNNN/seed-S/`. A study lengthened until
another trial is best queues that trial's repeats; the report averages the repeats of the best
trial only, never two settings under one label.
"""

from __future__ import annotations

from typing import Any

from runner.sweep import space
from runner.sweep.study import open_storage, quiet_optuna
from runner.sweep.worker import SEEDS, Worker, continued_numbers, fixed_params


def seeds_study(worker: Worker):
    optuna = quiet_optuna()
    return optuna.create_study(
        study_name=worker.setup.name + SEEDS, storage=open_storage(worker.setup.storage),
        direction=worker.setup.direction, load_if_exists=True, sampler=optuna.samplers.RandomSampler(),
    )  # fmt: skip


def seed_of(trial) -> Any:
    return trial.user_attrs.get("seed", fixed_params(trial).get("run.seed"))


def repeat_key(trial) -> tuple[Any, Any]:
    return trial.user_attrs.get("best_trial"), seed_of(trial)


def live(worker: Worker, trials) -> list:
    """Repeats that stand for their (trial, seed): done, running or queued, or failed for good."""
    s, continued = worker.states, continued_numbers(trials)
    return [t for t in trials if t.state in (s.COMPLETE, s.RUNNING, s.WAITING) or worker.counts(t, continued)]


def run_seed_repeats(worker: Worker) -> None:
    s = worker.states
    complete = [t for t in worker._trials() if t.state == s.COMPLETE]
    if not complete:
        worker.say("no trial completed: no seed repeats")
        return
    best = worker.study.best_trial
    study = seeds_study(worker)
    have = {repeat_key(t) for t in live(worker, study.get_trials(deepcopy=False))}
    for seed in worker.seed_values():
        if (best.number, seed) not in have:
            study.enqueue_trial({"run.seed": seed}, user_attrs={"best_trial": best.number, "seed": seed})

    def left() -> bool:
        return any(t.state == s.WAITING for t in study.get_trials(deepcopy=False))

    def surplus(trial) -> bool:
        """Not a queued repeat (the queue emptied under another worker), or one queued twice by
        workers that queued at the same moment."""
        trials = study.get_trials(deepcopy=False)
        twice = (
            any(t.number < trial.number and repeat_key(t) == repeat_key(trial) for t in live(worker, trials))
            and "continues" not in trial.user_attrs
        )
        if "best_trial" in trial.user_attrs and not twice:
            return False
        worker.give_back(study, trial)
        return True

    worker.work(study, left, surplus, lambda trial: _repeat(worker, study, trial))


def _repeat(worker: Worker, study, trial) -> None:
    number, seed = int(trial.user_attrs["best_trial"]), seed_of(trial)
    trial.suggest_int("run.seed", 0, 2**32 - 1)  # the queued seed; one distribution for every repeat
    of = next(t for t in worker._trials() if t.number == number)
    settings = {**of.user_attrs["settings"], "run.seed": seed}
    chosen = space.build(worker.setup.base, settings, worker.plugins.registry)
    worker.say(f"[bold]seed {seed}[/]: trial {number}'s settings")
    about = {"sweep": {"study": worker.setup.name, "seed_of": number, "params": chosen.values}}
    header = f"# Trial {number}'s settings with seed {seed}.\n"
    name = f"seeds/trial-{number:04d}/seed-{seed}"
    worker.attempt(study, trial, chosen, name, header, None, about, f"seed {seed}")
