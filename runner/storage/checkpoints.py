"""Checkpoints that are either complete or ignored.

A trainer writes `checkpoint-N/` however it likes; then `mark_complete` flushes every file to disk
and writes a manifest (sizes and SHA-256 of each file) last. Resume only ever considers
checkpoints with a manifest, and verifies the files against it before loading anything, so a
checkpoint cut off by a crash is skipped and a damaged file is named instead of loaded.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from runner.errors import FinetuneError, clip
from runner.storage.rundir import fsync_dir, read_json, write_json

MANIFEST = "finetune-checkpoint.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def step_of(path: Path) -> int | None:
    m = _NAME.match(path.name)
    return int(m.group(1)) if m else None


def _hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
        os.fsync(f.fileno())
    return h.hexdigest()


def mark_complete(checkpoint: Path, world_size: int | None = None) -> None:
    """Flush a fully written checkpoint to disk and record its manifest, last.

    The manifest also records how many processes wrote the checkpoint (default: WORLD_SIZE, which
    torchrun and DeepSpeed's launcher set in every worker), so that a resume on another number can
    tell which accumulation and which optimizer shards it continues from. Whoever marks a
    checkpoint again after adding files to it (a universal conversion) passes the number first
    recorded."""
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    files = {}
    for path in sorted(checkpoint.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            rel = path.relative_to(checkpoint).as_posix()
            files[rel] = {"size": path.stat().st_size, "sha256": _hash(path)}
    for directory in {p.parent for p in checkpoint.rglob("*")} | {checkpoint}:
        fsync_dir(directory)
    write_json(checkpoint / MANIFEST, {"step": step_of(checkpoint), "files": files, "world_size": world_size})


def written_by(checkpoint: Path) -> int | None:
    """The number of processes that wrote a complete checkpoint, as its manifest records (None:
    no manifest, or one written before manifests recorded it)."""
    try:
        value = read_json(checkpoint / MANIFEST).get("world_size")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / MANIFEST).is_file()


def _manifest_files(checkpoint: Path) -> dict[str, dict]:
    """The manifest's files with their size and checksum; FinetuneError naming the manifest when it
    cannot be read or does not have the shape `mark_complete` writes."""
    where = checkpoint / MANIFEST
    try:
        manifest = read_json(where)
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested thousands deep
        raise FinetuneError(
            f"checkpoint {checkpoint} is damaged: its manifest {where} cannot be read ({clip(str(exc))})",
            hint="resume from an earlier checkpoint with --checkpoint",
        ) from exc
    files = manifest.get("files") if isinstance(manifest, dict) else None
    problem = None
    if not isinstance(files, dict) or not files:
        problem = 'it has no "files" table of the checkpoint\'s files'
    else:
        for rel, expected in files.items():
            if (
                not isinstance(expected, dict)
                or not isinstance(expected.get("size"), int)
                or not isinstance(expected.get("sha256"), str)
                or Path(rel).is_absolute()
                or ".." in Path(rel).parts
            ):
                problem = f"its entry for {clip(rel)!r} is not a file inside the checkpoint with a size and sha256"
                break
    if problem:
        raise FinetuneError(
            f"checkpoint {checkpoint} is damaged: {where} is not a checkpoint manifest ({problem})",
            hint="resume from an earlier checkpoint with --checkpoint",
        )
    return files


def verify(checkpoint: Path) -> None:
    """Raise FinetuneError naming the first file that is missing, truncated or altered, or a
    manifest that is unreadable or malformed."""
    for rel, expected in _manifest_files(checkpoint).items():
        path = checkpoint / rel
        if not path.is_file():
            raise FinetuneError(f"checkpoint {checkpoint} is damaged: {path} is missing")
        size = path.stat().st_size
        if size != expected["size"]:
            raise FinetuneError(
                f"checkpoint {checkpoint} is damaged: {path} has {size} bytes, {expected['size']} were written",
                hint="resume from an earlier checkpoint with --checkpoint",
            )
        if _hash(path) != expected["sha256"]:
            raise FinetuneError(
                f"checkpoint {checkpoint} is damaged: {path} does not match the checksum written with it",
                hint="resume from an earlier checkpoint with --checkpoint",
            )


def checkpoints(directory: Path) -> list[Path]:
    """All checkpoint directories, newest step first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=step_of, reverse=True)


def latest_complete(directory: Path) -> Path | None:
    for checkpoint in checkpoints(directory):
        if is_complete(checkpoint):
            return checkpoint
    return None


def resume_point(directory: Path, name: str | None = None) -> tuple[Path | None, list[str]]:
    """The checkpoint a resume starts from: `name`, or the newest complete one; verified.

    Checkpoints without a manifest (cut off by a crash) and those after the chosen one are removed:
    the resumed run writes them again. Returns the checkpoint (None: start from step 0) and notes.
    """
    if name is not None:
        chosen = directory / name
        if not chosen.is_dir():
            found = ", ".join(c.name for c in checkpoints(directory)) or "none"
            raise FinetuneError(f"no checkpoint {chosen}", hint=f"checkpoints: {found}")
        if not is_complete(chosen):
            raise FinetuneError(f"{chosen} is incomplete (it has no {MANIFEST})")
    else:
        chosen = latest_complete(directory)
    if chosen is not None:
        verify(chosen)
    notes = []
    for checkpoint in checkpoints(directory):
        if not is_complete(checkpoint):
            notes.append(f"removed incomplete checkpoint {checkpoint.name}")
        elif chosen is None or step_of(checkpoint) > step_of(chosen):
            notes.append(f"removed {checkpoint.name}, after the one resumed from")
        else:
            continue
        shutil.rmtree(checkpoint, ignore_errors=True)
    return chosen, notes


def rotate(directory: Path, keep: int, protect: Path | None = None) -> None:
    """Keep the newest `keep` complete checkpoints (and `protect`, the best one); delete the rest."""
    complete = [c for c in checkpoints(directory) if is_complete(c)]
    for checkpoint in complete[keep:]:
        if protect is not None and checkpoint.resolve() == protect.resolve():
            continue
        shutil.rmtree(checkpoint, ignore_errors=True)
