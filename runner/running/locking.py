"""A recipe's lock (`finetune lock`, `--locked`): written beside the recipe, checked before a run.

What a lock records and how two are compared is runner.recipe.lockfile; this module computes the
current one, checks a recipe against its lock, and keeps the lock in the run directory. It imports
no torch, so `validate --locked` stays fast.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from runner.errors import FinetuneError
from runner.plugins.manager import Plugins, get_plugins
from runner.recipe import lockfile
from runner.recipe.resolved import Recipe
from runner.running.recipes import Say, tell


def current_lock(recipe: Recipe, say: Say = tell, plugins: Plugins | None = None) -> dict[str, Any]:
    """The lock this recipe would get now (the Hub contacted only if it is reachable)."""
    from runner.pipeline.encoding import default_cache_dir
    from runner.toolkit.hub import go_offline_if_unreachable

    note = go_offline_if_unreachable()  # before huggingface_hub loads: it reads HF_HUB_OFFLINE once
    if note:
        say(note, "note")
    plugins = plugins or get_plugins()
    return lockfile.build_lock(recipe, plugins.registry, default_cache_dir(), plugins.packs)


def write_lock(recipe: Recipe, say: Say = tell) -> tuple[Path, dict[str, Any]]:
    """Write the recipe's lock beside it (`recipe.lock` for `recipe.toml`); its path and content."""
    from runner.storage.rundir import atomic_write

    lock = current_lock(recipe, say)
    path = lockfile.lock_path(recipe.source.path)
    atomic_write(path, lockfile.dumps(lock))
    return path, lock


def check_locked(recipe: Recipe, recipe_path: Path, say: Say = tell) -> Path:
    """The lock beside the recipe, after checking that nothing differs from it (a FinetuneError
    naming each difference otherwise)."""
    path = lockfile.lock_path(recipe_path)
    locked = lockfile.read_lock(path, recipe_path)
    differences, notes = lockfile.compare(locked, current_lock(recipe, say))
    for note in notes:
        say(f"note: {note}", "note")
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
