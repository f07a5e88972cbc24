"""`finetune lock RECIPE` and the `--locked` check of `run` and `validate`.

The lock itself (what it records, how two are compared) is runner.recipe.lockfile; this module
reads and writes it for the commands, and imports no torch, so `validate --locked` stays fast.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from runner.errors import FinetuneError
from runner.plugins.manager import get_plugins
from runner.recipe import lockfile
from runner.recipe.resolved import Recipe


def _current(recipe: Recipe) -> dict[str, Any]:
    """The lock this recipe would get now (the Hub contacted only if it is reachable)."""
    from runner.pipeline.encoding import default_cache_dir
    from runner.toolkit.hub import go_offline_if_unreachable

    note = go_offline_if_unreachable()  # before huggingface_hub loads: it reads HF_HUB_OFFLINE once
    if note:
        print(note, file=sys.stderr)
    plugins = get_plugins()
    return lockfile.build_lock(recipe, plugins.registry, default_cache_dir(), plugins.packs)


def cmd_lock(args) -> int:
    from runner.cli.commands import load_and_validate
    from runner.storage.rundir import atomic_write

    recipe = load_and_validate(args.recipe, args.overrides)
    lock = _current(recipe)
    path = lockfile.lock_path(args.recipe)
    atomic_write(path, lockfile.dumps(lock))
    entries = lockfile.flatten(lock["inputs"])
    unresolved = {key: value for key, value in entries.items() if lockfile.is_unresolved(value)}
    pinned = sum(key.endswith(".revision") for key in entries) - len(unresolved)
    hashed = sum("sha256" in key or ".files[" in key for key in entries)
    print(f"wrote {path}: {pinned} Hub revision(s) pinned, {hashed} hash(es), {len(lock['versions'])} distribution(s)")
    for key, value in unresolved.items():
        hub_id = entries.get(key.removesuffix(".revision") + ".hub", "")
        print(f"  {key.removesuffix('.revision')}: '{hub_id}' {value}: lock again with the Hub reachable to pin it")
    return 0


def check_locked(args, recipe: Recipe, recipe_path: Path) -> Path | None:
    """With `--locked`: the lock beside the recipe, after checking that nothing differs from it
    (a FinetuneError naming each difference otherwise); None without `--locked`."""
    if not getattr(args, "locked", False):
        return None
    path = lockfile.lock_path(recipe_path)
    locked = lockfile.read_lock(path, recipe_path)
    differences, notes = lockfile.compare(locked, _current(recipe))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if differences:
        raise lockfile.mismatch_error(path, recipe_path, locked, differences)
    return path


def keep_lock(lock: Path | None, run_dir: Path) -> None:
    """Copy the lock a run was checked against into its run directory: with recipe.resolved.toml,
    it is what reproduces the run."""
    if lock is None:
        return
    try:
        shutil.copyfile(lock, Path(run_dir) / "recipe.lock")
    except OSError as exc:
        raise FinetuneError(f"cannot copy {lock} into {run_dir}: {exc.strerror or exc}") from exc
