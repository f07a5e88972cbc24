"""A recipe for a run: read, validated against the installed plugins, and whether the Hub is asked."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Protocol

from runner.plugins.manager import Plugins, get_plugins
from runner.recipe.load import read_recipe
from runner.recipe.resolved import Recipe
from runner.recipe.validate import validate


class Say(Protocol):
    def __call__(self, text: str, level: str = "info") -> None: ...


def tell(text: str, level: str = "info") -> None:
    """How the front door speaks by default, as `finetune` does: what a run is doing on stdout,
    notes ("note") and warnings on stderr."""
    print(text, file=sys.stdout if level == "info" else sys.stderr)


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None, plugins: Plugins | None = None) -> Recipe:
    """The recipe at `path` with `extends` followed and `overrides` (`"training.epochs=1"`, as
    `--set` takes them) applied, validated against the installed plugins (or `plugins`). A
    RecipeError carries every problem at once, each with its file, line and key path."""
    plugins = plugins or get_plugins()
    return validate(read_recipe(Path(path), overrides, plugins.packs), plugins.registry)


def hub_ids(recipe: Recipe) -> list[str]:
    """The Hub ids a recipe reads: the datasets its data sources say they read (`hub_datasets`),
    and options typed HubOrPath (a model's or tokenizer's) whose value is no local path. The
    inputs `finetune lock` pins as Hub ids, found the same way (runner.recipe.lockfile), without
    contacting the Hub or hashing anything."""
    from runner.recipe.lockfile import file_options

    ids = []
    for spec in recipe.components():
        if spec.kind == "data_source":
            ids += [dataset for dataset, _revision in spec.create().hub_datasets()]
        for _key, value, marker in file_options(spec):
            if isinstance(value, str) and marker.hub and not os.path.exists(value):
                ids.append(value)
    return ids


def go_offline(recipe: Recipe | None = None, requested: bool = False, say: Say = tell) -> None:
    """Offline when asked, or when the Hub is unreachable; decided before any Hub library loads
    (huggingface_hub and datasets read these variables once, at import).

    Given the `recipe`, the Hub is probed only if the recipe reads from it; a recipe that does not
    goes offline silently (nothing to download, so no probe to wait for and no note to read). A
    variable the user set is left as it is."""
    from runner.toolkit.hub import go_offline_if_unreachable

    if requested:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        return
    if recipe is not None and not hub_ids(recipe):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        return
    note = go_offline_if_unreachable()
    if note:
        say(note, "note")
