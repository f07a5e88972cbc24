"""Fan-out of run events: to the recipe's reporters, to metrics.jsonl, and to lifecycle hooks."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

from runner.components import Reporter
from runner.storage.rundir import RunDir


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if isinstance(value, bool | int | str) or value is None:
            out[key] = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            out[key] = number if math.isfinite(number) else str(number)
    return out


class Events:
    """What the core and the trainer tell the world. A reporter that raises is switched off with a
    warning rather than stopping a run that may have hours left."""

    def __init__(self, reporters: list[Reporter], run_dir: RunDir | None = None, hook=None, run=None, stop_when=None):
        self.reporters = list(reporters)
        self.run_dir = run_dir
        self.hook = hook
        self.run = run or {}
        # Asked after each step: a reason to stop training early (a sweep's pruner), or None.
        self.stop_when: Callable[[], str | None] = stop_when or (lambda: None)

    def _each(self, method: str, *args: Any) -> None:
        for reporter in list(self.reporters):
            try:
                getattr(reporter, method)(*args)
            except Exception as exc:
                self.reporters.remove(reporter)
                warning = f"reporter '{reporter.name}' failed and was switched off: {exc!r}"
                if self.reporters:
                    self.message(warning, "warning")
                else:  # the last one: nothing else would say why the run went quiet
                    print(f"warning: {warning}", file=sys.stderr)

    def _record(self, record: dict[str, Any]) -> None:
        if self.run_dir is not None:
            self.run_dir.append_metrics({"time": round(time.time(), 3), **_clean(record)})

    def start(self, run: dict[str, Any]) -> None:
        self._each("start", run)

    def stage(self, text: str) -> None:
        self._each("stage", text)

    def message(self, text: str, level: str = "info") -> None:
        self._each("message", text, level)

    def info(self, text: str) -> None:
        self.message(text, "info")

    def warn(self, text: str) -> None:
        self.message(text, "warning")

    def progress(self, label: str, done: int, total: int) -> None:
        self._each("progress", label, done, total)

    def train_begin(self, total_steps: int, start_step: int) -> None:
        self._each("train_begin", total_steps, start_step)

    def log(self, step: int, values: dict[str, float]) -> None:
        values = _clean(values)
        self._record({"step": step, "split": "train", **values})
        self._each("log", step, values)

    def evaluated(self, split: str, step: int | None, metrics: dict[str, float], final: bool = False) -> None:
        metrics = _clean(metrics)
        self._record({"step": step, "split": split, **({"final": True} if final else {}), **metrics})
        self._each("evaluated", split, step, metrics)
        if self.hook is not None:
            self.hook.on_evaluation(run=self.run, split=split, step=step, metrics=metrics)

    def train_end(self) -> None:
        self._each("train_end")

    def audited(self, name: str, passed: bool | None, summary: str) -> None:
        self._each("audited", name, passed, summary)

    def finish(self, status: str, summary: dict[str, Any]) -> None:
        self._each("finish", status, summary)
