"""The base of the metrics shipped as local `evaluate` modules (`modules/`), loaded once per process.

Two fast paths, so that a bootstrap (a metric computed on ~1000 resamples) takes about a second:
- `compute` calls the module's `_compute` directly: `evaluate`'s public `compute` writes its inputs
  to an Arrow cache file on every call, which costs milliseconds and buys nothing here.
- `statistics` gives per-row numbers whose sums over any subset of rows determine the metric on
  that subset (correct rows; per-class true/predicted/actual counts; summed losses and tokens;
  BLEU's n-gram counts), and `from_statistics` turns many such sums into scores at once. A
  bootstrap then resamples sums, never rows (runner.evaluation.intervals).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from runner import Metric, Options

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

MODULES = Path(__file__).parent / "modules"


@cache
def load_module(name: str):
    """The local `evaluate` module `name`, loaded once per process (it keeps no state between our
    calls: we call its `_compute`, which works on its arguments only)."""
    import evaluate

    return evaluate.load(str(MODULES / name))


class NoOptions(Options):
    pass


class _LocalMetric(Metric):
    Options = NoOptions
    module = ""

    @property
    def result(self) -> str:
        """Which value of the module's result this metric reports."""
        return self.module

    def prepare(self, ctx) -> None:
        load_module(self.module)  # fails the run early if it cannot load; cached for `_module`

    def _args(self) -> dict:
        return {}

    def _module(self):
        return load_module(self.module)

    def compute(self, predictions, references) -> dict[str, float]:
        result = self._module()._compute(predictions=predictions, references=references, **self._args())
        return {self.key(): float(result[self.result])}

    def statistics(self, predictions, references) -> np.ndarray | None:
        """Per-row statistics, shape (rows, k), whose sum over any subset of rows gives the metric on
        that subset through `from_statistics`; None when the metric has none."""
        module = self._module()
        if not hasattr(module, "row_statistics"):
            return None
        return module.row_statistics(predictions, references, **self._args())

    def from_statistics(self, sums) -> dict[str, np.ndarray]:
        """Metric values from summed statistics: `sums` has shape (m, k); one value per row."""
        return {self.key(): self._module().score_statistics(sums, **self._args())[self.result]}


def _divide(numerator, denominator, empty: float = float("nan")):
    """numerator / denominator element by element, `empty` where the denominator is 0."""
    import numpy as np

    numerator = np.asarray(numerator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.full_like(numerator, empty), where=np.asarray(denominator) > 0)
