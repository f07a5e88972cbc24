"""Trials whose worker is gone: found, failed, and their settings queued for another worker.

On a database, every running trial's worker records a heartbeat each interval (HEARTBEAT_S, or
FINETUNE_SWEEP_HEARTBEAT seconds); a trial silent for GRACE_BEATS intervals is given up by the first
worker that looks: Optuna fails it, then `study.continue_later` queues its settings, once. Workers
look when they start, between trials, while they wait for the trials of others, and at every beat
of a trial they run, so a dead worker's trial is queued again within about GRACE_BEATS + 1 beats.
On a journal file (one machine) a trial is given up when its process is no longer there.
"""

from __future__ import annotations

import contextlib
import os
import threading

from runner.sweep.study import give_up, heartbeat_seconds, quiet_optuna


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def beats(study) -> bool:
    """Whether the study's storage takes heartbeats (a database)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(study._storage)


def poll_seconds(study) -> float:
    """How often a waiting worker looks at the trials of others."""
    return min(heartbeat_seconds(), 5) if beats(study) else 2.0


def recover(study, host: str, say) -> list[int]:
    """Give up the trials of workers that are gone; returns their numbers."""
    optuna = quiet_optuna()
    running = optuna.trial.TrialState.RUNNING
    before = {t.number for t in study.get_trials(deepcopy=False, states=(running,))}
    optuna.storages.fail_stale_trials(study)  # silent for the grace period; queued again by its callback
    found = []
    for trial in study.get_trials(deepcopy=False, states=(running,)):
        # called between trials: a trial of this very process left running is one of an earlier sweep
        pid = int(trial.user_attrs.get("pid") or 0) if trial.user_attrs.get("host") == host else 0
        if pid and (pid == os.getpid() or not _alive(pid)) and give_up(study, trial):
            found.append(trial.number)
    trials = study.get_trials(deepcopy=False)
    continued = {t.user_attrs.get("continues") for t in trials}
    found += [t.number for t in trials if t.number in before and t.number in continued and t.number not in found]
    for number in sorted(found):
        say(f"trial {number}: its worker stopped; its settings are queued again")
    return found


def watchable(study, trial, host: str) -> bool:
    """Whether this worker would notice that the trial's worker died: on a database always; on a
    journal file when it runs on this machine."""
    return beats(study) or trial.user_attrs.get("host") == host


@contextlib.contextmanager
def heartbeat(study, trial):
    """While a trial runs: on a database, record its heartbeat each interval (Optuna's optimize loop
    does so; ask-and-tell leaves it to the caller) and give up the trials of dead workers."""
    if not beats(study):
        yield
        return
    storage, stop, interval = study._storage, threading.Event(), heartbeat_seconds()
    storage.record_heartbeat(trial._trial_id)

    def beat():
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial._trial_id)
                quiet_optuna().storages.fail_stale_trials(study)
            except Exception:  # a database that is briefly away: the next beat tries again
                continue

    thread = threading.Thread(target=beat, name="sweep-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
