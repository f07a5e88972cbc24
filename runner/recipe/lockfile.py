"""Recipe locks: what a recipe resolved to, so that a colleague can run exactly the same thing.

`finetune lock recipe.toml` writes `recipe.lock` (JSON) beside the recipe. It records:

- `resolved`: the recipe after `extends`, `--set` and defaults (paths inside the recipe's folder
  relative to it, paths inside an installed recipe pack as `pack:path`, so the lock holds on
  another checkout);
- `inputs`: for every Hub model, tokenizer and dataset id the commit it resolves to (or
  "unresolved (offline)" when the Hub cannot be reached), for every local model or tokenizer
  path the SHA-256 of its bytes, for every data source the fingerprint the run itself records
  in environment.json (file SHA-256s, content hashes), and for a model whose options do not pin
  its weights (an earlier run's, `[model] type = "run"`) its `Model.source()`: which run, and a
  hash of its weights;
- `versions`: finetune-runner and every distribution that provides a component the recipe uses,
  with `components` naming which one provides which.

`finetune run --locked` computes the same record and refuses to run on any difference, naming
the key, the locked value and the current one. A Hub revision that one side could not resolve
(offline) is reported as unverified, not as a difference: an offline run cannot know better.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from runner import __version__
from runner.components import RunContext
from runner.components.data import sha256_file
from runner.errors import FinetuneError, KeyPath, clip, format_key
from runner.options import _FileMarker
from runner.plugins.packs import RecipePack
from runner.plugins.registry import Registry
from runner.recipe.keys import leaves, parse_key_path
from runner.recipe.paths import marker_of
from runner.recipe.resolved import ComponentSpec, Recipe

LOCK_FORMAT = 1
UNRESOLVED = "unresolved"
OFFLINE = f"{UNRESOLVED} (offline)"
RUNNER = "finetune-runner"
# The parts of a lock compared by --locked; the rest (format, file name, overrides) explain it.
COMPARED = ("resolved", "inputs", "versions", "components")


def lock_path(recipe_path: Path) -> Path:
    """The lock of `recipe.toml` is `recipe.lock` beside it (one lock per recipe in a folder)."""
    return Path(recipe_path).with_suffix(".lock")


# -- hashing local files ------------------------------------------------------------------------------
def sha256_tree(directory: Path) -> str:
    """One hash of a directory's files: their relative paths and bytes, in sorted order. Hidden
    entries (`.cache/`, `.git/`) are left out: tools rewrite them without changing the model."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        digest.update(f"{relative.as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


# -- the Hub --------------------------------------------------------------------------------------------
def hub_revision(repo_id: str, revision: str | None, repo_type: str) -> str:
    """The commit a Hub id (at a branch or tag) resolves to now; never raises, since a lock made
    offline is still worth having: it says what it could not pin instead."""
    from runner import is_offline

    if is_offline():
        return OFFLINE
    try:
        from huggingface_hub import HfApi

        return HfApi().repo_info(repo_id, revision=revision, repo_type=repo_type, timeout=10).sha or UNRESOLVED
    except Exception as exc:  # not found, gated, a network error: say which, keep going
        return f"{UNRESOLVED} ({type(exc).__name__})"


# -- what a recipe reads ---------------------------------------------------------------------------------
def file_options(spec: ComponentSpec) -> list[tuple[str, Any, Any]]:
    """(key, value, marker) of every file, directory or Hub-id option of a component."""
    out = []
    for name, field in type(spec.options).model_fields.items():
        # pydantic moves the Annotated metadata of a plain `FilePath` field into field.metadata
        marker = marker_of(field.annotation) or next((m for m in field.metadata if isinstance(m, _FileMarker)), None)
        value = getattr(spec.options, name)
        if marker is None or value is None:
            continue
        key = (*spec.key, name)
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else None
        if items is None:
            out.append((format_key(key, None), value, marker))
        else:
            out += [(format_key((*key, k), None), v, marker) for k, v in items]
    return out


def _local_or_hub(value: str, marker: Any, revision: str | None) -> dict[str, str]:
    path = Path(value)
    if path.is_file():
        return {"sha256": sha256_file(path)}
    if path.is_dir():
        return {"sha256_tree": sha256_tree(path)}
    if marker.hub:
        return {"hub": value, "revision": hub_revision(value, revision, "model")}
    return {"missing": value}


def inputs(recipe: Recipe, cache_dir: Path) -> dict[str, Any]:
    """Hub revisions, local file hashes and data fingerprints, by the recipe key that names them."""
    out: dict[str, Any] = {}
    ctx = RunContext(seed=recipe.run.seed, cache_dir=cache_dir, info=lambda _: None, warn=lambda _: None)
    for spec in recipe.components():
        key = format_key(spec.key, None)
        if spec.kind == "data_source":
            source = spec.create()
            if source.fingerprint_downloads:  # computing it would download the data: pin the commits instead
                pinned = [{"hub": d, "revision": hub_revision(d, rev, "dataset")} for d, rev in source.hub_datasets()]
                out[key] = pinned[0] if len(pinned) == 1 else pinned
            else:  # the same fingerprint the run writes into environment.json
                out[key] = source.fingerprint(ctx)
            continue
        for option_key, value, marker in file_options(spec):
            if isinstance(value, str):
                out[option_key] = _local_or_hub(value, marker, getattr(spec.options, "revision", None))
        if spec.kind == "model":  # weights the options alone do not pin (an earlier run's model)
            try:
                source = spec.create().source()
            except FinetuneError as exc:
                source = {"missing": exc.message}
            if source is not None:
                out[f"{key}.source"] = source
    return out


# -- plugin distributions and their versions -------------------------------------------------------------
def distribution_version(distribution: str, recorded: str) -> str:
    """A distribution's installed version; `recorded` (what the plugin loader saw) if it has no
    metadata, as a runner run from a source checkout."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return recorded


def providers(recipe: Recipe, registry: Registry) -> dict[str, tuple[str, str]]:
    """`kind name` -> (distribution, version) of each component the recipe uses."""
    out: dict[str, tuple[str, str]] = {}
    for spec in recipe.components():
        registration = dict(registry.registrations(spec.kind)).get(spec.name)
        info = registry.plugins.get(registration.plugin) if registration else None
        if info is None or info.source == "built-in":
            out[f"{spec.kind} {spec.name}"] = (RUNNER, __version__)
        else:
            out[f"{spec.kind} {spec.name}"] = (info.source, info.version)
    return out


def versions(recipe: Recipe, registry: Registry) -> tuple[dict[str, str], dict[str, str]]:
    """(distribution -> version, component -> distribution) for finetune-runner and the plugins used."""
    used = providers(recipe, registry)
    found = {RUNNER: __version__, **{dist: recorded for dist, recorded in used.values()}}
    dists = {dist: distribution_version(dist, recorded) for dist, recorded in found.items()}
    return dict(sorted(dists.items())), {component: dist for component, (dist, _) in sorted(used.items())}


# -- the lock ------------------------------------------------------------------------------------------
def _portable(value: Any, roots: list[tuple[str, str]]) -> Any:
    """`value` with absolute paths under a root written from it: inside the recipe's folder relative
    to it ("./data.csv"), inside an installed recipe pack as `pack:path` ("acme-recipes:data/x.csv"),
    so that the lock holds on a colleague's checkout where the pack is installed somewhere else."""
    if isinstance(value, dict):
        return {_portable(k, roots): _portable(v, roots) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v, roots) for v in value]
    if isinstance(value, str):
        for root, prefix in roots:
            if value == root or value.startswith(root + os.sep):
                return prefix + Path(os.path.relpath(value, root)).as_posix()
    return value


def _roots(recipe: Recipe, packs: Iterable[RecipePack]) -> list[tuple[str, str]]:
    """The recipe's own folder first (a recipe kept inside a pack's folder is still read as "./")."""
    roots = [(str(recipe.source.base_dir.resolve()), "./")]
    for pack in packs:
        roots += [(str(folder), f"{pack.name}:") for folder in pack.paths if folder.is_dir()]
    return roots


def build_lock(recipe: Recipe, registry: Registry, cache_dir: Path, packs: Iterable[RecipePack] = ()) -> dict[str, Any]:
    """The lock of `recipe`; `packs`: the installed recipe packs, whose files it names portably."""
    roots = _roots(recipe, packs)
    dists, components = versions(recipe, registry)
    return {
        "lock_format": LOCK_FORMAT,
        "recipe": recipe.source.path.name,
        "overrides": list(recipe.source.overrides),
        "resolved": _portable(recipe.resolved(), roots),
        "inputs": _portable(inputs(recipe, cache_dir), roots),
        "versions": dists,
        "components": components,
    }


def dumps(lock: dict[str, Any]) -> str:
    # Deterministic text: locking an unchanged recipe again leaves the file (and its git diff) alone.
    return json.dumps(lock, indent=2, ensure_ascii=False) + "\n"


def read_lock(path: Path, recipe_path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FinetuneError(
            f"--locked: {path} does not exist",
            hint=f"run `finetune lock {recipe_path}` first and keep the lock beside the recipe",
        )
    try:
        lock = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        hint = f"run `finetune lock {recipe_path}` again"
        raise FinetuneError(f"{path}: not a readable lock ({exc})", hint=hint) from exc
    if not isinstance(lock, dict) or lock.get("lock_format") != LOCK_FORMAT:
        raise FinetuneError(
            f"{path}: not a lock of format {LOCK_FORMAT}", hint=f"run `finetune lock {recipe_path}` again"
        )
    return lock


# -- comparing -----------------------------------------------------------------------------------------
def input_leaves(inputs: Any, prefix: KeyPath = ()) -> list[tuple[KeyPath, Any]]:
    """The leaves of a lock's `inputs` by key path. Each input is filed under the recipe key that
    names it (`"data.sources[0]"`), so its path continues that key's: ("data", "sources", 0, "files",
    "./data.csv"), spelled `data.sources[0].files."./data.csv"`."""
    if not isinstance(inputs, dict) or not inputs:
        return list(leaves(inputs, prefix))
    found = []
    for key, entry in inputs.items():
        found += leaves(entry, (*prefix, *(parse_key_path(str(key)) or (str(key),))))
    return found


def flatten(lock: dict[str, Any]) -> dict[str, Any]:
    """The compared parts of a lock by spelled key path (`resolved.training.epochs`,
    `inputs.model.path.revision`), the spelling `--set` takes."""
    found: list[tuple[KeyPath, Any]] = []
    for part in COMPARED:
        value = lock.get(part, {})
        found += input_leaves(value, (part,)) if part == "inputs" else leaves(value, (part,))
    return {format_key(path, None): value for path, value in found}


_ABSENT = object()


def is_unresolved(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(UNRESOLVED)


def compare(locked: dict[str, Any], current: dict[str, Any]) -> tuple[list[tuple[str, Any, Any]], list[str]]:
    """(differences as (key, locked value, current value), notes on what could not be verified)."""
    old, new = flatten(locked), flatten(current)
    differences, notes = [], []
    for key in [*old, *(k for k in new if k not in old)]:
        was, now = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if was == now:
            continue
        if is_unresolved(was) or is_unresolved(now):
            notes.append(f"{key}: cannot verify (locked {show(was)}, now {show(now)})")
            continue
        differences.append((key, was, now))
    return differences, notes


def show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    return clip(json.dumps(value, ensure_ascii=False), 120)


def mismatch_error(path: Path, recipe_path: Path, lock: dict, differences: list[tuple[str, Any, Any]]) -> FinetuneError:
    count = len(differences)
    lines = [f"--locked: {count} difference{'s' if count != 1 else ''} from {path}:"]
    lines += [f"  {key}: locked {show(was)}, now {show(now)}" for key, was, now in differences]
    if lock.get("overrides"):
        lines.append(f"  (the lock was made with --set {' --set '.join(lock['overrides'])})")
    return FinetuneError(
        "\n".join(lines),
        hint=f"restore what changed, or accept it with `finetune lock {recipe_path}` and commit the new lock",
    )
