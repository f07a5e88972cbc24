"""Reporter `tensorboard`: the run's figures as TensorBoard event files.

Scalars: `train/<figure>` (loss, learning_rate, grad_norm, epoch) at each logged step,
`<split>/<metric>` at each evaluation (the after-training ones at the last step), the baselines as
`baseline_<name>/<split>/<metric>` at step 0 (they are measured before training), and each audit
as `audits/<name>` (1 passed, 0 failed). Text: the resolved recipe (TOML), audit verdicts, warnings
and the final status. The recipe's settings also go to the HParams tab, against the final metrics.

Needs the `tensorboard` extra; the writer is torch's `SummaryWriter` (torch is always there).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from plugins.reporters import _tracking as tracking
from runner import Options, Reporter, hookimpl, key_paths


class TensorBoardOptions(Options):
    log_dir: str | None = Field(
        default=None,
        description=(
            "Folder of the event files (default: <run_dir>/tensorboard). When set, relative to the "
            "run's output folder (run.output_dir), and each run writes into <log_dir>/<name>/<time>/."
        ),
    )
    flush_secs: int = Field(default=30, gt=0, le=86_400, description="Write buffered events to disk this often (s).")


def _indented(text: str) -> str:
    """Markdown code block: TensorBoard's text tab renders markdown, and would reflow TOML."""
    return "\n".join("    " + line for line in text.splitlines())


class TensorBoard(Reporter):
    """Training curves, evaluations, baselines and the recipe as TensorBoard event files."""

    name = "tensorboard"
    Options = TensorBoardOptions

    def __init__(self, options):
        super().__init__(options)
        self.writer = None
        self.writer_cls = None
        self.log_dir: Path | None = None
        self.recipe: dict = {}
        self.step = 0  # the last step reached: where after-training figures are drawn
        self.start_step = 0
        self.seen: set[str] = set()  # evaluation tags written, for the HParams tab

    @classmethod
    def check(cls, options, recipe):
        problem = tracking.missing_extra("tensorboard", ("tensorboard",), "tensorboard")
        if problem:
            yield (("type",), problem)

    def start(self, run):
        # Imported here, not at module level: `finetune plan` and runs without this reporter must
        # not pay for (or need) TensorBoard.
        from torch.utils.tensorboard import SummaryWriter

        self.writer_cls = SummaryWriter
        self.recipe = run.get("recipe") or {}
        if self.options.log_dir is None:
            self.log_dir = Path(run["run_dir"]) / "tensorboard"
        else:  # a folder runs share: each its own subfolder, or their curves would interleave
            root = Path(self.options.log_dir).expanduser()
            root = root if root.is_absolute() else tracking.output_dir(run) / root
            self.log_dir = root / tracking.run_label(run)

    def _open(self):
        if self.writer is None and self.writer_cls is not None:
            # A resumed run drops what the first attempt wrote after its checkpoint's step, as
            # the run directory's metrics.jsonl is rewound: otherwise the curves would hold both.
            purge = self.start_step + 1 if self.start_step else None
            self.writer = self.writer_cls(
                log_dir=str(self.log_dir), flush_secs=self.options.flush_secs, purge_step=purge
            )
            if not self.start_step and self.recipe:
                self.writer.add_text("recipe", _indented(tracking.recipe_toml(self.recipe)), 0)
        return self.writer

    def train_begin(self, total_steps, start_step):
        self.start_step = self.step = start_step
        self._open()

    def message(self, text, level="info"):
        if level == "warning" and self.writer is not None:
            self.writer.add_text("warnings", text, self.step)

    def log(self, step, values):
        self.step = max(self.step, step)
        writer = self._open()
        for name, value in tracking.numbers(values).items():
            writer.add_scalar(tracking.key("train", name), value, step)

    def evaluated(self, split, step, metrics):
        if step is not None:
            self.step = max(self.step, step)
        writer = self._open()
        for name, value in tracking.shown(metrics).items():
            tag = tracking.key(split, name)
            writer.add_scalar(tag, value, self.step if step is None else step)
            self.seen.add(tag)

    def audited(self, name, passed, summary):
        writer = self._open()
        verdict = {True: "passed", False: "FAILED", None: "measured"}[passed]
        writer.add_text(tracking.key("audits", name), f"**{verdict}**: {summary}", self.step)
        if passed is not None:
            writer.add_scalar(tracking.key("audits", name), float(passed), self.step)

    def finish(self, status, summary):
        writer = self._open()
        if writer is None:  # start() never ran (or failed): nothing to close
            return
        try:
            for tag, value in tracking.baselines(summary).items():
                writer.add_scalar(tag, value, 0)
            writer.add_text("status", status, self.step)
            self._hparams(writer, status, summary)
        finally:  # whatever failed above, what was written reaches the disk
            writer.flush()
            writer.close()
            self.writer = None

    def _hparams(self, writer, status, summary) -> None:
        """The recipe's settings and final metrics in the HParams tab (runs compared side by side)."""
        from torch.utils.tensorboard.summary import hparams

        settings = {k: tracking.scalar(v) for k, v in key_paths(self.recipe).items()}
        settings["status"] = status
        final = {
            tracking.key(split, name): value
            for split, values in tracking.final_metrics(summary).items()
            for name, value in values.items()
            if tracking.key(split, name) in self.seen  # only tags that are charted
        }
        if not settings or not final:
            return
        experiment, session_start, session_end = hparams(settings, final)
        file_writer = writer._get_file_writer()  # what torch's own add_hparams writes to
        for event in (experiment, session_start, session_end):
            file_writer.add_summary(event)


@hookimpl
def register_reporters(register):
    register(TensorBoard)
