"""`finetune sweep`: a study over recipe keys; pruning; two workers on one journal; Ctrl-C, then continue."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY, cli, finetune_subprocess, write

from runner.recipe.load import read_recipe
from runner.recipe.validate import validate
from runner.storage import checkpoints
from runner.storage.rundir import RunDir

pytest.importorskip("optuna")

QUIET = """
[evaluation]
baseline = false
bootstrap = 0
"""


def swept(tmp_path: Path, sweep: str, *, rows=240, epochs=2, eval_every=2, extra="") -> Path:
    return write(
        tmp_path / "swept.toml", TINY.format(rows=rows, epochs=epochs, eval_every=eval_every) + QUIET + extra + sweep
    )


def study(directory: Path, name: str = "swept"):
    import optuna

    from runner.sweep.study import JOURNAL, open_storage

    return optuna.load_study(study_name=name, storage=open_storage(str(directory / JOURNAL)))


def counted(trials) -> list:
    """The trials that make up a study's length (not an interrupted one queued again, nor a surplus ask)."""
    return [t for t in trials if not t.user_attrs.get("interrupted") and not t.user_attrs.get("surplus")]


def test_sweep_section_problems_are_all_reported_with_their_lines(tmp_path):
    from runner.errors import RecipeError
    from runner.plugins.manager import get_plugins

    path = swept(
        tmp_path,
        """
[sweep]
sampler = "grid"
trails = 4
[sweep.space]
"training.learning_rate" = { log_uniform = [0.0, 1e-3] }
"trainng.epochs" = { int = [1, 3] }
"training.warmup_ratio" = { uniform = [0.0, 0.2] }
"strategy.r" = { choice = [8, 8] }
""",
    )
    with pytest.raises(RecipeError) as caught:
        validate(read_recipe(path), get_plugins().registry)
    text = caught.value.render()
    lines = path.read_text().splitlines()

    def line_of(fragment: str) -> int:
        return next(i for i, line in enumerate(lines, 1) if fragment in line)

    assert f"swept.toml:{line_of('trails')}" in text and "did you mean 'trials'" in text
    assert f"swept.toml:{line_of('log_uniform')}" in text and "low > 0" in text
    assert f"swept.toml:{line_of('trainng')}" in text and "did you mean 'training'" in text
    assert "choice lists a value twice" in text
    assert 'sweep.space."training.learning_rate"' in text  # a dotted key is shown quoted, as written


def test_a_trial_that_changes_the_component_searches_only_its_keys(tmp_path):
    from optuna.trial import FixedTrial

    from runner.plugins.manager import get_plugins
    from runner.recipe.sweep_section import SweepOptions
    from runner.sweep import space

    base = {"strategy": {"type": "lora", "r": 4, "alpha": 8}, "training": {"learning_rate": 1e-3}}
    options = SweepOptions.model_validate(
        {"space": {"strategy.r": {"choice": [2, 4]}, "strategy.type": {"choice": ["lora", "ia3"]}}}
    )
    registry = get_plugins().registry
    ia3 = space.choose(FixedTrial({"strategy.type": "ia3"}), options, base, registry)
    assert ia3.values == {"strategy.type": "ia3"} and ia3.not_applicable == ["strategy.r"]
    assert ia3.data["strategy"] == {"type": "ia3"} and sorted(ia3.dropped) == ["strategy.alpha", "strategy.r"]
    lora = space.choose(FixedTrial({"strategy.type": "lora", "strategy.r": 2}), options, base, registry)
    assert lora.data["strategy"] == {"type": "lora", "r": 2, "alpha": 8} and not lora.dropped
    assert base["strategy"]["r"] == 4  # the base recipe is never changed


LR_AND_RANK = """
[strategy]
type = "lora"
r = 4

[sweep]
trials = 4
startup_trials = 2
seeds = 2
[sweep.space]
"training.learning_rate" = { log_uniform = [1e-4, 1e-2] }
"strategy.r" = { choice = [2, 4, 8] }
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sweep")
    path = swept(directory, LR_AND_RANK)
    assert cli("sweep", path, "--output", directory / "study") == 0
    return path, directory / "study"


def test_a_sweep_runs_its_trials_and_writes_report_and_best_recipe(finished):
    path, directory = finished
    trials = study(directory).get_trials()
    assert len(counted(trials)) == 4
    values = {t.number: t.value for t in trials if t.value is not None}
    assert values, "no trial completed"
    best = min(values, key=values.get)  # the objective defaults to the validation loss, minimised
    for t in trials:
        run = RunDir(Path(t.user_attrs["run_dir"]))
        recipe = read_recipe(run.recipe).data
        settings = t.user_attrs["settings"]
        assert recipe["training"]["learning_rate"] == settings["training.learning_rate"]
        assert recipe["strategy"]["r"] == settings["strategy.r"]
        if t.value is not None:  # the trial's value is its run's final validation loss
            assert t.value == json.loads(run.metrics.read_text())["validation"]["loss"]
        else:
            assert run.status()["state"] == "stopped"

    best_recipe = read_recipe(directory / "best.toml")
    assert "sweep" not in best_recipe.data
    assert (
        best_recipe.data["training"]["learning_rate"] == trials[best].user_attrs["settings"]["training.learning_rate"]
    )
    from runner.plugins.manager import get_plugins

    validate(best_recipe, get_plugins().registry)  # best.toml runs as it is

    page = (directory / "sweep.html").read_text()
    assert "trial" in page and str(trials[best].user_attrs["settings"]["strategy.r"]) in page
    seeds = study(directory, "swept.seeds").get_trials()
    assert sorted(t.params["run.seed"] for t in seeds) == [8, 9]  # the recipe's seed is 7
    for t in seeds:
        assert t.state.name == "COMPLETE"
        assert read_recipe(RunDir(Path(t.user_attrs["run_dir"])).recipe).data["run"]["seed"] == t.params["run.seed"]


def test_sweep_report_is_rebuilt_from_the_study(finished, capsys):
    _, directory = finished
    (directory / "sweep.html").unlink()
    assert cli("sweep", "report", directory) == 0
    assert (directory / "sweep.html").is_file()
    assert "best: trial" in capsys.readouterr().out


def test_a_changed_recipe_does_not_continue_the_study(finished, capsys):
    path, directory = finished
    code = cli("sweep", path, "--output", directory, "--set", "training.batch_size=16")
    err = capsys.readouterr().err
    assert code == 2 and "searched another recipe" in err and "training.batch_size" in err
    assert cli("sweep", path, "--output", directory) == 0  # the same recipe: nothing left to run
    assert len(counted(study(directory).get_trials())) == 4


def test_the_pruner_stops_trials_that_trail(tmp_path):
    # A grid of two learning rates that learn and two that cannot (1e-9): with one finished trial
    # to compare with, the trials that cannot learn trail at their first evaluations.
    path = swept(
        tmp_path,
        """
[sweep]
sampler = "grid"
pruner = "median"
startup_trials = 1
[sweep.space]
"training.learning_rate" = { choice = [1e-2, 1e-9] }
"training.weight_decay" = { choice = [0.0, 0.1] }
""",
        epochs=3,
    )
    assert cli("sweep", path, "--output", tmp_path / "study") == 0
    trials = study(tmp_path / "study").get_trials()
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned, [(t.state.name, t.params) for t in trials]
    assert all(t.user_attrs["settings"]["training.learning_rate"] == 1e-9 for t in pruned)
    for t in pruned:  # stopped right after the evaluation that decided it: not a step more
        run = RunDir(Path(t.user_attrs["run_dir"]))
        status, decided = run.status(), max(t.intermediate_values)
        assert status["state"] == "stopped" and status["global_step"] == decided < 3 * 8
        assert checkpoints.latest_complete(run.checkpoints).name == f"checkpoint-{decided}"
        trained = [r["step"] for r in run.read_metrics_log() if r["split"] == "train"]
        assert max(trained) == decided


def _sweep_process(path: Path, output: Path) -> subprocess.Popen:
    args = [*finetune_subprocess(), "sweep", str(path), "--output", str(output)]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_two_workers_share_one_study_without_running_a_trial_twice(tmp_path):
    path = swept(
        tmp_path,
        """
[sweep]
trials = 4
pruner = "none"
[sweep.space]
"training.learning_rate" = { log_uniform = [1e-4, 1e-2] }
""",
    )
    workers = [_sweep_process(path, tmp_path / "study") for _ in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    trials = counted(study(tmp_path / "study").get_trials())
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    run_dirs = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(run_dirs)) == 4
    for run_dir in run_dirs:  # each trial trained once: one start in its metrics log
        steps = [r["step"] for r in RunDir(Path(run_dir)).read_metrics_log() if r["split"] == "train"]
        assert steps == sorted(set(steps))


def test_an_interrupted_sweep_continues_with_only_the_missing_trials(tmp_path):
    path = swept(
        tmp_path,
        """
[sweep]
trials = 3
pruner = "none"
[sweep.space]
"training.learning_rate" = { log_uniform = [1e-4, 1e-2] }
""",
        rows=480,
        epochs=6,
    )
    output = tmp_path / "study"
    process = _sweep_process(path, output)
    checkpoint = output / "trials" / "trial-0001" / "checkpoints"
    deadline = time.time() + 240
    while not any(checkpoint.glob("checkpoint-*/*")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "continues the study" in err and "Traceback" not in err
    first = RunDir(output / "trials" / "trial-0000").status()
    assert first["state"] == "completed"
    assert RunDir(output / "trials" / "trial-0001").status()["state"] == "interrupted"

    assert cli("sweep", path, "--output", output) == 0
    trials = study(output).get_trials()
    assert RunDir(output / "trials" / "trial-0000").status() == first  # not run again
    again = next(t for t in trials if t.user_attrs.get("continues") == 1)
    assert again.user_attrs["run_dir"] == str(output / "trials" / "trial-0001")  # continued in place
    assert again.params == trials[1].params
    resumed = RunDir(output / "trials" / "trial-0001")
    assert resumed.status()["state"] == "completed"
    steps = [r["step"] for r in resumed.read_metrics_log() if r["split"] == "train"]
    assert steps == sorted(set(steps)), "the continued trial logged steps twice (it restarted)"
    assert [t.state.name for t in counted(trials)] == ["COMPLETE"] * 3


def test_a_database_study_is_joined_by_name_without_the_recipe(tmp_path, capsys):
    path = swept(tmp_path, '[sweep]\ntrials = 1\n[sweep.space]\n"training.weight_decay" = { choice = [0.0, 0.1] }\n')
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    assert cli("sweep", path, "--storage", url, "--output", tmp_path / "first") == 0
    capsys.readouterr()
    assert cli("sweep", "--join", "nosuch", "--storage", url) == 2
    assert "studies there: swept" in capsys.readouterr().err
    # another machine: no recipe file, another folder; the recipe and the results come from the database
    assert cli("sweep", "--join", "swept", "--storage", url, "--output", tmp_path / "second") == 0
    stored = read_recipe(tmp_path / "second" / "recipe.toml").data
    assert stored["sweep"]["space"] == {"training.weight_decay": {"choice": [0.0, 0.1]}}
    best = read_recipe(tmp_path / "second" / "best.toml").data
    first = read_recipe(tmp_path / "first" / "best.toml").data
    assert best == first and "best: trial 0" in capsys.readouterr().out
