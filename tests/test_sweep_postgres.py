"""Sweeps on a real PostgreSQL server, as teams run them on several machines: workers started
together, one killed or interrupted mid-trial, seed repeats, and a storage password kept secret.

Workers are `finetune sweep` processes, each with its own --output as on separate machines, beating
every 2 seconds (FINETUNE_SWEEP_HEARTBEAT: a dead worker's trial is given up after three beats).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY, cli, finetune_subprocess, write

from runner.storage.rundir import RunDir

pytest.importorskip("optuna")

BEAT = {"FINETUNE_SWEEP_HEARTBEAT": "2"}  # a dead worker's trial is given up 6 s after its last beat
STUDY = "shared"


@pytest.fixture(scope="module")
def postgres():
    import _postgres

    server = _postgres.start()
    if isinstance(server, str):
        pytest.skip(f"no PostgreSQL server: {server}")
    yield server
    server.stop()


def recipe(tmp_path: Path, sweep: str, *, rows=480, epochs=2) -> Path:
    quiet = "\n[evaluation]\nbaseline = false\nbootstrap = 0\n"
    return write(tmp_path / "swept.toml", TINY.format(rows=rows, epochs=epochs, eval_every=2) + quiet + sweep)


def search(trials: int) -> str:
    return f"""
[sweep]
name = "{STUDY}"
trials = {trials}
pruner = "none"
[sweep.space]
"training.learning_rate" = {{ log_uniform = [1e-4, 1e-2] }}
"""


class Worker:
    def __init__(self, path: Path, url: str, output: Path):
        self.output, self.log = output, output.with_suffix(".log")
        command = [*finetune_subprocess(), "sweep", str(path), "--storage", url, "--output", str(output)]
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **BEAT}
            )

    def checkpointed(self) -> bool:
        """A trial of this worker has a complete checkpoint and trains on."""
        for manifest in self.output.glob("trials/*/checkpoints/checkpoint-*/finetune-checkpoint.json"):
            if RunDir(manifest.parents[2]).status().get("state") == "running":
                return True
        return False

    def finish(self, timeout=300) -> int:
        return self.process.wait(timeout=timeout)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def first_checkpointed(workers: list[Worker], timeout=240) -> Worker:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in workers:
            if worker.checkpointed() and worker.process.poll() is None:
                return worker
        time.sleep(0.02)
    raise AssertionError("no worker reached a checkpoint:\n" + "\n".join(w.text()[-2000:] for w in workers))


def load(url: str, name: str = STUDY):
    import optuna

    from runner.sweep.study import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(url))


def settings(trial) -> str:
    return json.dumps(trial.user_attrs["settings"], sort_keys=True)


def files_holding(directory: Path, secret: str) -> list[Path]:
    needle = secret.encode()
    return [p for p in directory.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_workers_started_together_draw_apart_and_a_killed_workers_trial_is_finished_by_another(
    postgres, tmp_path, monkeypatch
):
    url = postgres.create_database("killed")
    path = recipe(tmp_path, search(trials=2))
    workers = [Worker(path, url, tmp_path / f"machine-{i}") for i in range(2)]  # in the same second
    victim = first_checkpointed(workers)
    victim.process.send_signal(signal.SIGKILL)
    survivors = [w for w in workers if w is not victim]
    for worker in survivors:
        assert worker.finish() == 0, worker.text()
    victim.finish()

    trials = load(url).get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 2, [(t.number, t.state.name, t.user_attrs) for t in trials]
    assert len({settings(t) for t in complete}) == 2, "two trials ran the same settings"
    first = [t for t in trials if "continues" not in t.user_attrs]
    assert len({settings(t) for t in first}) == len(first) == 2, "workers started together drew the same settings"

    killed = [t for t in trials if t.state.name == "FAIL"]
    assert [t.user_attrs["pid"] for t in killed] == [victim.process.pid]
    again = [t for t in trials if t.user_attrs.get("continues") == killed[0].number]
    assert len(again) == 1 and again[0].state.name == "COMPLETE" and settings(again[0]) == settings(killed[0])
    taker = next(w for w in survivors if w.process.pid == again[0].user_attrs["pid"])
    assert Path(again[0].user_attrs["run_dir"]).is_relative_to(taker.output)
    steps = [
        r["step"] for r in RunDir(Path(again[0].user_attrs["run_dir"])).read_metrics_log() if r["split"] == "train"
    ]
    assert steps == sorted(set(steps)), "the continued trial logged steps twice"

    for worker in workers:
        assert "Traceback" not in worker.text(), worker.text()
    assert "sweeper:***@127.0.0.1" in survivors[0].text()  # the storage, as printed

    # sweep.json keeps no password: `sweep report` reads it with the password from the driver's place
    assert json.loads((taker.output / "sweep.json").read_text())["storage"] == postgres.url("killed", password=False)
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    assert cli("sweep", "report", taker.output) == 0
    # the password is in no file of any worker (run records, reports, sweep.json, sweep.html) nor any output
    assert files_holding(tmp_path, postgres.password) == []


def test_a_trial_interrupted_on_one_worker_continues_from_its_checkpoint_under_the_other_workers_output(
    postgres, tmp_path
):
    url = postgres.create_database("interrupted")
    path = recipe(tmp_path, search(trials=2))
    workers = [Worker(path, url, tmp_path / f"machine-{i}") for i in range(2)]
    victim = first_checkpointed(workers)
    victim.process.send_signal(signal.SIGINT)
    other = next(w for w in workers if w is not victim)
    assert victim.finish() == 130, victim.text()
    assert other.finish() == 0, other.text()
    assert "continues the study" in victim.text()
    for worker in workers:
        assert "Traceback" not in worker.text(), worker.text()

    trials = load(url).get_trials()
    interrupted = next(t for t in trials if t.user_attrs.get("interrupted"))
    again = next(t for t in trials if t.user_attrs.get("continues") == interrupted.number)
    assert again.state.name == "COMPLETE" and settings(again) == settings(interrupted)
    assert "resume" in again.user_attrs and not Path(again.user_attrs["resume"]).is_absolute()
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2

    run = Path(again.user_attrs["run_dir"])  # under this worker's --output, named as where it started
    assert run == other.output / interrupted.user_attrs["run_name"]
    mine = RunDir(Path(interrupted.user_attrs["run_dir"]))
    resumed_at = int(mine.status()["checkpoint"].rsplit("-", 1)[1])
    assert f"from checkpoint-{resumed_at}" in other.text()
    steps = [r["step"] for r in RunDir(run).read_metrics_log() if r["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[0] == 1  # the steps before the checkpoint came along
    assert RunDir(run).status()["state"] == "completed"
    # the records the continued run reads and writes name no path of the machine it came from (its
    # environment.json says how it started, there; a checkpoint's pickled training arguments are not read)
    records = [
        p for suffix in ("json", "jsonl", "toml") for p in run.rglob(f"*.{suffix}") if p.name != "environment.json"
    ]
    assert records and [p for p in records if str(victim.output) in p.read_text()] == []


def test_seed_repeats_belong_to_one_trial_and_one_that_died_runs_again(postgres, tmp_path):
    url = postgres.create_database("seeds")
    grid = """
[sweep]
name = "shared"
sampler = "grid"
pruner = "none"
trials = 1
seeds = 1
[sweep.space]
"training.learning_rate" = { choice = [1e-9, 1e-2] }
"""
    path = recipe(tmp_path, grid, rows=240, epochs=3)  # 1e-9 learns nothing: trial 1 (1e-2) will be best
    output = tmp_path / "machine"
    worker = Worker(path, url, output)
    deadline = time.monotonic() + 240  # killed in its seed repeat, before the repeat's first checkpoint
    while not any(output.glob("seeds/**/recipe.resolved.toml")) and time.monotonic() < deadline:
        assert worker.process.poll() is None, worker.text()
        time.sleep(0.02)
    worker.process.send_signal(signal.SIGKILL)
    worker.finish()
    assert not any(output.glob("seeds/**/checkpoint-*")), "the repeat was killed too late to test this"

    assert cli("sweep", path, "--storage", url, "--output", output) == 0  # the dead repeat runs again
    repeats = load(url, "shared.seeds").get_trials()
    done = [t for t in repeats if t.state.name == "COMPLETE"]
    assert [(t.user_attrs["best_trial"], t.params["run.seed"]) for t in done] == [(0, 8)]

    # a longer study finds a new best: it gets its own repeats, and the report shows only those
    assert cli("sweep", path, "--storage", url, "--output", output, "--set", "sweep.trials=2") == 0
    best = load(url).best_trial
    assert best.number != 0 and best.params["training.learning_rate"] == 1e-2
    repeats = [t for t in load(url, "shared.seeds").get_trials() if t.state.name == "COMPLETE"]
    assert (best.number, 8) in [(t.user_attrs["best_trial"], t.params["run.seed"]) for t in repeats]
    assert cli("sweep", path, "--storage", url, "--output", output, "--set", "sweep.trials=2",
               "--set", "sweep.seeds=2") == 0  # fmt: skip
    done = [t for t in load(url, "shared.seeds").get_trials() if t.state.name == "COMPLETE"]
    of_best = {t.params["run.seed"]: t.value for t in done if t.user_attrs["best_trial"] == best.number}
    assert sorted(of_best) == [8, 9] and len(done) == 3  # and trial 0's repeat with seed 8

    from runner.sweep.study import setup_from_study
    from runner.sweep.summary import summarize

    found = summarize(setup_from_study("shared", url, output))
    assert found["seeds"]["best_trial"] == best.number
    assert sorted(found["seeds"]["values"]) == sorted(of_best.values())  # trial 0's repeat is not among them
    for seed in (8, 9):
        run = RunDir(output / "seeds" / f"trial-{best.number:04d}" / f"seed-{seed}")
        assert run.status()["state"] == "completed"


def test_workers_opening_a_new_database_together_all_open_it(postgres):
    """Each creates Optuna's tables on a database that has none: all but one collide."""
    import threading

    from runner.sweep.study import open_storage

    url = postgres.create_database("fresh")
    start, failures = threading.Barrier(4), []

    def open_one(n: int) -> None:
        start.wait()
        try:
            open_storage(f"{url}?application_name=worker{n}")  # one storage each, as separate processes have
        except Exception as exc:
            failures.append(exc)

    threads = [threading.Thread(target=open_one, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_the_storage_password_is_in_no_file_and_no_line_of_output(postgres, tmp_path, monkeypatch, capsys):
    url = postgres.create_database("secret")
    path = recipe(tmp_path, search(trials=1), rows=120, epochs=1)
    output = tmp_path / "machine"
    command = ["finetune", "sweep", str(path), "--storage", url, "--output", str(output)]
    monkeypatch.setattr("sys.argv", command)  # what each trial records as its command line
    assert cli(*command[1:]) == 0
    said = capsys.readouterr()
    assert "sweeper:***@" in said.out
    printed = said.out + said.err
    monkeypatch.delenv("PGPASSWORD", raising=False)  # sweep.json keeps no password: whoever reads it gives it
    assert cli("sweep", "report", output) == 2
    said = capsys.readouterr()
    assert "PGPASSWORD" in said.err and "Traceback" not in said.err
    printed += said.out + said.err
    monkeypatch.setenv("PGPASSWORD", postgres.password)  # which the driver reads
    assert cli("sweep", "report", output) == 0
    said = capsys.readouterr()
    assert postgres.password not in printed + said.out + said.err
    run = RunDir(output / "trials" / "trial-0000")
    assert run.status()["state"] == "completed" and (run.path / "report.html").is_file()
    assert "sweeper:***@" in (run.path / "environment.json").read_text()
    assert files_holding(tmp_path, postgres.password) == []
