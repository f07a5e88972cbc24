"""A sweep's study: where it is stored, what it searches, and the setup every worker starts from.

The study lives in Optuna's storage: by default a journal file in the sweep's directory (several
processes on one machine share it), or a database URL (`--storage postgresql://...`) that workers
on several machines join (`finetune sweep --join NAME`). The recipe is stored in the study itself,
with its file paths made absolute, so a joining worker needs no copy of it and every worker runs
exactly the same recipe; a second `finetune sweep` of a changed recipe is refused, naming what
changed, instead of mixing two experiments in one study.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from runner.errors import FinetuneError
from runner.pipeline.environment import mask_passwords
from runner.recipe.resolved import Recipe
from runner.recipe.sweep_check import sweep_objective
from runner.recipe.sweep_section import SweepOptions
from runner.storage.rundir import atomic_write, read_json, write_json
from runner.sweep.space import absolute_paths

JOURNAL = "study.journal"
# Database storage: a running trial's worker says it is alive this often (seconds), and a trial
# silent for GRACE_BEATS beats is given up: failed, and its settings queued for another worker.
HEARTBEAT_S = 60
HEARTBEAT_ENV = "FINETUNE_SWEEP_HEARTBEAT"  # another interval, e.g. 1 in tests: a dead worker found in seconds
GRACE_BEATS = 3
SETUP_WAIT_S = 60  # how long a joining worker waits for the study's creator to store the recipe
SCHEMA_TRIES = 5  # opening a new database: tries while other workers create its tables
POINTER = "sweep.json"  # in the sweep's directory: which study it is, where it is stored
# What may change between two sweeps of one study: how long it runs, not what it searches.
ADJUSTABLE = ("trials", "seeds", "pruner", "startup_trials", "sampler")


@dataclass
class Setup:
    """What every worker of a study runs from."""

    name: str
    directory: Path
    storage: str  # a database URL, or the path of a journal file
    base: dict[str, Any]  # the recipe as data, paths absolute, [sweep] included
    options: SweepOptions
    metric: str
    direction: str
    seed: int
    recipe: str  # where the recipe came from (shown in the report)

    @property
    def storage_label(self) -> str:
        return f"journal file {self.storage}" if "://" not in self.storage else masked(self.storage)

    @property
    def target(self) -> int:
        grid = self.options.grid_size()
        return min(self.options.trials, grid) if grid else self.options.trials


def masked(url: str) -> str:
    """A database URL without its password, for printing."""
    return mask_passwords(url)


def without_password(url: str) -> str:
    """A database URL with its password left out, for what is kept on disk (sweep.json): whoever
    reads the study again gives it (--storage URL) or lets the driver find it (PGPASSWORD, ~/.pgpass)."""
    return mask_passwords(url).replace(":***@", "@")


def heartbeat_seconds() -> int:
    """The heartbeat interval of a database study: HEARTBEAT_S, or FINETUNE_SWEEP_HEARTBEAT's whole seconds."""
    raw = os.environ.get(HEARTBEAT_ENV, "").strip()
    if not raw:
        return HEARTBEAT_S
    if not raw.isdigit() or int(raw) < 1:
        raise FinetuneError(f"{HEARTBEAT_ENV}={raw!r}: expected whole seconds, at least 1")
    return int(raw)


def setup_from_recipe(recipe: Recipe, recipe_path: Path, output: Path | None, storage: str | None) -> Setup:
    if recipe.sweep is None:
        raise FinetuneError(
            f"{recipe_path} has no [sweep] section: nothing to search",
            hint='add [sweep] and [sweep.space], e.g. "training.learning_rate" = { log_uniform = [1e-5, 1e-3] }',
        )
    name = recipe.sweep.name or recipe.name
    metric, direction = sweep_objective(recipe, recipe.sweep)  # validation has checked the metric
    directory = (output or Path(recipe.run.output_dir) / "sweeps" / name).resolve()
    return Setup(
        name=name,
        directory=directory,
        storage=storage or str(directory / JOURNAL),
        base=absolute_paths(recipe),
        options=recipe.sweep,
        metric=metric,
        direction=direction,
        seed=recipe.run.seed,
        recipe=str(recipe_path),
    )


def quiet_optuna():
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)  # the sweep says what each trial did, in its own words
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # worker.heartbeat beats for ask-and-tell itself; Optuna warns because it cannot tell
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    return optuna


_STORAGES: dict[str, Any] = {}  # one storage (one connection pool) per study location and process


def open_storage(spec: str):
    """Optuna storage for a database URL or a journal file path; a clear error when it cannot open."""
    if spec not in _STORAGES:
        _STORAGES[spec] = _open_storage(spec)
    return _STORAGES[spec]


def _open_storage(spec: str):
    optuna = quiet_optuna()
    if "://" not in spec:
        from optuna.storages.journal import JournalFileBackend

        Path(spec).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(spec))
    from optuna.storages import RDBStorage

    beat = heartbeat_seconds()
    try:
        for attempt in range(SCHEMA_TRIES):
            try:
                # Heartbeats let the study notice a worker that died (a machine lost): a trial silent for
                # the grace period is failed by whichever worker looks first, which queues it again.
                return RDBStorage(
                    spec,
                    heartbeat_interval=beat,
                    grace_period=GRACE_BEATS * beat,
                    heartbeat_stale_trial_callback=continue_later,
                )
            except Exception as exc:
                # Workers started together on a new database all create Optuna's tables: all but one
                # collide (a type or table that "already exists", a "duplicate key" of its version
                # row); by the next try the tables are there.
                racing = any(word in str(exc).lower() for word in ("already exists", "duplicate key"))
                if attempt + 1 == SCHEMA_TRIES or not racing:
                    raise
                time.sleep(0.2 + random.random())
    except ImportError as exc:
        raise FinetuneError(
            f"--storage {masked(spec)}: the database driver is not installed ({exc.name or exc})",
            hint="pip install 'finetune-runner[sweep]' brings psycopg (PostgreSQL); MySQL: pymysql (mysql+pymysql://)",
        ) from None
    except Exception as exc:  # a server that is down, a wrong password: the user's to fix
        text = scrubbed(str(exc), spec)
        hint = None
        if "password" in text.lower() and masked(spec) == spec:  # as sweep.json keeps it: no password
            hint = "give it: --storage URL with the password, or PGPASSWORD (or ~/.pgpass), which the driver reads"
        raise FinetuneError(f"--storage {masked(spec)}: cannot open the study's database: {text}", hint=hint) from None


def scrubbed(text: str, url: str) -> str:
    """A driver's message with the URL's password taken out, wherever it may quote it."""
    from urllib.parse import unquote, urlsplit

    text = mask_passwords(text)
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    for secret in {password, unquote(password or "")} - {None, ""}:
        text = text.replace(secret, "***")
    return text


def continue_later(study, trial) -> None:
    """Queue the settings of a failed trial (interrupted, or abandoned by a worker that died) again.

    The queued trial names the one it continues and its run directory by its name inside the sweep's
    directory, never by a path of the machine that ran it: the worker that takes it runs it under its
    own --output (runner.sweep.continuation). Optuna calls this for a trial whose heartbeats stopped,
    after failing it: nothing may be written on the failed trial itself, so what it was is linked
    from the new one (`continues`), which is also why it no longer counts toward `trials`."""
    attrs: dict[str, Any] = {"continues": trial.number}
    for key in ("best_trial", "seed"):  # a seed repeat stays one, of the same trial
        if key in trial.user_attrs:
            attrs[key] = trial.user_attrs[key]
    if trial.user_attrs.get("run_name"):
        attrs["resume"] = trial.user_attrs["run_name"]
    study.enqueue_trial(trial.params, user_attrs=attrs)


def give_up(study, trial) -> bool:
    """Fail a running trial of another process (its worker is gone) and queue it again; False when
    another worker did so first."""
    optuna = quiet_optuna()
    try:
        if not study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    continue_later(study, study._storage.get_trial(trial._trial_id))
    return True


def _stored(study) -> dict[str, Any]:
    return study.user_attrs.get("setup") or {}


def _record(setup: Setup) -> dict[str, Any]:
    return {
        "base": json.loads(json.dumps(setup.base, default=str)),
        "metric": setup.metric,
        "direction": setup.direction,
        "seed": setup.seed,
        "recipe": setup.recipe,
    }


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in dict.fromkeys([*old, *new]):
            if prefix == "sweep." and key in ADJUSTABLE:
                continue
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def open_study(setup: Setup, prepare=None) -> tuple[Any, bool]:
    """Create the study, or continue it after checking it searches what this recipe searches.

    Returns the study and whether this worker created it. Creating is atomic in the storage, so of
    workers started together exactly one creates the study; it runs `prepare(study)` (queueing a
    grid) before storing the recipe, and the others wait for the recipe, so that none of them asks
    for a trial before the study is ready."""
    optuna = quiet_optuna()
    storage = open_storage(setup.storage)
    try:
        study = optuna.create_study(study_name=setup.name, storage=storage, direction=setup.direction)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.load_study(study_name=setup.name, storage=storage), False
    record = _record(setup)
    stored = {} if created else _wait_for_setup(study)
    if not stored:  # this worker created it (or its creator died before storing the recipe)
        if prepare is not None:
            prepare(study)
        study.set_user_attr("setup", record)
        return study, created
    changed = _differences(stored["base"], record["base"])
    changed += [key for key in ("metric", "direction") if stored.get(key) != record[key]]
    if changed:
        raise FinetuneError(
            f"study '{setup.name}' in {setup.storage_label} searched another recipe; changed: {', '.join(changed[:8])}",
            hint='give the new experiment its own study: [sweep] name = "..." (or --set sweep.name=...)',
        )
    if stored["base"].get("sweep") != record["base"].get("sweep"):
        study.set_user_attr("setup", record)  # more trials or seeds: the study's length may grow
    return study, created


def _wait_for_setup(study) -> dict[str, Any]:
    deadline = time.monotonic() + SETUP_WAIT_S
    while not (stored := _stored(study)) and time.monotonic() < deadline:
        time.sleep(0.2)  # user_attrs reads the storage anew
    return stored


def setup_from_study(name: str, storage: str | None, output: Path | None) -> Setup:
    """`--join NAME`: the recipe and objective come from the study, not from a file."""
    directory = (output or Path("runs") / "sweeps" / name).resolve()
    spec = storage or str(directory / JOURNAL)
    if "://" not in spec and not Path(spec).is_file():
        raise FinetuneError(f"no study to join: {spec} does not exist", hint="--storage URL names where the study is")
    optuna = quiet_optuna()
    names = optuna.study.get_all_study_names(open_storage(spec))
    if name not in names:
        shown = ", ".join(n for n in names if not n.endswith(".seeds")) or "none"
        raise FinetuneError(f"no study '{name}' in {masked(spec)}", hint=f"studies there: {shown}")
    study = optuna.load_study(study_name=name, storage=open_storage(spec))
    stored = _wait_for_setup(study)
    if not stored:
        raise FinetuneError(f"study '{name}' was not made by finetune sweep (it stores no recipe)")
    options = SweepOptions.model_validate(stored["base"]["sweep"])
    if output is None and isinstance(stored["base"].get("run", {}).get("output_dir"), str):
        directory = (Path(stored["base"]["run"]["output_dir"]) / "sweeps" / name).resolve()
    return Setup(
        name=name,
        directory=directory,
        storage=spec,
        base=stored["base"],
        options=options,
        metric=stored["metric"],
        direction=stored["direction"],
        seed=int(stored["seed"]),
        recipe=stored["recipe"],
    )


def write_pointer(setup: Setup) -> None:
    """sweep.json and recipe.toml in the sweep's directory: `finetune sweep report DIR` reads them."""
    setup.directory.mkdir(parents=True, exist_ok=True)
    storage = without_password(setup.storage) if "://" in setup.storage else setup.storage
    pointer = {"name": setup.name, "storage": storage, "recipe": setup.recipe}
    previous = read_json(setup.directory / POINTER) if (setup.directory / POINTER).is_file() else {}
    if {k: previous.get(k) for k in pointer} != pointer:
        write_json(setup.directory / POINTER, pointer)
    text = f"# The recipe study '{setup.name}' searches (paths made absolute), as the study stores it.\n"
    atomic_write(setup.directory / "recipe.toml", text + tomli_w.dumps(setup.base))


def read_pointer(directory: Path) -> dict[str, Any]:
    path = directory / POINTER
    if not path.is_file():
        hint = "finetune sweep RECIPE makes one"
        raise FinetuneError(f"{directory} is not a sweep directory (no {POINTER})", hint=hint)
    return read_json(path)


def worker_seed(setup: Setup, created: bool) -> int:
    """The worker that created the study samples with the recipe's seed (a sweep run by one worker
    repeats); any other must not draw the same settings: workers started together, on one machine or
    several (where process ids repeat, in containers), so it takes a seed of its own at random."""
    return setup.seed if created else random.SystemRandom().randrange(2**32)
