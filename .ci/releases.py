"""Which dependencies have releases the lock or pyproject.toml's bounds leave out.

Run by `make test-latest` in its environment of the newest allowed releases: for each dependency
pyproject.toml names, the version requirements.lock pins, the version installed here (the newest
the bounds allow), and the newest release on the package index, marked when a bound keeps it out.
A release outside a bound is the cue to try it: docs/development.md says how.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    named = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        named.extend(extra)
    return [Requirement(line) for line in named]


def locked(path: Path) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", path.read_text(encoding="utf-8"), re.MULTILINE)
    return {canonicalize_name(name): pin for name, pin in pins}


def newest(name: str) -> str | None:
    """The newest release on the configured index (pip's own lookup, so it sees what pip sees)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", name], capture_output=True, text=True, check=False
    ).stdout
    match = re.match(rf"{re.escape(name)} \(([^)]+)\)", out, re.IGNORECASE)
    return match.group(1) if match else None


def installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    args = parser.parse_args()
    pins = locked(args.lock)
    rows = [("package", "locked", "installed", "newest", "")]
    beyond = []
    for req in requirements():
        latest = newest(req.name)
        note = ""
        try:
            if latest and Version(latest) not in req.specifier:
                note = f"outside {req.specifier}"
                beyond.append(f"{req.name} {latest}")
        except InvalidVersion:
            note = "unreadable version"
        key = canonicalize_name(req.name)
        torch = key == "torch"  # pinned by the Makefile, not the lock
        rows.append((req.name, "Makefile" if torch else pins.get(key, "-"), installed(req.name) or "-",
                     latest or "?", note))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    if beyond:
        print(f"\nreleases beyond the bounds: {', '.join(beyond)} (docs/development.md: widening a bound)")
    else:
        print("\nevery dependency's newest release is inside its bounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
