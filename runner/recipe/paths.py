"""File options of a recipe: made absolute, relative to the recipe that set them, and checked.

An option typed `FilePath`, `DirPath` or `HubOrPath` (runner.options) names a file, a directory or
a Hugging Face Hub id. Validation resolves it against the directory of the recipe file that set it
(the working directory for `--set`), or, written `pack:path`, against the folder of an installed
recipe pack (`"finetune-runner:data/reviews.csv"`), and reports, at its key, one that does not
exist, is a directory where a file is wanted, or is no path the file system can take at all (a
name over 255 bytes).
"""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner.errors import KeyPath, clip
from runner.options import Options, _FileMarker
from runner.plugins.packs import Packs, parse_file_reference
from runner.recipe.load import RecipeSource

# A Hugging Face Hub repository id, "name" or "owner/name" (the Hub allows at most 96 characters).
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
HUB_ID_CHARS = 96

Report = Callable[..., None]  # Validator.issue(key, message, hint=None)


def marker_of(annotation: Any) -> _FileMarker | None:
    """The file marker inside an option's annotation (through Optional, Annotated, list, ...)."""
    if typing.get_origin(annotation) is typing.Annotated:
        for meta in typing.get_args(annotation)[1:]:
            if isinstance(meta, _FileMarker):
                return meta
    for arg in typing.get_args(annotation):
        found = marker_of(arg)
        if found:
            return found
    return None


def file_marker(field: Any) -> _FileMarker | None:
    """The file marker of a pydantic field: in its annotation, or in the metadata pydantic keeps."""
    return marker_of(field.annotation) or next((m for m in field.metadata if isinstance(m, _FileMarker)), None)


def resolve_paths(options: Options, key: KeyPath, source: RecipeSource, issue: Report, packs: Packs) -> None:
    """Make file options absolute, relative to the recipe file that set them (or to the folder of
    one of the recipe `packs`), and check they exist."""
    for name, field in type(options).model_fields.items():
        value = getattr(options, name)
        marker = file_marker(field)
        fkey = (*key, name)
        if marker is not None:
            if isinstance(value, str):
                setattr(options, name, _path(value, fkey, marker, source, issue, packs))
            elif isinstance(value, dict):
                resolved = {k: _path(v, (*fkey, k), marker, source, issue, packs) for k, v in value.items()}
                setattr(options, name, resolved)
            elif isinstance(value, list):
                paths = [_path(v, (*fkey, i), marker, source, issue, packs) for i, v in enumerate(value)]
                setattr(options, name, paths)
        elif isinstance(value, Options):
            resolve_paths(value, fkey, source, issue, packs)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, Options):
                    resolve_paths(item, (*fkey, i), source, issue, packs)


def _path(value: str, key: KeyPath, marker: _FileMarker, source: RecipeSource, issue: Report, packs: Packs) -> str:
    base = source.directory_of(key)
    try:
        return _checked_path(value, key, marker, base, issue, packs)
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte, ...
        reason = getattr(exc, "strerror", None) or str(exc)
        issue(key, f"not a usable path ({reason}): {clip(value)}")
        return value


def _checked_path(value: str, key: KeyPath, marker: _FileMarker, base: Path, issue: Report, packs: Packs) -> str:
    path = Path(os.path.expanduser(value))
    looked = None if path.is_absolute() else f"looked in {base}"
    path = path if path.is_absolute() else base / path
    reference = None if path.exists() else parse_file_reference(value)
    if reference is not None:  # `pack:path`: a file an installed recipe pack ships
        found = packs.resolve_file(*reference)
        if isinstance(found, tuple):
            issue(key, found[0], hint=found[1])
            return value
        return str(found)
    if marker.hub:
        looks_local = value.startswith(("/", "./", "../", "~")) or value.count("/") > 1
        if path.exists():
            return str(path.resolve())
        if not looks_local:
            if not _HUB_ID.fullmatch(value) or len(value) > HUB_ID_CHARS:
                issue(key, f"neither a local path nor a Hub id: {clip(value)}", hint=looked)
            return value  # a Hub id
        issue(key, f"no such local path: {clip(value)}", hint=looked)
        return value
    if marker.must_exist:
        ok = path.is_dir() if marker.directory else path.is_file()
        if not ok and not marker.directory and path.is_dir():
            issue(key, f"{clip(value)} is a directory, not a file", hint="name a file inside it")
        elif not ok:
            what = "directory" if marker.directory else "file"
            issue(key, f"{what} not found: {clip(value)}", hint=looked)
    return str(path.resolve())
