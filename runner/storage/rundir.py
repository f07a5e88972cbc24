"""The run directory: a self-describing record of one run.

    <output_dir>/<name>/<timestamp>/
        recipe.resolved.toml   the recipe with extends, overrides and defaults resolved
        environment.json       versions, seed, threads, git commit, data fingerprints
        status.json            running | interrupted | failed | completed, and the step reached
        metrics.jsonl          every training log and evaluation, one JSON object per line
        metrics.json           final validation and test metrics (written when the run completes)
        checkpoints/           checkpoint-N/, each with a manifest written last
        model/                 the final model, renamed into place only when complete

Every file that a reader could mistake for complete is written to a temporary name, flushed to
disk and renamed: a crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import tomli_w

from runner.errors import FinetuneError


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write a file so that readers see either the old content or the whole new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")


def finite(value: object) -> float | None:
    """A finite float, or None (for NaN, inf, their string forms, and anything not a number)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a fully written directory into place; an older one of that name is replaced."""
    for root, _dirs, files in os.walk(tmp):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)


class RunDir:
    """Paths and small records of one run directory."""

    RECIPE = "recipe.resolved.toml"
    BASELINE = "baseline.json"  # the base model's scores, measured before training (a resume reads them)
    EVALUATION = "evaluation.json"  # baselines beside the fine-tuned scores, intervals, diagnosis
    AUDITS = "audits.json"
    DATA_STATS = "data_stats.json"

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, output_dir: Path, name: str) -> RunDir:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(output_dir) / name
        base.mkdir(parents=True, exist_ok=True)
        for n in range(1000):
            candidate = base / (stamp if n == 0 else f"{stamp}-{n}")
            try:
                candidate.mkdir()
                return cls(candidate)
            except FileExistsError:
                continue
        raise FinetuneError(f"cannot create a run directory under {base}")

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDir:
        run = cls(Path(path))
        if not (run.path / cls.RECIPE).is_file():
            raise FinetuneError(
                f"{path} is not a run directory (no {cls.RECIPE})",
                hint="pass the directory `finetune run` created, e.g. runs/<name>/<timestamp>",
            )
        return run

    # paths
    @property
    def recipe(self) -> Path:
        return self.path / self.RECIPE

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def metrics_log(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def environment(self) -> Path:
        return self.path / "environment.json"

    # records
    def write_recipe(self, resolved: dict) -> None:
        header = "# The recipe of this run, with extends, --set overrides and every default resolved.\n"
        atomic_write(self.recipe, header + tomli_w.dumps(resolved))

    def status(self) -> dict[str, Any]:
        path = self.path / "status.json"
        return read_json(path) if path.is_file() else {"state": "unknown"}

    def set_status(self, state: str, **fields: Any) -> None:
        record = {**self.status(), **fields, "state": state, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(self.path / "status.json", record)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")

    def read_metrics_log(self) -> list[dict[str, Any]]:
        if not self.metrics_log.is_file():
            return []
        records = []
        for line in self.metrics_log.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut off by a hard kill
        return records

    def rewind_metrics(self, step: int) -> None:
        """Keep only the records of steps up to `step`: a resumed run logs the later ones again."""
        kept = [r for r in self.read_metrics_log() if r.get("step") is not None and r["step"] <= step]
        atomic_write(self.metrics_log, "".join(json.dumps(r) + "\n" for r in kept))


class ReadOnlyRunDir(RunDir):
    """The run directory as ranks other than 0 see it: the same paths, with the records left to
    rank 0, so that several processes never write one file."""

    def write_recipe(self, resolved: dict) -> None:
        pass

    def set_status(self, state: str, **fields: Any) -> None:
        pass

    def append_metrics(self, record: dict[str, Any]) -> None:
        pass

    def rewind_metrics(self, step: int) -> None:
        pass


def publish(final: Path, write) -> Path:
    """Have `write(directory)` fill a temporary directory beside `final`, then rename it to `final`."""
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    publish_dir(tmp, final)
    return final
