"""Resuming a run on another number of processes: the same global batch, said and recorded.

`training.batch_size` is the batch of one process, so a run's global batch is `batch_size x
gradient_accumulation_steps x processes`. A resume on another number of processes keeps
`batch_size` (it is what fits one device) and changes the accumulation so that the product stays
the one the run started with: every optimizer step then takes the same rows as before (the
length-grouped sampler groups by that global batch, and skipping the steps already trained skips
whole global batches), with the same learning-rate schedule. A global batch the new number of
processes cannot divide is refused, naming the numbers of processes that can keep it.

The reference is the run's start (environment.json's `world_size` and the recipe's accumulation,
neither of which a resume rewrites), so that any chain of resumes, 2 -> 1 -> 4, keeps one batch.

What the checkpoints hold is the engine's business: it says how many processes wrote a checkpoint
whose manifest does not (`Engine.checkpoint_world_size`) and makes each checkpoint the resume loads
loadable on the new number (`Engine.prepare_checkpoint`: DeepSpeed converts sharded optimizer states
to a universal checkpoint); the trainer names the checkpoints it loads besides the one resumed from
(`Trainer.resume_checkpoints`: the best one, for a run that ends with its weights).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from runner.components import Engine
from runner.errors import FinetuneError
from runner.recipe.resolved import Recipe
from runner.storage import checkpoints
from runner.storage.rundir import RunDir, read_json, write_json

ACCUMULATION = "gradient_accumulation_steps"


def _plural(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


@dataclass(frozen=True)
class Resize:
    """How a resume on `world_size` processes keeps the run's global batch."""

    started: int  # processes the run started on
    previous: int  # processes that wrote the checkpoint resumed from
    world_size: int  # processes of this resume
    batch_size: int
    accumulation: int  # the recipe's, at the start
    global_batch: int

    @property
    def new_accumulation(self) -> int:
        return self.global_batch // (self.batch_size * self.world_size)

    @property
    def previous_accumulation(self) -> int:
        return max(1, self.global_batch // (self.batch_size * self.previous))

    @property
    def changed(self) -> bool:
        """Whether this resume runs on another number of processes than the checkpoint's."""
        return self.previous != self.world_size

    @property
    def overrides(self) -> list[str]:
        """The `--set` that makes the recipe train this resume's accumulation (none at the start's size)."""
        if self.new_accumulation == self.accumulation:
            return []
        return [f"training.{ACCUMULATION}={self.new_accumulation}"]

    def note(self) -> str:
        """The line a resume prints, e.g. 'resuming on 1 process instead of 2: gradient accumulation
        2 -> 4, global batch 16 unchanged'."""
        return (
            f"resuming on {_plural(self.world_size)} instead of {self.previous}: gradient accumulation "
            f"{self.previous_accumulation} -> {self.new_accumulation}, global batch {self.global_batch} unchanged"
        )


def started_world_size(run_dir: RunDir) -> int | None:
    """The number of processes the run started on (None: it never recorded its environment)."""
    if not run_dir.environment.is_file():
        return None
    return int(read_json(run_dir.environment).get("world_size", 1))


def checkpoint_world_size(checkpoint: Path | None, default: int, engine: Engine) -> int:
    """The processes that wrote `checkpoint`: its manifest says so (older ones: the engine's own
    files, as DeepSpeed's shards; else the run's start)."""
    if checkpoint is None:
        return default
    recorded = checkpoints.written_by(checkpoint)
    if recorded is not None:
        return recorded
    return engine.checkpoint_world_size(checkpoint) or default


def plan(run_dir: RunDir, recipe: Recipe, world_size: int, checkpoint: Path | None, force: bool = False):
    """The Resize of a resume on `world_size` processes from `checkpoint`; None when nothing changes
    or the run cannot tell (no environment.json: it stopped before training started).

    A FinetuneError when the global batch cannot be kept: the trainer has no accumulation to adjust
    (unless `force`: then it trains on with a different global batch), or the global batch is not a
    multiple of `batch_size x world_size`."""
    started = started_world_size(run_dir)
    if started is None:
        return None
    previous = checkpoint_world_size(checkpoint, started, recipe.distributed.create())
    if started == world_size == previous:
        return None
    options = recipe.training.options
    batch, accumulation = getattr(options, "batch_size", None), getattr(options, ACCUMULATION, None)
    if not isinstance(batch, int) or not isinstance(accumulation, int):
        if force:
            return None
        raise FinetuneError(
            f"cannot resume on {_plural(world_size)}: the run started on {started}, and trainer "
            f"'{recipe.training.name}' has no batch_size and {ACCUMULATION} to keep its global batch",
            hint=f"pass --nproc {started}, or --force to resume on {world_size} with another global batch",
        )
    resize = Resize(started, previous, world_size, batch, accumulation, batch * accumulation * started)
    if resize.global_batch % (batch * world_size):
        fits = [n for n in range(1, resize.global_batch // batch + 1) if resize.global_batch % (batch * n) == 0]
        raise FinetuneError(
            f"cannot resume on {_plural(world_size)}: the run's global batch of {resize.global_batch} rows "
            f"(training.batch_size {batch} x {ACCUMULATION} {accumulation} x {_plural(started)}) is not a "
            f"multiple of batch_size {batch} x {world_size} processes, so no gradient accumulation keeps it",
            hint=f"pass --nproc {_either(fits)}: the global batch and the data order stay those of the run",
        )
    return resize


def _either(values: list[int]) -> str:
    shown = [str(v) for v in values[:6]] + (["..."] if len(values) > 6 else [])
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def record(run_dir: RunDir, resize: Resize, checkpoint: Path | None, converted: bool) -> None:
    """Note the change in environment.json (which otherwise describes how the run started), so that
    the run directory says on how many processes each part of the run trained. `converted`: the
    checkpoint is loaded through the engine's conversion (`Engine.prepare_checkpoint`)."""
    if not run_dir.environment.is_file():
        return
    environment = read_json(run_dir.environment)
    environment.setdefault("world_size_changes", []).append(
        {
            "resumed": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "checkpoint": checkpoint.name if checkpoint else None,
            "step": checkpoints.step_of(checkpoint) if checkpoint else 0,
            "world_size": resize.world_size,
            "checkpoint_world_size": resize.previous,
            ACCUMULATION: resize.new_accumulation,
            "global_batch": resize.global_batch,
            # named when DeepSpeed's universal checkpoints were the only conversion; kept, so that
            # run directories read as before
            "deepspeed_universal_checkpoint": converted,
        }
    )
    write_json(run_dir.environment, environment)


def prepare(run_dir: RunDir, recipe: Recipe, world_size: int, checkpoint: Path | None, *, force: bool,
            owner: bool = True, say=print) -> list[str]:  # fmt: skip
    """Ready a resume from `checkpoint` on `world_size` processes; the recipe `--set`s it trains with.

    Says the adjustment, has the engine make the checkpoint loadable on `world_size` processes (and
    every other one the trainer loads, as the best checkpoint a run ends with), and records the
    change. Only the process that owns the run directory (node 0's `finetune`, `owner`) prepares
    and records; the others compute the same overrides."""
    resized = plan(run_dir, recipe, world_size, checkpoint, force)
    if not owner:
        return resized.overrides if resized else []
    if resized is not None and resized.changed:
        say(resized.note())
    elif resized is not None:  # the checkpoint's number of processes, not the start's: say why the recipe's is not used
        say(
            f"on {_plural(world_size)}, as the checkpoint was written (the run started on {resized.started}): "
            f"gradient accumulation {resized.new_accumulation}, global batch {resized.global_batch}"
        )
    converted = False
    if checkpoint is not None:
        engine = recipe.distributed.create()
        converted = engine.prepare_checkpoint(checkpoint, world_size, say)
        for other, why, instead in recipe.training.create().resume_checkpoints(checkpoint):
            if other != checkpoint:
                engine.prepare_checkpoint(other, world_size, say, why, instead)
    if resized is not None and resized.changed:
        record(run_dir, resized, checkpoint, converted)
    return resized.overrides if resized else []
