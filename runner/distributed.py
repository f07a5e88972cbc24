"""Several training processes: who this process is, and the few points where they wait for each other.

A launched run has one process per device, started by torchrun or DeepSpeed's launcher, which set
RANK, WORLD_SIZE and LOCAL_RANK. Rank 0 is the main process: it alone prints progress and writes
the run directory. Data preparation (loading, training the tokenizer, tokenizing) runs on rank 0
first, with the others waiting up to a day instead of a collective timeout; they then read what rank 0 cached
instead of repeating the work, so a long tokenization cannot make them time out (a known failure
of other tools). A single process needs none of this: every function here is then a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from runner.errors import FinetuneError

T = TypeVar("T")

# How long the other ranks wait for rank 0 to prepare the data. Generous: preparing a large dataset
# can take hours, and rank 0 tells them at once if it fails.
PREPARE_TIMEOUT = timedelta(hours=24)

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


def init() -> None:
    """Join the process group (once), before any data is prepared."""
    global _prepare_group
    if world_size() == 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if _prepare_group is None:
        _prepare_group = dist.new_group(backend="gloo", timeout=PREPARE_TIMEOUT)


def main_first(work: Callable[[], T]) -> T:
    """Run `work` on rank 0, then on the other ranks (which find rank 0's results in the caches
    and the run directory). A failure on rank 0 stops the others with a short message; rank 0
    reports the real error."""
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
        return result
    done = [None]
    dist.broadcast_object_list(done, src=0, group=_prepare_group)
    if not done[0]:
        raise PeerFailed(f"rank {rank()}: stopping, rank 0 failed while preparing the run")
    return work()


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
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


def finish() -> None:
    """Leave the process group cleanly (torch warns at exit otherwise)."""
    global _prepare_group
    if world_size() == 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _prepare_group = None
