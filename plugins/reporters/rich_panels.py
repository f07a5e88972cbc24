"""The pieces of the `rich` reporter's live area: the step timer behind the ETA, the ETA column,
and the metrics panel drawn under the progress bar.

The progress line holds only what always fits (description, bar, step/total, elapsed, ETA); the
figures live in their own panel below it, whose items wrap into rows on a narrow terminal instead
of pushing the bar, the step count and the ETA off the line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.columns import Columns
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.panel import Panel
from rich.progress import ProgressColumn, Task
from rich.table import Table
from rich.text import Text

# Training figures the panel shows, with the short label each gets.
TRAIN = (("loss", "loss"), ("learning_rate", "lr"), ("grad_norm", "grad_norm"), ("epoch", "epoch"))


def train_keys(values: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, label) of a training log's figures to show: the usual ones first, then whatever else
    the trainer chose to report (a preference trainer's rewards/margins, say), by their own names."""
    usual = [(k, label) for k, label in TRAIN if k in values]
    known = {k for k, _ in TRAIN} | {"step"}
    return usual + [(k, k) for k, v in values.items() if k not in known and isinstance(v, int | float)]


KEY_METRICS = 6  # evaluation figures in the panel and in the compact scrollback line


def shown(key: str) -> bool:
    """Evaluation figures worth showing: not timings, not the epoch counter."""
    return not key.endswith(("runtime", "per_second")) and key != "epoch"


def fmt(key: str, value: Any) -> str:
    if isinstance(value, float):
        if key == "learning_rate":
            return f"{value:.2e}"
        return f"{value:.4g}"
    return str(value)


def key_metrics(metrics: dict[str, Any], limit: int = KEY_METRICS) -> list[tuple[str, str]]:
    """The first `limit` figures worth showing, formatted, in the order the task reported them
    (loss first, then the task's metrics: the order its author chose)."""
    return [(k, fmt(k, v)) for k, v in metrics.items() if shown(k)][:limit]


def clock_text(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class StepTimer:
    """Mean seconds per optimizer step, measured from the steps the trainer reports.

    rich's TimeRemainingColumn estimates a speed from the updates of its last 30 seconds, so with
    a log every few seconds and pauses for evaluation it shows `-:--:--`; this one averages over
    every step since training began (evaluations included: they recur, so they belong in the
    estimate) and knows the remaining time after the first logged step."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.begin_time = self.last_time = clock()
        self.begin_step = self.last_step = 0
        self.first: tuple[int, float] | None = None
        self.interval = 0  # steps between the last two reports: the log interval
        self.total = 0

    def begin(self, total: int, start_step: int) -> None:
        self.total = total
        self.begin_time = self.last_time = self.clock()
        self.begin_step = self.last_step = start_step
        self.first = None  # the first report (step, time)

    def step(self, step: int) -> None:
        self.interval = step - self.last_step
        self.last_step, self.last_time = step, self.clock()
        if self.first is None:
            self.first = (step, self.last_time)

    def per_step(self) -> float | None:
        """From the first report on once there are two: the steps before it carry the start-up
        (the first batches, compilation), which would inflate the whole estimate."""
        step, when = self.first if self.first and self.last_step > self.first[0] else (self.begin_step, self.begin_time)
        done = self.last_step - step
        return (self.last_time - when) / done if done > 0 else None

    def remaining(self) -> float | None:
        """Seconds left: the steps to go at the mean pace, less the time since the last report (so
        the ETA keeps counting down between logs), but never less than the steps after the next
        report take: when the pace drops, the ETA stops there instead of showing 0:00:00 early."""
        per_step = self.per_step()
        if per_step is None:
            return None
        left = max(0, self.total - self.last_step) * per_step
        after_next = max(0, self.total - self.last_step - self.interval) * per_step
        return max(after_next, left - (self.clock() - self.last_time))


class EtaColumn(ProgressColumn):
    """`eta 0:01:23` from the StepTimer; `eta …` until the first step is measured."""

    def __init__(self, timer: StepTimer):
        super().__init__()
        self.timer = timer

    def render(self, task: Task) -> Text:
        if task.finished:
            return Text(f"eta {clock_text(0)}", style="progress.remaining")
        remaining = self.timer.remaining()
        return Text(f"eta {clock_text(remaining) if remaining is not None else '…'}", style="progress.remaining")


class MetricsPanel:
    """The figures under the bar: the latest training values, and the latest validation scores
    with the split and step they come from. Each row's items wrap (rich Columns) at any width."""

    def __init__(self):
        self.train: dict[str, Any] = {}
        self.evaluation: tuple[str, int | None, list[tuple[str, str]]] | None = None

    def update_train(self, values: dict[str, Any]) -> None:
        self.train = {**self.train, **{k: values[k] for k, _ in train_keys(values)}}

    def update_evaluation(self, split: str, step: int | None, metrics: dict[str, Any]) -> None:
        self.evaluation = (split, step, key_metrics(metrics))

    @staticmethod
    def _items(pairs: list[tuple[str, str]]) -> Columns:
        return Columns([Text.assemble((f"{label} ", "dim"), value) for label, value in pairs], padding=(0, 3))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(ratio=1)
        train = [(label, fmt(key, self.train[key])) for key, label in train_keys(self.train)]
        grid.add_row("train", self._items(train) if train else Text("…", style="dim"))
        if self.evaluation is not None:
            split, step, pairs = self.evaluation
            where = f"@{step}" if step is not None else "final"
            grid.add_row(Text.assemble((split, "cyan"), " ", (where, "dim")), self._items(pairs))
        yield Panel(grid, padding=(0, 1), border_style="dim")


class LiveArea:
    """What the Live display redraws: the progress line, and the metrics panel under it."""

    def __init__(self, progress, panel: MetricsPanel):
        self.progress = progress
        self.panel = panel

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Group(self.progress, self.panel)
