"""What environment.json records: versions, platform, threads, git commit, command line."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from runner import __version__

PACKAGES = (
    "torch", "transformers", "datasets", "tokenizers", "accelerate", "peft", "evaluate", "deepspeed",
    "safetensors", "pluggy", "pydantic", "rich", "numpy", "pyarrow", "scikit-learn",
)  # fmt: skip


# `scheme://user:password@host`: the password part of any URL (a sweep's --storage, a tracker's URI).
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@\s]*@")  # as SQLAlchemy reads one: the password may hold "/"


def mask_passwords(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***: what is recorded or printed."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def git_commit(directory: Path) -> dict[str, Any] | None:
    """The commit of the repository holding `directory`, and whether its tree had changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "dirty": bool(dirty)}


def describe(recipe_dir: Path, plugins: dict[str, Any]) -> dict[str, Any]:
    import torch

    from runner.toolkit.modeling import device_summary

    return {
        "runner": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "command": [mask_passwords(arg) for arg in sys.argv],  # kept with the run, shown in its report
        "packages": package_versions(),
        "plugins": plugins,
        "torch_threads": torch.get_num_threads(),
        "device": device_summary(),
        "git": git_commit(recipe_dir),
    }


def plugin_versions(plugins) -> dict[str, str]:
    return {
        name: f"{info.version} ({info.source})" for name, info in plugins.registry.plugins.items() if not info.error
    }
