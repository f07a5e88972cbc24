"""Two machines, as docs/distributed.md starts them: the same `finetune run --nnodes 2` command on
each, only `--node-rank` changed, one shared `--output`. Here both "machines" are this one
(127.0.0.1, one process each, a cache each); they must start in any order, both exit 0, and train
exactly what two processes on one machine train. A node that cannot join says why, with exit code 2."""

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import cli, finetune_subprocess, no_dropout_recipe

from runner.distributed import process_group
from runner.storage.rundir import RunDir


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    return no_dropout_recipe(tmp_path_factory.mktemp("recipe") / "r.toml", rows=120, batch_size=8, eval_every='"epoch"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(recipe: Path, rank: int, port: int, output: Path, log: Path, more=()) -> subprocess.Popen:
    """One machine's command, exactly as the docs give it (with a free port instead of 29500).

    Node 1 has a cache of its own, as another machine would: it tokenizes again, and must train the same."""
    args = ["run", recipe, "--nproc", "1", "--nnodes", "2", "--node-rank", rank, "--master-addr", "127.0.0.1"]
    args += ["--master-port", port, "--output", output, *more]
    env = {**os.environ, "FINETUNE_CACHE": str(log.with_suffix(".cache"))} if rank else None
    with log.open("w") as out:
        command = [*finetune_subprocess(), *map(str, args)]
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_for_text(log: Path, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(encoding="utf-8"):
        assert time.monotonic() < deadline, f"{text!r} not in {log}:\n{log.read_text(encoding='utf-8')}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def one_machine(recipe, tmp_path_factory) -> RunDir:
    """The reference: two processes on one machine."""
    output = tmp_path_factory.mktemp("one-machine") / "run"
    assert cli("run", recipe, "--nproc", "2", "--output", output) == 0
    return RunDir(output)


def start_two_machines(
    recipe: Path, output: Path, logs: dict[int, Path], node_1_first: bool, more=()
) -> dict[int, int]:
    """Both nodes' commands, node 1's first; the exit code of each once both have ended."""
    port = free_port()
    nodes: dict[int, subprocess.Popen] = {}
    try:
        nodes[1] = start_node(recipe, 1, port, output, logs[1], more)
        if node_1_first:  # it waits for node 0's run directory, and says so
            wait_for_text(logs[1], f"node 1: waiting for node 0 to create {output}")
            assert not output.exists()  # node 0 alone creates it
        nodes[0] = start_node(recipe, 0, port, output, logs[0], more)
        return {rank: node.wait(timeout=300) for rank, node in nodes.items()}
    finally:
        for node in nodes.values():
            if node.poll() is None:
                node.kill()  # its launcher, and so its workers, die with it
                node.wait()


def train_losses(run: RunDir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in run.read_metrics_log() if r["split"] == "train" and "loss" in r}


def scores(run: RunDir) -> dict:
    """Final validation and test metrics (the train entry holds timings)."""
    return {split: values for split, values in json.loads(run.metrics.read_text()).items() if split != "train"}


@pytest.mark.slow
# Node 1 first, the order in which it must wait for node 0; the DeepSpeed test below starts both together.
@pytest.mark.parametrize("node_1_first", [True], ids=["node 1 started first"])
def test_two_machines_started_in_any_order_both_exit_0_and_train_what_one_machine_trains(
    recipe, one_machine, tmp_path, node_1_first
):
    output = tmp_path / "shared" / "run"
    logs = {rank: tmp_path / f"node{rank}.log" for rank in (0, 1)}
    codes = start_two_machines(recipe, output, logs, node_1_first)
    text = {rank: log.read_text(encoding="utf-8") for rank, log in logs.items()}
    assert codes == {0: 0, 1: 0}, text
    assert "node 0 of 2: waiting for every machine to meet at 127.0.0.1:" in text[0]
    assert f"{output}: completed (as node 0 recorded it; exit code 0)" in text[1]
    assert (logs[1].with_suffix(".cache") / "encoded").is_dir()  # node 1 tokenized into its own cache

    run = RunDir(output)
    assert run.status()["state"] == "completed"
    assert json.loads(run.environment.read_text())["world_size"] == 2
    ours, reference = train_losses(run), train_losses(one_machine)
    assert len(reference) == 6 and ours == reference  # rank 0 alone logs, every step once
    assert scores(run) == scores(one_machine) and scores(run)["test"]["accuracy"] is not None


@pytest.mark.slow
def test_deepspeed_on_two_machines_starts_without_ssh_and_trains_what_one_machine_trains(recipe, one_machine, tmp_path):
    # The same torchrun rendezvous as DDP: no hostfile, no ssh; each machine runs its own command.
    output = tmp_path / "shared" / "run"
    logs = {rank: tmp_path / f"node{rank}.log" for rank in (0, 1)}
    zero2 = ["--set", 'distributed.engine="deepspeed"', "--set", "distributed.zero_stage=2"]
    codes = start_two_machines(recipe, output, logs, node_1_first=False, more=zero2)
    assert codes == {0: 0, 1: 0}, {rank: log.read_text(encoding="utf-8") for rank, log in logs.items()}
    run = RunDir(output)
    environment = json.loads(run.environment.read_text())
    assert environment["world_size"] == 2 and environment["distributed"]["engine"] == "deepspeed"
    ours, reference = train_losses(run), train_losses(one_machine)
    assert ours.keys() == reference.keys()
    assert all(ours[step] == pytest.approx(reference[step], rel=1e-3) for step in reference)


def node(rank: int, output: Path, *more: str) -> list[str]:
    """The arguments of `finetune run` on node `rank` (no process starts in the tests that use it)."""
    return ["--nproc", "1", "--nnodes", "2", "--node-rank", str(rank), "--master-addr", "127.0.0.1",
            "--master-port", str(free_port()), "--output", str(output), *more]  # fmt: skip


def test_a_node_whose_recipe_differs_from_node_0s_is_refused_naming_the_difference(recipe, tmp_path, capsys):
    from runner import load_recipe

    output = tmp_path / "run"
    output.mkdir()
    RunDir(output).write_recipe(load_recipe(recipe, ["training.learning_rate=1e-3"]).resolved())  # node 0's
    assert cli("run", recipe, *node(1, output)) == 2
    err = capsys.readouterr().err
    assert f"node 0's recipe in {output / 'recipe.resolved.toml'} is not the one this node resolved" in err
    assert "training.learning_rate: 0.001 in node 0's recipe, 0.003 in this node's" in err
    assert sorted(p.name for p in output.iterdir()) == ["recipe.resolved.toml"]  # node 1 wrote nothing


def test_a_node_refuses_a_run_directory_whose_run_has_started(recipe, tmp_path, capsys):
    from runner import load_recipe

    run = RunDir(tmp_path / "run")
    run.write_recipe(load_recipe(recipe).resolved())
    run.set_status("completed")  # node 0 writes a status only once every node has joined: an earlier run
    assert cli("run", recipe, *node(1, run.path)) == 2
    assert f"--output {run.path} holds another run: its status.json says 'completed'" in capsys.readouterr().err


def test_a_node_waiting_for_node_0_says_so_and_gives_up_with_a_clear_message(recipe, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FINETUNE_JOIN_TIMEOUT", "1")
    output = tmp_path / "run"
    assert cli("run", recipe, *node(1, output)) == 2
    err = capsys.readouterr().err
    assert f"node 1: waiting for node 0 to create {output} (up to 1 s)" in err
    assert f"error: node 0 did not create {output / 'recipe.resolved.toml'} within 1 s" in err
    assert not output.exists()


def test_a_bad_join_timeout_is_an_error_before_any_wait(recipe, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FINETUNE_JOIN_TIMEOUT", "ten")
    assert cli("run", recipe, *node(1, tmp_path / "run")) == 2
    assert "FINETUNE_JOIN_TIMEOUT='ten': expected a whole number of seconds" in capsys.readouterr().err


@pytest.mark.slow
def test_node_0_alone_gives_up_on_the_rendezvous_with_a_clear_message(recipe, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("FINETUNE_JOIN_TIMEOUT", "2")
    output = tmp_path / "run"
    assert cli("run", recipe, *node(0, output)) == 2
    err = capfd.readouterr().err
    assert "node 0 of 2: waiting for every machine to meet at 127.0.0.1:" in err
    assert "error: the 2 machines did not meet at 127.0.0.1:" in err and "Traceback" not in err
    status = RunDir(output).status()
    assert status["state"] == "failed" and status["error"] == "the machines did not meet" and status["exit_code"] == 2


def test_a_joining_node_takes_the_outcome_rank_0_records_and_not_the_one_before(tmp_path, capsys, monkeypatch):
    run = RunDir(tmp_path)
    run.set_status("interrupted")  # a resume: the status of the attempt before
    before = process_group.status_text(run)
    writer = threading.Timer(0.3, lambda: run.set_status("completed", exit_code=3, pid=123))
    writer.start()
    assert process_group.recorded_outcome(run, before, node_rank=1) == 3  # a model audit failed
    writer.join()
    assert f"{tmp_path}: completed (as node 0 recorded it; exit code 3)" in capsys.readouterr().out

    monkeypatch.setattr(process_group, "OUTCOME_WAIT_S", 3)
    started = time.monotonic()
    assert process_group.recorded_outcome(run, process_group.status_text(run), node_rank=1) is None
    assert time.monotonic() - started >= 3
    assert "node 1: waiting for node 0 to record the outcome" in capsys.readouterr().err
