"""Reporter `rich`: a live progress bar with loss and the latest evaluation, and a final table.

On a terminal it draws a live bar; elsewhere (CI logs, pipes) it prints one plain line per log
step instead, so logs stay readable.
"""

from __future__ import annotations

import sys

from pydantic import Field

from runner import Options, Reporter, hookimpl

SHOWN = ("loss", "learning_rate", "epoch", "grad_norm")


def _shown(key: str) -> bool:
    """Evaluation figures worth a column: not timings, not the epoch counter."""
    return not key.endswith(("runtime", "per_second")) and key != "epoch"


def _fmt(key: str, value) -> str:
    if isinstance(value, float):
        if key == "learning_rate":
            return f"{value:.2e}"
        return f"{value:.4g}"
    return str(value)


class RichOptions(Options):
    plain: bool = Field(default=False, description="Print plain lines even on a terminal.")


class Rich(Reporter):
    """Live progress with loss and metrics (rich), and a summary table at the end."""

    name = "rich"
    Options = RichOptions

    def __init__(self, options):
        super().__init__(options)
        from rich.console import Console

        self.console = Console(stderr=False, highlight=False)
        self.live = self.console.is_terminal and not options.plain
        self.progress = None
        self.task = None
        self.total = 0
        self.last_eval = ""
        self.in_sweep = False  # a sweep's trial: the sweep says what each trial did; stay brief

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

    def train_begin(self, total_steps, start_step):
        self.total = total_steps
        if start_step:
            self.console.print(f"resuming at step {start_step} of {total_steps}")
        if not self.live:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=total_steps, completed=start_step, info="")

    def log(self, step, values):
        info = "  ".join(f"{k} {_fmt(k, values[k])}" for k in SHOWN if k in values)
        if self.progress is not None:
            self.progress.update(self.task, completed=step, info=f"{info}  {self.last_eval}".strip())
        elif "loss" in values:
            self.console.print(f"step {step}/{self.total}  {info}")

    def evaluated(self, split, step, metrics):
        shown = "  ".join(f"{k} {_fmt(k, v)}" for k, v in metrics.items() if _shown(k))
        where = f"step {step}" if step is not None else "final"
        if step is not None:
            self.last_eval = f"| {split}: {shown}"
        line = f"[cyan]{split}[/] ({where}): {shown}"
        if self.progress is not None:
            self.progress.console.print(line)
        else:
            self.console.print(line)

    def audited(self, name, passed, summary):
        badge = {True: "[green]PASS[/]", False: "[red]FAIL[/]", None: "[dim]measured[/]"}[passed]
        self.console.print(f"audit {name}: {badge} {summary}", soft_wrap=True)

    def train_end(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

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
            keys = dict.fromkeys(k for s in splits for k in metrics[s] if _shown(k))
            for key in keys:
                table.add_row(key, *(_fmt(key, values[key]) if key in values else "" for _, values in columns))
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
