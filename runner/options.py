"""The base of every component's options: strict, closed pydantic models.

A component declares `class Options(runner.Options)`; the recipe table that names the component is
validated against it. Unknown keys are rejected at every depth (nested models must subclass
`Options` too), values are not coerced across TOML types (a string is never silently a number),
and integers are accepted where a float is expected.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict


class Options(BaseModel):
    """Base class for component options. Subclass it; nested tables subclass it too."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class _FileMarker:
    """Marks a string option as a path to an existing file, relative to the recipe that sets it."""

    def __init__(self, must_exist: bool = True, directory: bool = False, hub: bool = False):
        self.must_exist = must_exist
        self.directory = directory
        self.hub = hub  # a Hugging Face Hub id is accepted where no such local path exists

    def __repr__(self) -> str:
        return "FilePath"


FilePath = Annotated[str, _FileMarker()]
"""A path to an existing file. Relative paths are resolved against the recipe that sets them."""

DirPath = Annotated[str, _FileMarker(directory=True)]
"""A path to an existing directory, resolved like `FilePath`."""

HubOrPath = Annotated[str, _FileMarker(must_exist=False, hub=True)]
"""A Hugging Face Hub id ("gpt2", "org/name") or a local directory. A value that exists relative to
the recipe, or that starts with "/", "./", "../" or "~", is a local path and must exist."""


class _ComponentMarker:
    """Marks an option that names a registered component of another kind (see `ComponentOf`)."""

    def __init__(self, kind: str):
        self.kind = kind

    def __repr__(self) -> str:
        return f"ComponentOf({self.kind!r})"


def ComponentOf(kind: str) -> Any:
    """The type of an option that names a registered component of `kind`, inside another component's
    options: a name (`extract = "last_number"`) or a table with `type` and that component's options
    (`extract = { type = "json_field", field = "answer" }`). Validation checks the name (with a
    did-you-mean) and the options at their key paths as for any component; the component that holds
    the option builds it with `runner.create_component(kind, value)`. A recipe still names only
    registered components."""
    return Annotated[str | dict[str, Any], _ComponentMarker(kind)]


# Bounds on counts that no machine reaches: a value beyond them is a typo (1e300 epochs), and
# would otherwise run for ever or crash deep inside a library that cannot take it.
MAX_STEPS = 10**9
"""Most optimizer steps a run may plan (a billion: years of training on any machine)."""

MAX_BATCH = 2**20
"""Most rows in one batch, and most micro-batches accumulated into one optimizer step."""


def _finite_positive(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a finite number > 0 (got {value})")
    return value


def _finite_non_negative(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"must be a finite number >= 0 (got {value})")
    return value


def _fraction(value: float) -> float:
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise ValueError(f"must be a fraction between 0 and 1 (got {value})")
    return value


PositiveFloat = Annotated[float, AfterValidator(_finite_positive)]
NonNegativeFloat = Annotated[float, AfterValidator(_finite_non_negative)]
Fraction = Annotated[float, AfterValidator(_fraction)]
