"""What a recipe holds at its top level: the sections that name one component, the arrays of
components, the defaults of the ones a recipe may leave out, and the nearest name to a misspelt one.

Validation (`validate`), the sweep's checks of its space (`sweep_check`, `runner.sweep.space`), the
schema and the reference read the recipe's layout from here.
"""

from __future__ import annotations

import difflib

# section -> (component kind, default type)
SECTIONS: dict[str, tuple[str, str | None]] = {
    "tokenizer": ("tokenizer", None),
    "model": ("model", None),
    "task": ("task", None),
    "strategy": ("strategy", "full"),
    "training": ("trainer", "hf"),
    "objective": ("objective", None),  # optional: a preference loss from a plugin
    "distributed": ("engine", "ddp"),
}
# The key that names a section's component, where it is not `type`: `[distributed] engine = "deepspeed"`.
TAGS: dict[str, str] = {"distributed": "engine"}
LISTS: dict[str, str] = {"metrics": "metric", "reporters": "reporter", "audits": "audit", "rewards": "reward"}
DEFAULT_REPORTERS = [{"type": "rich"}]
TOP_LEVEL = ["run", "data", *SECTIONS, "evaluation", *LISTS, "sweep"]
REQUIRED = ["data", "tokenizer", "model", "task"]


def suggest(word: str, choices: list[str]) -> str | None:
    """The choice closest to `word`, for a "did you mean", or None when none is close."""
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return match[0] if match else None
