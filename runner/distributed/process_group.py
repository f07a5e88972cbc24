"""Several training processes: who this process is, and the few points where they wait for each other.

A launched run has one process per device, started by torchrun or DeepSpeed's launcher, which set
RANK, WORLD_SIZE and LOCAL_RANK. Rank 0 is the main process: it alone prints progress and writes
the run directory. Data preparation (loading, training the tokenizer, tokenizing) runs on rank 0
first, with the others waiting up to a day instead of a collective timeout; they then read what rank 0 cached
instead of repeating the work, so a long tokenization cannot make them time out (a known failure
of other tools). On a machine that does not share rank 0's cache, its first rank prepares before
the others, which then read its cache. A single process needs none of this: every function here is then a no-op.

Machines wait for each other too, before and after their processes do: on several machines node 0
owns the shared run directory (it creates it, writes the recipe, and its rank 0 writes everything
else); another node waits for node 0's recipe, checks that it is the recipe it resolved itself,
and at the end reads the run's outcome from the status.json rank 0 writes.
"""

from __future__ import annotations

import json
import os
import sys
import time
import tomllib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from runner.errors import FinetuneError, format_key
from runner.storage.rundir import RunDir

T = TypeVar("T")

# How long the other ranks wait for rank 0 to prepare the data. Generous: preparing a large dataset
# can take hours, and rank 0 tells them at once if it fails.
PREPARE_TIMEOUT = timedelta(hours=24)

# How long the machines of a run wait for each other (FINETUNE_JOIN_TIMEOUT overrides it): a node for
# node 0's recipe, then all of them in torchrun's rendezvous. torchrun's own default for the latter.
JOIN_TIMEOUT_S = 600
# How long a node other than 0 waits, after its own workers ended, for rank 0's status.json.
OUTCOME_WAIT_S = 60

_prepare_group = None


class PeerFailed(FinetuneError):
    """Another rank failed; it reports why."""


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init(timeout: int | None = None) -> None:
    """Join the process group (once), before any data is prepared. `timeout`: seconds a collective
    waits for the other processes before it fails (None: PyTorch's 30 minutes)."""
    global _prepare_group
    if world_size() == 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout) if timeout else None)
    if _prepare_group is None:
        _prepare_group = dist.new_group(backend="gloo", timeout=PREPARE_TIMEOUT)


def main_first(work: Callable[[], T]) -> T:
    """Run `work` on rank 0, then on the first rank of every other machine, then on the other ranks
    (which find rank 0's results in the caches and the run directory). A failure stops the other
    ranks with a short message; the rank that failed reports the real error.

    The middle step is for machines that do not share the cache: the first rank of each fills its
    machine's cache before the others read it, instead of every rank writing the same entries."""
    if world_size() == 1:
        return work()
    import torch.distributed as dist

    if is_main():
        try:
            result = work()
        except BaseException:
            dist.broadcast_object_list([False], src=0, group=_prepare_group)
            raise
        dist.broadcast_object_list([True], src=0, group=_prepare_group)
    else:
        done = [None]
        dist.broadcast_object_list(done, src=0, group=_prepare_group)
        if not done[0]:
            raise PeerFailed(f"rank {rank()}: stopping, rank 0 failed while preparing the run")
    leads = local_rank() == 0 and not is_main()  # the first rank of a machine other than rank 0's
    if leads:
        try:
            result = work()
        except BaseException:
            _all_succeeded(False)
            raise
    if not _all_succeeded(True):
        raise PeerFailed(f"rank {rank()}: stopping, a rank on another machine failed while preparing the run")
    return result if is_main() or leads else work()


def _all_succeeded(ok: bool) -> bool:
    """True on every rank when `ok` is true on all of them (waiting as long as preparing may take)."""
    import torch
    import torch.distributed as dist

    value = torch.tensor([1 if ok else 0], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MIN, group=_prepare_group)
    return bool(value.item())


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one (a stop request, a non-finite loss),
    so that all ranks take the same branch and none waits forever on the others."""
    if world_size() == 1:
        return flag
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    """Wait for every rank. Ranks reach it after one of them worked alone (rank 0 writing a
    checkpoint or the model), which may take long: it waits as long as data preparation may, not
    the run's collective timeout, which is for the collectives of the training steps."""
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier(group=_prepare_group)


def finish() -> None:
    """Leave the process group cleanly (torch warns at exit otherwise)."""
    global _prepare_group
    if world_size() == 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _prepare_group = None


# -- machines ------------------------------------------------------------------------------------
def join_timeout() -> int:
    """Seconds the machines of a run wait for each other: FINETUNE_JOIN_TIMEOUT, or JOIN_TIMEOUT_S."""
    value = os.environ.get("FINETUNE_JOIN_TIMEOUT", "").strip()
    if not value:
        return JOIN_TIMEOUT_S
    if not value.isdigit() or int(value) < 1:
        raise FinetuneError(f"FINETUNE_JOIN_TIMEOUT={value!r}: expected a whole number of seconds, at least 1")
    return int(value)


def recipe_differences(theirs: Any, ours: Any, path: tuple = ()) -> list[str]:
    """Where two resolved recipes (as TOML reads them) differ: one `key.path: ...` line each."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        found = []
        for key in [*theirs, *(k for k in ours if k not in theirs)]:
            where = format_key((*path, key))
            if key not in ours:
                found.append(f"{where}: set in node 0's recipe only")
            elif key not in theirs:
                found.append(f"{where}: set in this node's recipe only")
            else:
                found += recipe_differences(theirs[key], ours[key], (*path, key))
        return found
    if isinstance(theirs, list) and isinstance(ours, list) and len(theirs) == len(ours):
        pairs = enumerate(zip(theirs, ours, strict=True))
        return [line for i, (a, b) in pairs for line in recipe_differences(a, b, (*path, i))]
    if theirs == ours:
        return []
    shown = [json.dumps(v, default=str) for v in (theirs, ours)]
    return [f"{format_key(path)}: {shown[0]} in node 0's recipe, {shown[1]} in this node's"]


def join_run_dir(path: Path, resolved: dict, node_rank: int) -> RunDir:
    """The run directory node 0 creates at `path`, once it holds node 0's recipe, equal to `resolved`.

    Nodes start in any order, so this one waits for node 0's recipe (saying so, and no longer than
    join_timeout()). Node 0 starts no worker before every node has met it, so a status.json already
    there belongs to an earlier run; a recipe other than this node's belongs to another run too."""
    run_dir, timeout = RunDir(path), join_timeout()
    deadline = time.monotonic() + timeout
    if not run_dir.recipe.is_file():
        print(f"node {node_rank}: waiting for node 0 to create {path} (up to {timeout} s)", file=sys.stderr)
    while not run_dir.recipe.is_file():
        if time.monotonic() > deadline:
            raise FinetuneError(
                f"node 0 did not create {run_dir.recipe} within {timeout} s",
                hint="start node 0 with the same --output, on a filesystem this machine shares with it "
                "(FINETUNE_JOIN_TIMEOUT sets the wait, in seconds)",
            )
        time.sleep(1)
    state = run_dir.status().get("state")
    if state != "unknown":
        raise FinetuneError(
            f"--output {path} holds another run: its status.json says {state!r}, and node 0 writes one "
            "only after every node has joined",
            hint="start every node with a new --output directory",
        )
    ours = tomllib.loads(tomli_w.dumps(resolved))  # as node 0's file reads back: the same types
    differences = recipe_differences(tomllib.loads(run_dir.recipe.read_text(encoding="utf-8")), ours)
    if differences:
        more = [f"... and {len(differences) - 5} more"] if len(differences) > 5 else []
        raise FinetuneError(
            "\n  ".join(
                [f"node 0's recipe in {run_dir.recipe} is not the one this node resolved:"] + differences[:5] + more
            ),
            hint="run the same recipe, with the same --set options, on every node",
        )
    return run_dir


def status_text(run_dir: RunDir) -> str | None:
    """status.json as it is now, or None."""
    try:
        return (run_dir.path / "status.json").read_text(encoding="utf-8")
    except OSError:
        return None


def exit_code_of(status: dict) -> int | None:
    """The exit code a recorded status stands for; None while the run has not ended."""
    state = status.get("state")
    if state == "completed":  # a model audit that failed leaves a completed run with exit code 3
        return int(status.get("exit_code") or 0)
    if state == "interrupted":
        return 130
    if state == "failed":
        return int(status.get("exit_code") or 1)
    return None


def recorded_outcome(run_dir: RunDir, before: str | None, node_rank: int) -> int | None:
    """On a node other than 0: the exit code rank 0 records in the shared status.json, once it
    replaces `before` (what was there when this node started its workers); None if it does not.

    Rank 0 records it just after the last step all ranks take together, so it can come a moment
    after this node's workers ended (or later, on a filesystem slow to show another machine's
    writes): this waits for it, saying so, up to OUTCOME_WAIT_S."""
    started, said = time.monotonic(), False
    while True:
        text = status_text(run_dir)
        if text is not None and text != before:
            try:
                status = json.loads(text)
            except ValueError:
                status = {}
            code = exit_code_of(status)
            if code is not None:
                print(f"{run_dir.path}: {status['state']} (as node 0 recorded it; exit code {code})")
                return code
        waited = time.monotonic() - started
        if waited > OUTCOME_WAIT_S:
            return None
        if waited > 2 and not said:
            where = run_dir.path / "status.json"
            print(f"node {node_rank}: waiting for node 0 to record the outcome in {where} (up to {OUTCOME_WAIT_S} s)",
                  file=sys.stderr)  # fmt: skip
            said = True
        time.sleep(0.5)
