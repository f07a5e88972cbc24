"""`[run] requires`: the packages, at the versions, a recipe was written and tested with.

A shared recipe that needs a plugin package (`finetune-adapters>=0.2`) or a newer runner says so
in PEP 508 requirement strings; validation checks them against the installed distributions
(`importlib.metadata`) before anything runs, so a colleague with an old or missing package gets
one error at `run.requires[i]` naming the package, the requirement and what is installed, instead
of an unknown component type or a failure deep inside a run.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import InvalidRequirement, Requirement

from runner.errors import clip


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def requirement_problems(requires: list[str]) -> Iterator[tuple[int, str, str | None]]:
    """(index, message, hint) for each requirement that is malformed or not met here."""
    for index, text in enumerate(requires):
        try:
            requirement = Requirement(text)
        except InvalidRequirement as exc:
            reason = str(exc).strip().splitlines()[0]
            yield index, f"not a valid requirement: {reason}", 'write it as pip does, e.g. "finetune-adapters>=0.2"'
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue  # meant for another platform or Python (`; sys_platform == 'linux'`)
        have = installed_version(requirement.name)
        install = f"pip install '{clip(text)}'"
        if have is None:
            yield index, f"{requirement.name} is not installed (the recipe requires {clip(text)})", install
        elif not requirement.specifier.contains(have, prereleases=True):
            # prereleases=True: an installed 0.3.0rc1 satisfies ">=0.2"; pip's default would say no
            yield index, f"{requirement.name} {have} is installed, the recipe requires {clip(text)}", install
