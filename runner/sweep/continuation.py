"""Where a trial runs on this worker, and what a continued trial starts from.

A trial queued again (interrupted with Ctrl-C, or given up when its worker died) names its run
directory by its place inside the sweep's directory (`trials/trial-0003`), never by a path of the
machine that ran it: whichever worker takes it runs it under its own --output. There it continues
from the newest complete checkpoint of
  1. its directory under this worker's --output (the same worker, or a shared output), else
  2. a copy of the directory the trial last ran in, where this machine reaches that path (another
     process of this machine, a shared file system) and it holds the same trial's settings;
and when neither has a checkpoint, it starts again from step 0 (in the same place).
"""

from __future__ import annotations

import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import FinetuneError
from runner.recipe.keys import parse_key_path
from runner.storage import checkpoints
from runner.storage.rundir import RunDir

COPYING = ".copying"  # a copy in progress: renamed into place when complete
_RECORD_LIMIT = 1 << 20  # JSON records larger than this hold no paths worth rewriting


@dataclass
class Place:
    path: Path  # the run directory on this worker
    resume: bool  # continue from its newest complete checkpoint (else start from step 0)
    note: str = ""  # what the sweep tells about it


def checkpoint_of(run_path: Path) -> Path | None:
    return checkpoints.latest_complete(run_path / "checkpoints") if run_path.is_dir() else None


def place(directory: Path, name: str, settings: dict[str, Any], origin: str | None, continued: bool) -> Place:
    """The run directory `name` (relative to the sweep's `directory`) of a trial with `settings`.
    `origin`: where the trial it continues last ran (a path on the machine that ran it)."""
    own = directory / name
    if continued:
        found = checkpoint_of(own)
        if found is not None:
            return Place(own, True, f"continuing {name} from {found.name}")
        source = Path(origin) if origin else None
        if source is not None and source.resolve() != own.resolve() and _same_trial(source, settings):
            found = checkpoint_of(source)
            if found is not None:
                relocate(source, own)
                return Place(own, True, f"continuing {name} from {found.name}, copied from {source}")
    had = own.exists()
    clear_attempt(own, settings)
    note = f"{name} left no checkpoint this worker reaches: it starts again from step 0" if continued or had else ""
    return Place(own, False, note)


def _settings_of(run_path: Path) -> dict | None:
    try:
        return tomllib.loads(RunDir(run_path).recipe.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _same_trial(run_path: Path, settings: dict[str, Any]) -> bool:
    """Whether a run directory ran these settings: its resolved recipe holds each of them."""
    recipe = _settings_of(run_path)
    if recipe is None:
        return False
    for key, value in settings.items():
        node: Any = recipe
        for part in parse_key_path(key) or ():
            ok = isinstance(node, dict) and part in node or isinstance(node, list) and isinstance(part, int)
            if not ok or (isinstance(node, list) and part >= len(node)):
                return False
            node = node[part]
        if node != value:
            return False
    return True


def clear_attempt(run_path: Path, settings: dict[str, Any]) -> None:
    """Remove what an earlier attempt of this trial left (it died before a checkpoint): the trial runs
    there from step 0. A directory holding something else is refused, never removed."""
    if not run_path.exists():
        return
    recorded = RunDir(run_path).recipe.is_file()
    if RunDir(run_path).status().get("state") == "completed" or (recorded and not _same_trial(run_path, settings)):
        raise FinetuneError(
            f"{run_path} already holds another run: the trial that should run there would overwrite it",
            hint="move it away, or give the sweep another --output",
        )
    shutil.rmtree(run_path)


def relocate(source: Path, target: Path) -> None:
    """Copy a run directory to `target`; its records that name `source` (a checkpoint's note of the
    best checkpoint) name `target` instead, and the checkpoints' manifests are made anew for them."""
    partial = target.with_name(target.name + COPYING)
    shutil.rmtree(partial, ignore_errors=True)
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, partial, symlinks=True)
    old, new = str(source.resolve()), str(target.resolve())
    changed: set[Path] = set()
    for path in partial.rglob("*.json"):
        if path.name == checkpoints.MANIFEST or not path.is_file() or path.stat().st_size > _RECORD_LIMIT:
            continue
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        if old in text:
            path.write_text(text.replace(old, new), encoding="utf-8", errors="surrogateescape")
            changed.add(path)
    for checkpoint in checkpoints.checkpoints(partial / "checkpoints"):
        if checkpoints.is_complete(checkpoint) and any(checkpoint in p.parents for p in changed):
            checkpoints.mark_complete(checkpoint, checkpoints.written_by(checkpoint))
    copied = RunDir(partial)
    if copied.status().get("pid"):  # the process that ran the origin: nothing runs the copy
        copied.set_status(copied.status()["state"], pid=None)
    partial.rename(target)
