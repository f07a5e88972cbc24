"""Starting a run on several processes: checks first, then torchrun or DeepSpeed's launcher.

`finetune run recipe.toml --nproc N` (and `resume`) starts N worker processes on this machine with
torchrun (`torch.distributed.run`); `--nnodes/--node-rank/--master-addr` spread them over several
machines, each running the same command; `--hostfile` hands the launch to DeepSpeed's launcher,
which starts every machine's processes over ssh (for any engine: the hostfile chooses it, it runs as
a command and sets the environment torchrun sets). Every worker runs `finetune worker RUN_DIR`: it
reads the recipe the launching process wrote into the run directory, so all ranks train exactly
the same recipe. Everything that can be checked before a process starts is checked here. The engine
is asked, never named: whether one process needs the launcher too, the environment its library
needs, and its own checks.

On several machines node 0 owns the shared run directory; the other nodes join it
(`distributed.join_run_dir`) and take the run's outcome from what rank 0 records there.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from runner.distributed import resize
from runner.distributed.process_group import exit_code_of, join_timeout, recorded_outcome, status_text
from runner.errors import FinetuneError
from runner.recipe.resolved import Recipe
from runner.storage import checkpoints
from runner.storage.rundir import RunDir

# How long the workers may take to save a checkpoint after being asked to stop.
SAVE_TIMEOUT_S = 30 * 60
# The torchrun process's exit code when the machines did not meet; it has printed why.
NOT_MET = 75

# As DeepSpeed's launcher reads a hostfile line ('slots=' without spaces); inline comments are ours.
_HOST_LINE = re.compile(r"^(?P<host>[A-Za-z0-9_.:\-\[\]]+)\s+slots=(?P<slots>\d+)$")


def parse_hostfile(path: Path) -> dict[str, int]:
    """DeepSpeed's hostfile format, `HOST slots=N` a line, `#` comments; errors name the line.

    A host may appear once: DeepSpeed's launcher keys machines by name (and refuses a second line
    after the processes started), so two lines for one name can never mean two machines."""
    if not path.is_file():
        raise FinetuneError(f"--hostfile {path}: no such file")
    hosts: dict[str, int] = {}
    first_line: dict[str, int] = {}
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _HOST_LINE.match(line)
        if match is None:
            raise FinetuneError(f"{path}:{n}: expected 'HOSTNAME slots=N' (got {raw.strip()!r})")
        host, slots = match["host"], int(match["slots"])
        if slots < 1:
            raise FinetuneError(f"{path}:{n}: slots must be at least 1")
        if host in hosts:
            raise FinetuneError(
                f"{path}:{n}: host {host!r} is listed twice (first on line {first_line[host]}): DeepSpeed's "
                "launcher knows a machine by its name, so two lines cannot mean two machines",
                hint=f"write one line with all its processes, '{host} slots={hosts[host] + slots}'; to try "
                "several nodes on one machine, start `finetune run --nnodes N --node-rank I` once per node",
            )
        hosts[host], first_line[host] = slots, n
    if not hosts:
        raise FinetuneError(f"{path}: no hosts", hint="one line per machine: HOSTNAME slots=N")
    return hosts


@dataclass
class Launch:
    """How many processes, where; from the command line of `run` or `resume`."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = 29500
    hostfile: Path | None = None

    def __post_init__(self) -> None:
        self.hosts = parse_hostfile(self.hostfile) if self.hostfile else None  # slots by host

    @classmethod
    def from_args(cls, args) -> Launch:
        return cls(args.nproc, args.nnodes, args.node_rank, args.master_addr, args.master_port, args.hostfile)

    @property
    def joins(self) -> bool:
        """Whether this node joins a run directory that node 0 owns (creates and writes)."""
        return self.nnodes > 1 and self.node_rank > 0 and not self.hostfile

    def world_size(self) -> int:
        """Processes in all: DeepSpeed's `--num_gpus` (passed for `--nproc` > 1) replaces every host's slots."""
        if self.hosts:
            return self.nproc * len(self.hosts) if self.nproc > 1 else sum(self.hosts.values())
        return self.nproc * self.nnodes

    def needed(self, recipe: Recipe) -> bool:
        """Whether worker processes are started; a single-process run trains in this process unless
        its engine needs the launcher's environment even then (`Engine.needs_launcher`)."""
        return self.world_size() > 1 or recipe.distributed.cls.needs_launcher

    def check(self, recipe: Recipe, output_given: bool) -> None:
        """Everything that would otherwise fail after the processes started (or hang them)."""
        if self.nproc < 1 or self.nnodes < 1:
            raise FinetuneError("--nproc and --nnodes must be at least 1")
        if self.hostfile and self.nnodes > 1:
            raise FinetuneError("give --hostfile or --nnodes, not both", hint="the hostfile lists the machines")
        if self.nnodes > 1:
            if not self.master_addr:
                raise FinetuneError("--nnodes > 1 needs --master-addr, the address of the machine with --node-rank 0")
            if not 0 <= self.node_rank < self.nnodes:
                raise FinetuneError(f"--node-rank must be between 0 and {self.nnodes - 1}")
            join_timeout()  # a bad FINETUNE_JOIN_TIMEOUT is an error now, not after the wait
        if (self.nnodes > 1 or self.hostfile) and not output_given:
            raise FinetuneError(
                "a run on several machines needs --output DIR on a filesystem every machine shares",
                hint="checkpoints are written by every rank, and every machine must name the same run directory",
            )
        self._check_devices()
        engine = recipe.distributed.create()
        # before the engine's library is imported, here (check_launch) or in the workers, which inherit it
        for key, value in engine.launch_environment().items():
            os.environ.setdefault(key, value)  # the user's own setting wins
        engine.check_launch(self.world_size())

    def _check_devices(self) -> None:
        import torch

        if torch.cuda.is_available():
            have, what = torch.cuda.device_count(), "GPUs"
        else:
            have, what = os.cpu_count() or 1, "CPU cores"
        if self.nproc > have:
            raise FinetuneError(
                f"--nproc {self.nproc}: this machine has only {have} {what}",
                hint=f"use --nproc {have} or fewer (one process per device)",
            )

    def check_resume(self, run_dir: RunDir, recipe: Recipe, force: bool) -> None:
        """A resume on another number of processes keeps the run's global batch by adjusting the
        gradient accumulation (runner.distributed.resize); when no accumulation can, it is refused
        here, before the checkpoints or the metrics are touched."""
        resize.plan(run_dir, recipe, self.world_size(), None, force)

    # -- starting the processes ------------------------------------------------------------------
    def command(self, worker_argv: list[str]) -> list[str]:
        entry = ["runner.cli", *worker_argv]
        if self.hostfile:
            ds = [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(self.hostfile)]
            ds += ["--master_port", str(self.master_port)]
            if self.master_addr:
                ds += ["--master_addr", self.master_addr]
            if self.nproc > 1:
                ds += ["--num_gpus", str(self.nproc)]
            return [*ds, "--module", *entry]
        torchrun = [sys.executable, "-m", "runner.distributed.launch", f"--nproc-per-node={self.nproc}"]
        if self.nnodes > 1:
            torchrun += [f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank}"]
            torchrun += [f"--master-addr={self.master_addr}", f"--master-port={self.master_port}"]
            torchrun += [f"--rdzv-conf=timeout={join_timeout()}"]  # the wait for the other machines
        else:
            torchrun += ["--standalone"]  # a free port of its own: two local runs do not collide
        return [*torchrun, "-m", *entry]

    def start(self, worker_argv: list[str], run_dir: RunDir) -> int:
        """Start the workers and wait; the exit code is the one rank 0 recorded in the run directory.

        The launcher runs in a session of its own, so that Ctrl-C in the terminal reaches this
        process only; it passes one SIGTERM on to the launcher, which gives it to every worker
        once: each finishes its step, the ranks agree to stop, and a checkpoint is saved."""
        before = status_text(run_dir) if self.joins else None  # a joining node waits for rank 0 to replace it
        if self.nnodes > 1:
            where = f"{self.master_addr}:{self.master_port} (up to {join_timeout()} s)"
            progress = "; node 0 shows the progress" if self.joins else ""
            print(f"node {self.node_rank} of {self.nnodes}: waiting for every machine to meet at {where}{progress}",
                  file=sys.stderr)  # fmt: skip
        code, stops = self._run(worker_argv)
        if self.joins:  # rank 0, on node 0, records the outcome; this node's workers say what they can
            if code == NOT_MET or stops > 1:  # no worker started (the launcher said why); a second Ctrl-C
                return 2 if code == NOT_MET else 130
            recorded = recorded_outcome(run_dir, before, self.node_rank)
            if recorded is None:
                print(f"warning: node 0 recorded no outcome in {run_dir.path}; this node's workers ended with "
                      f"exit code {code}", file=sys.stderr)  # fmt: skip
            return code if recorded is None else recorded
        status = run_dir.status()
        state = status.get("state")
        if state == "running" and stops > 1:  # a second Ctrl-C: stopped at once, as a single process would
            last = checkpoints.latest_complete(run_dir.checkpoints)
            run_dir.set_status("interrupted", checkpoint=str(last) if last else None)
            return 130
        if state == "running":  # a worker other than rank 0 died, or rank 0 was killed: say so
            run_dir.set_status("failed", error=f"a worker process failed (launcher exit code {code})", exit_code=1)
            return 1
        if state == "unknown" and stops:  # stopped before any worker started
            run_dir.set_status("interrupted", checkpoint=None)
            return 130
        if state == "unknown":  # rank 0 never started the run: the machines did not meet, or a worker failed early
            error = "the machines did not meet" if code == NOT_MET else f"no worker started (exit code {code})"
            code = 2 if code == NOT_MET else code or 1
            run_dir.set_status("failed", error=error, exit_code=code)
            return code
        recorded = exit_code_of(status)
        return 1 if recorded is None else recorded

    def _run(self, worker_argv: list[str]) -> tuple[int, int]:
        """Run the launcher to its end, passing Ctrl-C on; its exit code and the number of stops asked."""
        env = dict(os.environ)
        # torchrun would set 1 and warn about it; split the cores between the local processes instead
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, self.nproc))))
        process = subprocess.Popen(
            self.command(worker_argv), env=env, start_new_session=True, preexec_fn=stop_with_parent
        )
        stops = 0

        def forward(signum, frame):
            nonlocal stops
            stops += 1
            if stops == 1:
                process.send_signal(signal.SIGTERM)
            else:  # a second Ctrl-C: stop at once
                os.killpg(process.pid, signal.SIGKILL)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = process.wait()
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
        return (code if 0 <= code < 256 else 1), stops


def stop_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have this process sent `sig` when its parent dies (even by kill -9); Linux only.

    The launcher takes SIGTERM when `finetune` dies, so that the workers save a checkpoint and stop
    instead of training on unwatched. A worker needs SIGKILL from it to end with a launcher that a
    second Ctrl-C killed: torchrun starts each worker in a session of its own, out of that kill's reach."""
    if sys.platform == "linux":
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)


def _worker_exit_code(failures: dict) -> int:
    """The exit code of the lowest-ranked worker that failed (1 for one a signal ended)."""
    code = failures[min(failures)].exitcode if failures else 1
    return code if 0 < code < 256 else 1


def _torchrun(argv: list[str]) -> int:
    """torchrun, minus its own report of a failed worker: the worker has said what went wrong."""
    # torchrun's loggers take their level from LOGLEVEL; its warnings repeat what the workers say
    os.environ.setdefault("LOGLEVEL", "ERROR")
    # After passing a stop on, torchrun kills the workers 30 s later by default: too soon for a large
    # model's checkpoint. A second Ctrl-C still ends the launcher at once.
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SAVE_TIMEOUT_S))
    # The launcher's C++ log repeats a failed rendezvous with stack dumps, before the one message
    # below; it is read once, as torch loads: the workers, started later, keep their own level.
    cpp_log_level = os.environ.get("TORCH_CPP_LOG_LEVEL")
    os.environ["TORCH_CPP_LOG_LEVEL"] = "FATAL"
    import torch  # noqa: F401

    if cpp_log_level is None:
        del os.environ["TORCH_CPP_LOG_LEVEL"]
    else:
        os.environ["TORCH_CPP_LOG_LEVEL"] = cpp_log_level
    from torch.distributed import DistError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(argv)
    try:
        run(args)
    except ChildFailedError as exc:
        return _worker_exit_code(exc.failures)
    except SignalException:  # asked to stop: the workers saved a checkpoint and say so
        return 130
    except DistError as exc:  # the rendezvous: the workers never started
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        error = FinetuneError(
            f"the {args.nnodes} machines did not meet at {args.master_addr}:{args.master_port} ({first})",
            hint="start every node with the same --nnodes, --master-addr and --master-port, within "
            "FINETUNE_JOIN_TIMEOUT seconds of each other; node 0 must be reachable at that address",
        )
        print(f"error: {error.render()}", file=sys.stderr)
        return NOT_MET
    return 0


if __name__ == "__main__":
    sys.exit(_torchrun(sys.argv[1:]))
