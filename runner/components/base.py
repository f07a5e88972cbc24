"""What every component has: its options, the run context it is given, its one-line summary."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from runner.options import Options

SPLITS = ("train", "validation", "test")


@dataclass
class RunContext:
    """What a component may know about the run it is part of."""

    seed: int
    cache_dir: Path
    run_dir: Path | None = None  # None while planning
    trust_remote_code: bool = False
    tokenizer_dir: Path | None = None  # where the run's tokenizer is saved, once it is
    info: Callable[[str], None] = print
    warn: Callable[[str], None] = print


class Component:
    """Base of every component. Subclasses set `name` and, usually, `Options`.

    The first line of the class docstring is the one-line summary that `finetune plan` and the
    generated recipe reference show.
    """

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = Options
    # Names other tools use for our options, e.g. {"num_train_epochs": "epochs"}: an unknown key
    # found here is answered with the name this component uses instead of a bare "unknown key".
    aliases: ClassVar[dict[str, str]] = {}
    # Warnings the libraries this component drives give that ask nothing of the user (a notice that
    # the library fixed a setting itself, say): the start of each message, a regular expression as
    # `warnings.filterwarnings(message=...)` takes it. A run that uses the component ignores them
    # (`--debug` shows them).
    quiet_warnings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: Options):
        self.options = options

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @classmethod
    def check(cls, options: Options, recipe: Any) -> Iterable[tuple[tuple, str]]:
        """Checks that need the whole recipe. Yield (key path inside this section, message).

        `recipe` is the resolved recipe: a section per attribute (`recipe.task`, `recipe.model`,
        `recipe.strategy`, ...), each with its component's `name` and validated `options`. (Typed
        `Any` because the recipe wing builds on this module, not the other way round.)"""
        return ()
