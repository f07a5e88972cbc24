"""Checks that need the heavy libraries: run by `finetune run` and `finetune plan` after validation.

`finetune validate` imports neither torch nor transformers, so a component's `check` cannot ask
transformers whether, say, a model config builds. A component that can ask defines a classmethod
`check_build(options, recipe)`, yielding `(relative key path, message)` pairs like `check`; this
module runs them before any data is read, and reports what they find as recipe errors, with file,
line and key, exactly like validation does.
"""

from __future__ import annotations

from runner.errors import FinetuneError, Issue, RecipeError, clip
from runner.recipe.resolved import Recipe


def check_build(recipe: Recipe) -> None:
    """Run every component's `check_build`; raise RecipeError listing all it found."""
    issues: list[Issue] = []
    for spec in recipe.components():
        check = getattr(spec.cls, "check_build", None)
        if check is None:
            continue
        try:
            problems = list(check(spec.options, recipe))
        except FinetuneError:
            raise
        except Exception as exc:  # a broken check must not hide the others, nor end in a traceback
            problems = [((), f"check of '{spec.name}' failed: {type(exc).__name__}: {clip(str(exc))}")]
        for rel, message in problems:
            key = (*spec.key, *rel)
            issues.append(Issue(message, recipe.source.locate(key), key))
    if issues:
        raise RecipeError(issues)
