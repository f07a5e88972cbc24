"""DeepSpeed checkpoints resumed on another number of processes, through universal checkpoints.

A ZeRO checkpoint holds each rank's slice of the optimizer states (stage 1), and of the gradients'
and weights' flat partitions (stages 2 and 3), cut for the number of processes that wrote it:
loading it on another number would hand every rank the wrong slice. DeepSpeed's answer is the
universal checkpoint (`deepspeed.checkpoint.ds_to_universal`): every parameter's fp32 weights and
Adam moments, whole, one folder each, which any number of processes can slice again when the
engine loads it with `checkpoint.load_universal`.

`prepare` converts a checkpoint written by another number of processes, once, inside the
checkpoint (`global_stepN_universal/` and the `latest_universal` file that names it) and then
writes the checkpoint's manifest again, so that the converted files are verified like the rest:
the DeepSpeed engine's `prepare_checkpoint`, which `finetune resume` calls before any process
starts. `universal_load` is the config the trainer loads such a checkpoint with (`load_universal`
on): the engine's `trainer_settings` for that checkpoint.

A run that keeps its best evaluation (trainer `hf`'s `keep_best`) ends by loading the best
checkpoint's weights, which may be one written before the resize, by the other number of
processes: the trainer names it (`Trainer.resume_checkpoints`), and the resume converts it too.
One written after the resize is loaded as DeepSpeed wrote it: the trainer asks per checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from argparse import Namespace
from pathlib import Path

from runner import (
    CHECKPOINT_MANIFEST,
    FinetuneError,
    checkpoint_is_complete,
    checkpoint_written_by,
    clip,
    mark_checkpoint_complete,
)

LATEST = "latest_universal"
_SHARD = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


def _zero_folder(checkpoint: Path) -> Path | None:
    """The checkpoint's DeepSpeed tag folder (`global_stepN`, named by its `latest` file)."""
    latest = checkpoint / "latest"
    if latest.is_file():
        folder = checkpoint / latest.read_text(encoding="utf-8").strip()
        return folder if folder.is_dir() else None
    found = [p for p in checkpoint.glob("global_step*") if p.is_dir() and not p.name.endswith("_universal")]
    return found[0] if len(found) == 1 else None


def shard_count(checkpoint: Path) -> int | None:
    """How many data-parallel ranks wrote the checkpoint's ZeRO optimizer shards (None: it has none,
    as a DDP checkpoint or one of ZeRO stage 0, whose optimizer states are whole)."""
    folder = _zero_folder(checkpoint)
    if folder is None:
        return None
    ranks = {int(m.group(1)) for p in folder.iterdir() if (m := _SHARD.match(p.name))}
    return len(ranks) or None


def has_universal(checkpoint: Path) -> bool:
    """Whether `prepare` completed a universal conversion of this checkpoint (its manifest lists it)."""
    if not (checkpoint / LATEST).is_file() or not checkpoint_is_complete(checkpoint):
        return False
    try:
        return LATEST in json.loads((checkpoint / CHECKPOINT_MANIFEST).read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        return False


def prepare(
    checkpoint: Path,
    world_size: int,
    zero_stage: int,
    offload: tuple[str, str],
    say=print,
    role: str = "",
    instead: str = "",
) -> bool:
    """Make `checkpoint` loadable on `world_size` processes; True when it is loaded as universal.
    `role` says why a checkpoint other than the one resumed from is needed (in what is printed), and
    `instead` the setting that avoids loading it (in the hint when it cannot be converted).

    Nothing to do when the checkpoint has no ZeRO shards, or as many as there are processes. A
    FinetuneError (before any process starts) when the conversion is not possible, naming why."""
    shards = shard_count(checkpoint)
    if shards is None or shards == world_size:
        return False
    name = f"{checkpoint.name} ({role})" if role else checkpoint.name
    if "nvme" in offload:
        raise FinetuneError(
            f"cannot resume {name} on {world_size} processes: it was written by {shards} under ZeRO-"
            f"{zero_stage} with NVMe offload, whose optimizer states lie in each rank's own swap files, which "
            "DeepSpeed's universal checkpoint conversion does not read",
            hint=f"resume with --nproc {shards}" + (f", or {instead}" if instead else ""),
        )
    if has_universal(checkpoint):
        say(f"{name}: using its universal checkpoint (ZeRO-{zero_stage}, converted from {shards} shards)")
        return True
    folder = _zero_folder(checkpoint)
    assert folder is not None  # shard_count found shards in it
    output = folder.with_name(f"{folder.name}_universal")
    shutil.rmtree(output, ignore_errors=True)  # a conversion cut off before its manifest
    (checkpoint / LATEST).unlink(missing_ok=True)
    say(
        f"{name}: converting ZeRO-{zero_stage} optimizer shards of {shards} processes to a DeepSpeed "
        f"universal checkpoint, for {world_size}"
    )
    _convert(folder, output, zero_stage)
    # the manifest, last, now lists the universal files too; the checkpoint was still written by `shards`
    mark_checkpoint_complete(checkpoint, checkpoint_written_by(checkpoint) or shards)
    return True


def universal_load(config: dict, checkpoint: Path | None, processes: int) -> dict:
    """The DeepSpeed `config` for loading `checkpoint` on `processes` processes.

    ZeRO optimizer shards are cut for the number of processes that wrote them; on another number
    each rank would load another's slice. `finetune resume --nproc M` converts such a checkpoint to
    a universal one first (`prepare`), which DeepSpeed loads on any number of processes when
    `checkpoint.load_universal` is on; without that conversion, refuse."""
    shards = shard_count(checkpoint) if checkpoint is not None else None
    if not shards or shards == processes:
        return config
    if not (checkpoint / LATEST).is_file():
        raise FinetuneError(
            f"{checkpoint} holds the ZeRO shards of {shards} processes and no universal checkpoint that "
            f"{processes} can load: each process would load another's slice",
            hint=f"`finetune resume RUN --nproc {processes}` converts it to a DeepSpeed universal checkpoint first",
        )
    return {**config, "checkpoint": {**config.get("checkpoint", {}), "load_universal": True}}


def _convert(folder: Path, output: Path, zero_stage: int) -> None:
    """Run DeepSpeed's ds_to_universal on one tag folder, its chatter kept unless it fails."""
    from plugins.engines._quiet import name_cpu_accelerator

    name_cpu_accelerator()  # else importing DeepSpeed warns that it guessed the CPU
    try:
        from deepspeed.checkpoint import ds_to_universal
    except ImportError as exc:
        raise FinetuneError(f"resuming a DeepSpeed checkpoint needs DeepSpeed installed ({exc})") from None
    workers = max(1, min(4, (os.cpu_count() or 1) // 2))
    args = Namespace(
        input_folder=str(folder),
        output_folder=str(output),
        num_extract_workers=workers,
        num_merge_workers=max(1, workers // 2),
        keep_temp_folder=False,
        strict=True,
        # transformers' models carry no `universal_checkpoint_info` (it describes tensor and pipeline
        # parallel layouts); for plain data parallelism the version marker is all there is to add.
        inject_missing_state=True,
    )
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            ds_to_universal.main(args)
    except Exception as exc:  # DeepSpeed raises assertions, KeyError, NotImplementedError...
        shutil.rmtree(output, ignore_errors=True)
        (folder.parent / LATEST).unlink(missing_ok=True)
        tail = " ".join(chatter.getvalue().strip().splitlines()[-3:])
        raise FinetuneError(
            f"cannot convert {folder} (ZeRO-{zero_stage}) to a DeepSpeed universal checkpoint: "
            f"{type(exc).__name__}: {clip(str(exc))}" + (f" ({clip(tail)})" if tail else ""),
            hint=f"resume on the number of processes that wrote it (--nproc {shard_count(folder.parent)})",
        ) from exc
    if (folder.parent / LATEST).read_text(encoding="utf-8").strip() != output.name:
        raise FinetuneError(f"DeepSpeed's conversion of {folder} did not name {output.name} in {LATEST}")
