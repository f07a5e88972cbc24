"""Reporter `rich`: a live progress bar, a metrics panel under it, and a final table.

On a terminal it draws a live area: one progress line (bar, step/total, elapsed, ETA from the
measured time per step) and, below it, a panel with the latest loss, learning rate and gradient
norm and the last validation scores; evaluations are also printed above it, compactly, so they stay
in the scrollback. The pieces are in rich_panels. Elsewhere (CI logs, pipes) or with `plain`, it
prints one plain line per log step and per evaluation instead, with no control codes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from pydantic import Field

from plugins.reporters.rich_panels import (
    EtaColumn,
    LiveArea,
    MetricsPanel,
    StepTimer,
    fmt,
    key_metrics,
    shown,
    train_keys,
)
from runner import Options, Reporter, hookimpl

SHOWN = ("loss", "learning_rate", "epoch", "grad_norm")  # on each plain log line
PLAIN_PROGRESS_S = 10.0  # off a terminal, long work outside training says how far it got this often


class RichOptions(Options):
    plain: bool = Field(default=False, description="Print plain lines even on a terminal.")


class Rich(Reporter):
    """Live progress with loss and metrics (rich), and a summary table at the end."""

    name = "rich"
    Options = RichOptions

    def __init__(self, options, *, console=None, clock: Callable[[], float] | None = None, auto_refresh: bool = True):
        """`console`, `clock` and `auto_refresh` are for tests: a recorded console, a fake clock, and
        redraws only at events (no refresh thread) make the live area deterministic."""
        super().__init__(options)
        from rich.console import Console

        self.console = console if console is not None else Console(stderr=False, highlight=False)
        self.clock = clock or time.monotonic
        self.auto_refresh = auto_refresh
        self.live = self.console.is_terminal and not options.plain
        # Off a terminal no line is wrapped (a log is read with grep); with the live display rich
        # wraps between words rather than the terminal in the middle of a number.
        self.console.soft_wrap = not self.live
        self.display = None  # the rich Live while training on a terminal
        self.bar = None
        self.task = None
        self.timer = StepTimer(self.clock)
        self.panel = MetricsPanel()
        self.total = 0
        self.in_sweep = False  # a sweep's trial: the sweep says what each trial did; stay brief
        self.work = None  # a transient bar for long work outside training (answering prompts)
        self.work_said: dict[str, float] = {}  # off a terminal: when each work's last line was printed

    def start(self, run):
        self.in_sweep = "sweep" in run
        if not self.in_sweep:
            self.console.print(f"[bold]{run['name']}[/] -> {run['run_dir']}")

    def stage(self, text):
        if not self.in_sweep:
            self.console.print(f"[dim]- {text}[/]")

    def message(self, text, level="info"):
        if level == "warning":
            self.console.print(f"[yellow]warning:[/] {text}")
        elif not self.in_sweep:
            self.console.print(f"  {text}")

    def progress(self, label, done, total):
        """Long work outside training: a bar that goes away when it ends, on a terminal; off one a
        line when it starts and ends, and every PLAIN_PROGRESS_S seconds between."""
        if self.in_sweep or total <= 0 or self.display is not None:
            return
        if not self.live:
            now, said = self.clock(), self.work_said.get(label)
            if done == 0 or done >= total or said is None or now - said >= PLAIN_PROGRESS_S:
                self.console.print(f"  {label} {done}/{total}")
                self.work_said[label] = now
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        if self.work is None:
            self.work = Progress(
                TextColumn("  {task.description}"), BarColumn(bar_width=None), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, get_time=self.clock,
                transient=True, auto_refresh=self.auto_refresh, expand=True,
            )  # fmt: skip
            self.work.start()
            self.work_task = self.work.add_task(label, total=total)
        self.work.update(self.work_task, description=label, completed=done, total=total)
        self.work.refresh()
        if done >= total:
            self.work.stop()
            self.work = None

    def train_begin(self, total_steps, start_step):
        self.total = total_steps
        self.timer.begin(total_steps, start_step)
        if start_step:
            self.console.print(f"resuming at step {start_step} of {total_steps}")
        if not self.live:
            return
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        # Only columns that always fit: at 80 columns the bar shrinks, the rest stays whole.
        self.bar = Progress(
            TextColumn("[bold]training"),
            BarColumn(bar_width=None),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            EtaColumn(self.timer),
            console=self.console,
            get_time=self.clock,
            expand=True,
        )
        self.task = self.bar.add_task("train", total=total_steps, completed=start_step)
        self.display = Live(
            LiveArea(self.bar, self.panel),
            console=self.console,
            auto_refresh=self.auto_refresh,
            refresh_per_second=4,
        )
        self.display.start(refresh=True)

    def _redraw(self):
        if self.display is not None:
            self.display.refresh()

    def log(self, step, values):
        self.timer.step(step)
        if self.bar is not None:
            self.bar.update(self.task, completed=step)
            self.panel.update_train(values)
            self._redraw()
        elif "loss" in values:
            first = [k for k in SHOWN if k in values]  # the usual order, then what else the trainer reports
            rest = [k for k, _ in train_keys(values) if k not in SHOWN]
            info = "  ".join(f"{k} {fmt(k, values[k])}" for k in first + rest)
            self.console.print(f"step {step}/{self.total}  {info}")

    def evaluated(self, split, step, metrics):
        where = f"step {step}" if step is not None else "final"
        if self.live:  # compact in the scrollback; the panel (and the final table) shows them too
            if self.display is not None:
                self.panel.update_evaluation(split, step, metrics)
            figures = "  ".join(f"{k} {v}" for k, v in key_metrics(metrics))
            self.console.print(f"[cyan]{split}[/] ({where}): {figures}")
            self._redraw()
        else:  # a log line: every figure
            figures = "  ".join(f"{k} {fmt(k, v)}" for k, v in metrics.items() if shown(k))
            self.console.print(f"[cyan]{split}[/] ({where}): {figures}")

    def audited(self, name, passed, summary):
        badge = {True: "[green]PASS[/]", False: "[red]FAIL[/]", None: "[dim]measured[/]"}[passed]
        self.console.print(f"audit {name}: {badge} {summary}")

    def train_end(self):
        if self.display is not None:
            self.display.stop()  # the last drawing stays on screen: the final step, loss and scores
            self.display = None
            self.bar = None

    def finish(self, status, summary):
        from rich.table import Table

        self.train_end()
        if self.in_sweep:
            return
        metrics = summary.get("metrics", {})
        splits = [s for s in ("validation", "test") if isinstance(metrics.get(s), dict)]
        columns = [(split, metrics[split]) for split in splits]
        if splits:  # the baselines on the last split, beside the fine-tuned model
            columns += [(f"{b['name']} ({splits[-1]})", b[splits[-1]]) for b in summary.get("baselines", [])
                        if isinstance(b.get(splits[-1]), dict)]  # fmt: skip
            table = Table(title=f"{summary.get('name', 'run')}: {status}")
            table.add_column("metric")
            for title, _ in columns:
                table.add_column(title, justify="right")
            keys = dict.fromkeys(k for s in splits for k in metrics[s] if shown(k))
            for key in keys:
                table.add_row(key, *(fmt(key, values[key]) if key in values else "" for _, values in columns))
            self.console.print(table)
        else:
            self.console.print(f"{summary.get('name', 'run')}: {status}")
        for label, key in (("model", "model_dir"), ("run", "run_dir")):
            if summary.get(key):
                self.console.print(f"{label}: {summary[key]}")
        sys.stdout.flush()


@hookimpl
def register_reporters(register):
    register(Rich)
