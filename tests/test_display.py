"""The `rich` reporter's display: a live area that keeps the bar, step count, ETA and last scores
readable at 80 and 160 columns; plain lines without control codes off a terminal; and a run that
shows no library chatter (warnings, tokenizer bars, Hub notes) for an offline recipe."""

from __future__ import annotations

import io
import os
import re
import subprocess

import pytest
from conftest import ROOT, finetune_subprocess, tiny_recipe
from rich.console import Console

from plugins.reporters.rich_progress import Rich, RichOptions

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
TOTAL = 120
SCORES = {
    "loss": 1.031,
    "accuracy": 0.4633,
    "f1_macro": 0.4545,
    "f1_weighted": 0.4526,
    "precision_macro": 0.9876,
    "recall_macro": 0.4668,
    "runtime": 1.5,
    "samples_per_second": 200.0,
}


class Clock:
    """A time source the test moves: ETAs become exact."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _reporter(console: Console, clock: Clock | None = None, **options) -> Rich:
    return Rich(RichOptions(**options), console=console, clock=clock or Clock(), auto_refresh=False)


def _area(reporter: Rich, width: int) -> list[str]:
    """The live area as a terminal of `width` columns draws it now, as plain text lines."""
    screen = Console(file=io.StringIO(), width=width, color_system=None, legacy_windows=False)
    screen.print(reporter.display.renderable)
    return screen.file.getvalue().splitlines()


def _run(reporter: Rich, clock: Clock, on_update) -> None:
    """Training of TOTAL steps logged every 20 (10 s per 20 steps), validated every 40."""
    reporter.start({"name": "demo", "run_dir": "/tmp/demo"})
    reporter.stage("training")
    reporter.train_begin(TOTAL, 0)
    for step in range(20, TOTAL + 1, 20):
        clock.now += 10
        reporter.log(step, {"loss": 0.9285, "learning_rate": 1.2e-3, "epoch": step / 40, "grad_norm": 1.5})
        on_update(step, "log")
        if step % 40 == 0:
            reporter.evaluated("validation", step, {**SCORES, "accuracy": 0.4 + step / 1000})
            on_update(step, "evaluated")
    reporter.train_end()  # as the pipeline does, before the final evaluations
    reporter.evaluated("test", None, SCORES)
    reporter.finish("completed", {"name": "demo", "metrics": {"validation": SCORES, "test": SCORES}, "baselines": []})


@pytest.mark.parametrize("width", [80, 160])
def test_live_area_keeps_step_eta_and_last_scores(width):
    console = Console(file=io.StringIO(), force_terminal=True, width=width)
    clock = Clock()
    reporter = _reporter(console, clock)
    seen = []

    def check(step, event):
        area = _area(reporter, width)
        text = "\n".join(area)
        assert all(len(line) <= width for line in area), area
        bar_line = area[0]  # one line: description, bar, step/total, elapsed, ETA
        assert "training" in bar_line and "━" in bar_line
        assert f"{step}/{TOTAL}" in bar_line
        # 0.5 s a step measured, so the steps left take (TOTAL - step) / 2 seconds
        remaining = (TOTAL - step) // 2
        assert f"eta 0:{remaining // 60:02d}:{remaining % 60:02d}" in bar_line, bar_line
        assert "-:--:--" not in text
        assert "loss 0.9285" in text and "lr 1.20e-03" in text and "grad_norm 1.5" in text
        if step > 40 or event == "evaluated":  # after the first evaluation: its scores stay, with their step
            last = step - step % 40 if event == "evaluated" or step % 40 else step - 40
            assert f"accuracy {0.4 + last / 1000:.4g}" in text
            assert f"validation @{last}" in text
            assert "precision_macro 0.9876" in text  # the sixth figure: none squeezed out
            assert "runtime" not in text
        seen.append(step)

    _run(reporter, clock, check)
    assert seen[-1] == TOTAL
    out = ANSI.sub("", console.file.getvalue())
    lines = [line for chunk in out.split("\n") for line in chunk.split("\r")]
    assert max(len(line) for line in lines) <= width  # everything drawn, live area and scrollback
    assert re.search(r"validation \(step 40\): loss 1\.031\s+accuracy 0\.44", out)  # printed above the area
    assert "demo: completed" in out and "precision_macro" in out  # the final table
    assert re.search(r"test \(final\): loss 1\.031", out)


def test_eta_between_logs_counts_down_and_waits_for_a_measured_step():
    console = Console(file=io.StringIO(), force_terminal=True, width=80)
    clock = Clock()
    reporter = _reporter(console, clock)
    reporter.train_begin(100, 0)
    assert "eta …" in _area(reporter, 80)[0]  # nothing measured yet: no made-up number
    clock.now += 20
    reporter.log(10, {"loss": 1.0})  # 2 s a step, 90 to go: 3 minutes
    assert "eta 0:03:00" in _area(reporter, 80)[0]
    clock.now += 15  # no log for 15 s: the estimate keeps counting down
    assert "eta 0:02:45" in _area(reporter, 80)[0]
    clock.now += 60  # the next log is late (the pace dropped): no lower than the 80 steps after it
    assert "eta 0:02:40" in _area(reporter, 80)[0]
    reporter.train_end()


def test_resumed_run_measures_from_the_resume_step():
    console = Console(file=io.StringIO(), force_terminal=True, width=80)
    clock = Clock()
    reporter = _reporter(console, clock)
    reporter.train_begin(100, 50)
    clock.now += 10
    reporter.log(60, {"loss": 1.0})  # 1 s a step since the resume, 40 to go
    line = _area(reporter, 80)[0]
    assert "60/100" in line and "eta 0:00:40" in line
    reporter.train_end()
    assert "resuming at step 50 of 100" in ANSI.sub("", console.file.getvalue())


@pytest.mark.parametrize("terminal", [False, True])
def test_plain_lines_without_control_codes(terminal):
    """Off a terminal (or with `plain`): one line a log step, one an evaluation, however long."""
    console = Console(file=io.StringIO(), force_terminal=terminal, width=80, color_system=None)
    clock = Clock()
    reporter = _reporter(console, clock, plain=terminal)
    assert not reporter.live
    _run(reporter, clock, lambda step, event: None)
    out = console.file.getvalue()
    assert "\x1b" not in out and "\r" not in out
    lines = out.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == [f"{s}/{TOTAL}" for s in range(20, TOTAL + 1, 20)]
    assert all("loss 0.9285" in line and "learning_rate 1.20e-03" in line for line in steps)
    evaluations = [line for line in lines if line.startswith("validation (step")]
    assert len(evaluations) == 3 and all("recall_macro 0.4668" in line for line in evaluations)
    assert "demo: completed" in out
    # the stages' messages and warnings too: a sentence is never cut between two lines
    long = "/data/a/long/path/to/posts.csv: split 3000 rows into train 2400, validation 300, test 300 (stratified)"
    reporter.stage(long)
    reporter.message(long)
    reporter.message(long, "warning")
    lines = console.file.getvalue().splitlines()
    assert [line for line in lines if long in line] == [f"- {long}", f"  {long}", f"warning: {long}"]


def test_in_sweep_stays_brief():
    console = Console(file=io.StringIO(), width=80, color_system=None)
    reporter = _reporter(console)
    reporter.start({"name": "trial", "run_dir": "/tmp/t", "sweep": "s"})
    reporter.stage("loading data")
    reporter.message("rows: 10")
    reporter.message("careful", "warning")
    reporter.train_begin(10, 0)
    reporter.log(10, {"loss": 1.0})
    reporter.finish("completed", {"name": "trial", "metrics": {"validation": {"loss": 1.0}}, "baselines": []})
    out = console.file.getvalue()
    assert "loading data" not in out and "rows: 10" not in out and "trial" not in out
    assert "warning: careful" in out and "step 10/10" in out


def test_lora_run_shows_no_library_chatter(tmp_path):
    """An offline recipe with LoRA on GPT-2: no raw warnings, no tokenizer bars, no Hub probe note
    (even with the offline variables unset, as a user's shell has them)."""
    recipe = tiny_recipe(tmp_path / "tiny.toml", rows=64, epochs=1, eval_every=1)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    done = subprocess.run(
        [*finetune_subprocess(), "run", str(recipe), "--output", str(tmp_path / "run"), "--set", "strategy.type=lora"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    for chatter in ("UserWarning", "FutureWarning", "Pre-processing sequences", "unreachable"):
        assert chatter not in out, out
    assert "\n\n\n" not in done.stdout  # the tokenizer's bars left blank lines in logs
    assert "step 1/" in out and "validation (step 1)" in out


def test_hub_probe_only_for_recipes_that_read_the_hub(tmp_path, monkeypatch, capsys):
    """No probe, no note for a recipe that reads nothing from the Hub: it just works offline."""
    from runner.running import recipes
    from runner.toolkit import hub

    probes = []
    monkeypatch.setattr(hub, "go_offline_if_unreachable", lambda: probes.append(1) or "hub.example is unreachable")
    offline = recipes.load_recipe(tiny_recipe(tmp_path / "tiny.toml"))
    online = recipes.load_recipe(ROOT / "recipes" / "gpt2-tweet-sentiment-lora.toml")
    assert recipes.hub_ids(offline) == []
    assert "gpt2" in recipes.hub_ids(online) and "mteb/tweet_sentiment_extraction" in recipes.hub_ids(online)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name)
    recipes.go_offline(recipe=offline)
    assert probes == [] and os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == "1"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the user's own setting stays
    recipes.go_offline(recipe=offline)
    assert os.environ["HF_HUB_OFFLINE"] == "0" and probes == []
    recipes.go_offline(recipe=online)
    assert probes == [1] and "unreachable" in capsys.readouterr().err


def test_eta_leaves_out_the_slow_start():
    """The steps before the first report carry the start-up; once a second report is in, the pace
    is measured from the first."""
    console = Console(file=io.StringIO(), force_terminal=True, width=80)
    clock = Clock()
    reporter = _reporter(console, clock)
    reporter.train_begin(100, 0)
    clock.now += 30  # step 1 took 30 s (start-up)
    reporter.log(1, {"loss": 1.0})
    clock.now += 19  # then 1 s a step
    reporter.log(20, {"loss": 0.9})
    assert "eta 0:01:20" in _area(reporter, 80)[0]
    reporter.train_end()


def test_long_work_outside_training_shows_how_far_it_got():
    """Answering prompts before and after training: counts off a terminal, a bar that goes away on one."""
    console, clock = Console(file=io.StringIO(), width=80, color_system=None), Clock()
    reporter = _reporter(console, clock)
    label = "base model, test: answering"
    for done in (0, 32, 64, 96, 100):
        reporter.progress(label, done, 100)
        clock.now += 6.0  # a line every PLAIN_PROGRESS_S (10 s) at most, and at the start and the end
    assert console.file.getvalue().splitlines() == [f"  {label} {n}/100" for n in (0, 64, 100)]

    console = Console(file=io.StringIO(), force_terminal=True, width=80)
    reporter = _reporter(console, clock)
    reporter.progress(label, 0, 100)
    reporter.progress(label, 32, 100)
    drawn = ANSI.sub("", console.file.getvalue())
    assert f"{label} " in drawn and "32/100" in drawn
    reporter.progress(label, 100, 100)
    assert reporter.work is None and console.file.getvalue().endswith("\x1b[2K")  # erased: the results follow


def test_a_failing_last_reporter_says_so(capsys):
    from runner.pipeline.events import Events

    class Broken(Rich):
        def stage(self, text):
            raise ValueError("no screen")

    events = Events([Broken(RichOptions(), console=Console(file=io.StringIO()))])
    events.stage("tokenizing")
    assert "reporter 'rich' failed and was switched off: ValueError('no screen')" in capsys.readouterr().err


@pytest.mark.parametrize("terminal", [False, True])
def test_figures_a_trainer_adds_to_its_log_are_shown_after_the_usual_ones(terminal):
    """A preference trainer logs rewards/margins beside the loss: the plain line and the live
    panel show it, after loss, lr and the rest."""
    console = Console(file=io.StringIO(), force_terminal=terminal, width=160, color_system=None)
    reporter = _reporter(console)
    reporter.start({"name": "demo", "run_dir": "/tmp/demo"})
    reporter.train_begin(10, 0)
    reporter.log(5, {"loss": 0.61, "learning_rate": 1e-3, "rewards/margins": 0.25, "epoch": 0.5})
    shown = "\n".join(_area(reporter, 160)) if terminal else console.file.getvalue()
    assert "rewards/margins 0.25" in shown, shown
    assert shown.index("loss 0.61") < shown.index("rewards/margins")
