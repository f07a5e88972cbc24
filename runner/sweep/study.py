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
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from runner.errors import FinetuneError
from runner.recipe.resolved import Recipe
from runner.recipe.sweep_section import SweepOptions
from runner.storage.rundir import atomic_write, read_json, write_json
from runner.sweep.space import absolute_paths

JOURNAL = "study.journal"
HEARTBEAT_S = 60  # database storage: a running trial's worker says it is alive this often
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
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def objective_of(recipe: Recipe, options: SweepOptions) -> tuple[str, str]:
    """The validation metric a study optimises, and its direction; a recipe error when unknown."""
    metric = options.metric or getattr(recipe.training.options, "best_metric", None) or "loss"
    split, _, name = metric.rpartition(".")
    if split == "test":
        raise _sweep_error(recipe, "metric", "a sweep chooses on the validation split; choosing on test leaks it",
                           "name the validation metric, e.g. 'accuracy'")  # fmt: skip
    if split not in ("", "validation"):
        raise _sweep_error(recipe, "metric", f"not a validation metric: '{metric}'", "e.g. 'accuracy' or 'loss'")
    greater = {spec.create().key(): spec.cls.greater_is_better for spec in recipe.metrics}
    if name != "loss" and name not in greater:
        known = ", ".join(["loss", *greater])
        raise _sweep_error(recipe, "metric", f"the recipe measures no '{name}'", f"one of: {known}")
    direction = options.direction or ("maximize" if name != "loss" and greater.get(name, False) else "minimize")
    return name, direction


def _sweep_error(recipe: Recipe, key: str, message: str, hint: str | None = None) -> FinetuneError:
    from runner.errors import Issue, RecipeError

    path = ("sweep", key) if key in (recipe.source.data.get("sweep") or {}) else ("sweep",)
    return RecipeError([Issue(message, recipe.source.locate(path), path, hint)])


def setup_from_recipe(recipe: Recipe, recipe_path: Path, output: Path | None, storage: str | None) -> Setup:
    if recipe.sweep is None:
        raise FinetuneError(
            f"{recipe_path} has no [sweep] section: nothing to search",
            hint='add [sweep] and [sweep.space], e.g. "training.learning_rate" = { log_uniform = [1e-5, 1e-3] }',
        )
    name = recipe.sweep.name or recipe.name
    metric, direction = objective_of(recipe, recipe.sweep)
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


def open_storage(spec: str):
    """Optuna storage for a database URL or a journal file path; a clear error when it cannot open."""
    optuna = quiet_optuna()
    if "://" not in spec:
        from optuna.storages.journal import JournalFileBackend

        Path(spec).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(spec))
    from optuna.storages import RDBStorage

    try:
        # Heartbeats let the study notice a worker that died (a machine lost): after the grace period
        # its trial is failed and its settings queued again for another worker (worker.heartbeat).
        return RDBStorage(
            spec, heartbeat_interval=HEARTBEAT_S, grace_period=3 * HEARTBEAT_S, heartbeat_stale_trial_callback=requeue
        )
    except ImportError as exc:
        raise FinetuneError(
            f"--storage {masked(spec)}: the database driver is not installed ({exc.name or exc})",
            hint="install it, e.g. pip install psycopg2-binary (PostgreSQL) or pymysql (mysql+pymysql://)",
        ) from None
    except Exception as exc:  # a server that is down, a wrong password: the user's to fix
        raise FinetuneError(f"--storage {masked(spec)}: cannot open the study's database: {exc}") from None


def requeue(study, trial, resume: Path | None = None) -> None:
    """Fail an interrupted trial (or one whose worker is gone) and queue its settings again; `resume`:
    the run directory (with a checkpoint) the next worker continues."""
    import optuna

    # Optuna sets attributes through the live trial of its own process only; this may be another's.
    study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
    if trial.state == optuna.trial.TrialState.RUNNING:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    attrs: dict[str, Any] = {"continues": trial.number}
    if "best_trial" in trial.user_attrs:  # a seed repeat stays one
        attrs["best_trial"] = trial.user_attrs["best_trial"]
    if resume is not None:
        attrs["resume"] = str(resume)
    study.enqueue_trial(trial.params, user_attrs=attrs)


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


def open_study(setup: Setup, sampler, pruner):
    """Create the study, or continue it after checking it searches what this recipe searches."""
    optuna = quiet_optuna()
    storage = open_storage(setup.storage)
    study = optuna.create_study(
        study_name=setup.name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction=setup.direction,
        load_if_exists=True,
    )
    stored, record = _stored(study), _record(setup)
    if not stored:
        study.set_user_attr("setup", record)
        return study
    changed = _differences(stored["base"], record["base"])
    changed += [key for key in ("metric", "direction") if stored.get(key) != record[key]]
    if changed:
        raise FinetuneError(
            f"study '{setup.name}' in {setup.storage_label} searched another recipe; changed: {', '.join(changed[:8])}",
            hint='give the new experiment its own study: [sweep] name = "..." (or --set sweep.name=...)',
        )
    if stored["base"].get("sweep") != record["base"].get("sweep"):
        study.set_user_attr("setup", record)  # more trials or seeds: the study's length may grow
    return study


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
    stored = _stored(study)
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
    pointer = {"name": setup.name, "storage": setup.storage, "recipe": setup.recipe}
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
    """The study's first worker samples with the recipe's seed (a sweep repeats); a joining one must
    not draw the same settings, so it mixes in its process id."""
    return setup.seed if created else (setup.seed * 1_000_003 + os.getpid()) % 2**32
