"""sweep.html from hand-made study summaries: no Optuna, no training, so every edge case is cheap."""

from __future__ import annotations

import copy
import re
from html import unescape
from pathlib import Path

import pytest

from runner.sweep.report_charts import Axis, make_axis
from runner.sweep.report_page import render_sweep_report, write_sweep_report

EVIL = "<script>alert('x')</script>"


def _trial(number, state="complete", value=None, params=None, **extra):
    return {
        "number": number,
        "state": state,
        "params": params if params is not None else {},
        "value": value,
        "intermediate": extra.pop("intermediate", {}),
        "duration_s": extra.pop("duration_s", 12.5),
        "run_dir": extra.pop("run_dir", None),
        "report": extra.pop("report", None),
        "error": extra.pop("error", None),
        "host": extra.pop("host", "node-1"),
    }


def make_sweep(directory: Path = Path("/runs/study"), **changes) -> dict:
    trials = [
        _trial(
            0,
            value=0.81,
            params={"training.learning_rate": 1e-5, "strategy.r": 8, "strategy.type": "lora"},
            intermediate={"1": 0.7, "2": 0.81},
            report=str(directory / "trial-0000" / "report.html"),
        ),
        _trial(
            1,
            value=0.93,
            params={"training.learning_rate": 3e-4, "strategy.r": 32, "strategy.type": "lora"},
            intermediate={"1": 0.8, "2": 0.93},
            run_dir=str(directory / "trial-0001"),
            report=str(directory / "trial-0001" / "report.html"),
        ),
        # a conditional key: ia3 takes no r
        _trial(2, value=0.88, params={"training.learning_rate": 1e-4, "strategy.type": "ia3"}),
        _trial(
            3,
            "pruned",
            params={"training.learning_rate": 1e-3, "strategy.r": 16, "strategy.type": "lora"},
            intermediate={"1": 0.2},
        ),
        _trial(
            4,
            "failed",
            params={"training.learning_rate": 2e-5, "strategy.r": 8, "strategy.type": "lora"},
            error="CUDA out of memory " * 200,
        ),
        _trial(5, "running", params={"training.learning_rate": 5e-5, "strategy.r": 64, "strategy.type": "lora"}),
    ]
    sweep = {
        "name": "tune-lora",
        "recipe": "/recipes/lora.toml",
        "directory": str(directory),
        "metric": "validation.accuracy",
        "direction": "maximize",
        "storage": "sqlite:///study.db",
        "sampler": "tpe",
        "pruner": "median",
        "target_trials": 8,
        "space": {
            "training.learning_rate": {"log_uniform": [1e-5, 1e-3]},
            "strategy.r": {"log_int": [8, 64]},
            "strategy.type": {"choice": ["lora", "ia3"]},
        },
        "trials": trials,
        "best": {"number": 1, "params": trials[1]["params"], "value": 0.93, "run_dir": trials[1]["run_dir"]},
        "importances": {"training.learning_rate": 0.7, "strategy.r": 0.2, "strategy.type": 0.1},
        "importances_note": None,
        "seeds": {
            "seeds": [8, 9],
            "metric": "validation.accuracy",
            "values": [0.92, 0.94],
            "mean": 0.93,
            "std": 0.0141,
            "test": {"accuracy": {"values": [0.9, 0.91], "mean": 0.905, "std": 0.007}},
            "runs": ["/a", "/b"],
            "best_trial": 1,
        },
        "best_recipe": str(directory / "best.toml"),
    }
    sweep.update(changes)
    return sweep


def _section(page: str, key: str) -> str:
    found = re.search(rf'<section id="{key}"[^>]*>(.*?)</section>', page, re.S)
    assert found, f"no section {key}"
    return found.group(1)


def _text(html: str) -> str:
    """What a reader sees: the tags stripped, the entities decoded."""
    return unescape(re.sub(r"<[^>]+>", "", html))


def _assert_self_contained(page: str) -> None:
    lower = page.lower()
    assert "<script" not in lower
    assert "http://" not in lower and "https://" not in lower
    assert "src=" not in lower and "url(" not in lower and "@import" not in lower


def test_summary_card_comes_first_with_the_best_trial():
    page = render_sweep_report(make_sweep())
    _assert_self_contained(page)
    assert page.index('id="summary"') < page.index('id="importance"') < page.index('id="trials"')
    card = _text(_section(page, "summary"))
    assert "best: trial 1" in card and "0.93" in card
    assert "training.learning_rate" in card and "3.000e-04" in card and "32" in card and "lora" in card
    assert "5 of 8 done" in card  # finished: complete, pruned and failed
    for count in ("3 complete", "1 pruned", "1 failed", "1 running", "0 waiting"):
        assert count in card
    assert "finetune run best.toml" in card
    assert "0.93 ± 0.0141 over 2 seeds" in card and "test.accuracy" in card and "0.905 ± 0.007" in card
    # the best trial's report lies under the sweep directory: a relative link
    assert '<a href="trial-0001/report.html">' in _section(page, "summary")


def test_report_outside_the_sweep_directory_is_shown_as_text():
    sweep = make_sweep()
    sweep["trials"][1]["report"] = "/elsewhere/trial-0001/report.html"
    card = _section(render_sweep_report(sweep), "summary")
    assert "<a href" not in card and "/elsewhere/trial-0001/report.html" in card


def test_parallel_coordinates_draws_one_polyline_per_complete_trial():
    sweep = make_sweep()
    svg = _section(render_sweep_report(sweep), "parallel")
    complete = [t for t in sweep["trials"] if t["state"] == "complete"]
    assert svg.count('class="trial complete"') == len(complete) == 3
    assert svg.count('class="trial pruned"') == 1 and 'stroke-dasharray="4 3"' in svg
    # one axis per parameter plus the objective
    assert svg.count('class="axis"') == len(sweep["space"]) + 1
    # the ia3 trial skips the r axis: one point fewer than the others
    lines = dict(re.findall(r'data-trial="(\d+)"[^>]*points="([^"]*)"', svg))
    assert len(lines["2"].split()) == 3 and len(lines["1"].split()) == 4
    # the categorical axis labels its choices
    assert ">lora<" in svg and ">ia3<" in svg


def test_log_axes_label_decades():
    axis = make_axis("training.learning_rate", {"log_uniform": [1e-5, 1e-3]}, [3e-4])
    assert axis.kind == "log"
    assert [label for _, label in axis.ticks()] == ["1e-5", "1e-4", "1e-3"]
    assert axis.frac(1e-4) == pytest.approx(0.5)
    page = render_sweep_report(make_sweep())
    parallel = _section(page, "parallel")
    for label in ("1e-5", "1e-4", "1e-3"):
        assert f">{label}<" in parallel
    assert "training.learning_rate (log)" in parallel
    # less than a decade (log_int [8, 64]): 1-2-5 steps
    r = make_axis("strategy.r", {"log_int": [8, 64]}, [8, 32])
    assert [label for _, label in r.ticks()] == ["10", "20", "50"]


def test_axes_with_zero_range_and_categories():
    flat = make_axis("x", {"uniform": [0.5, 0.5]}, [0.5])
    assert flat.low < 0.5 < flat.high and flat.frac(0.5) == pytest.approx(0.5)
    unknown = make_axis("y", None, ["a", True, 1])
    assert unknown.kind == "category" and len(unknown.categories) == 3  # True and 1 stay apart
    assert unknown.frac("missing") is None
    assert Axis("z", "log", 1.0, 10.0).frac(-1) is None


def test_slices_and_intermediate_values():
    page = render_sweep_report(make_sweep())
    slices = _section(page, "slices")
    assert slices.count('class="point"') == 3 + 2 + 3  # learning rate, r (not for ia3), type
    assert "Objective by trial" in slices
    inter = _section(page, "intermediate")
    assert 'class="curve pruned"' in inter and 'class="pruned-at"' in inter
    assert inter.count('class="curve complete"') == 2


def test_trials_table_and_settings():
    page = render_sweep_report(make_sweep())
    table = _section(page, "trials")
    assert table.count("<tr") == 1 + 6
    assert '<tr class="ours">' in table
    assert 'title="not searched in this trial"' in table  # trial 2 has no strategy.r
    assert "CUDA out of memory" in table and len(table) < 20_000  # the long error is shortened
    assert '<a href="trial-0000/report.html">' in table
    settings = unescape(_section(page, "space"))
    for text in ("tpe", "median", "sqlite:///study.db", "/recipes/lora.toml", "log_uniform", "lora, ia3"):
        assert text in settings


def test_user_strings_are_escaped():
    sweep = make_sweep(name=EVIL, metric=f"validation.{EVIL}", storage=EVIL, recipe=EVIL)
    sweep["space"][EVIL] = {"choice": [EVIL, "b"]}
    for t in sweep["trials"]:
        t["params"][EVIL] = EVIL
        t["error"] = EVIL
        t["host"] = EVIL
    sweep["best"]["params"] = sweep["trials"][1]["params"]
    sweep["importances"][EVIL] = 0.05
    sweep["importances_note"] = EVIL
    page = render_sweep_report(sweep)
    _assert_self_contained(page)
    assert "&lt;script&gt;" in page


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(
            lambda s: s.update(trials=[], best=None, importances=None, seeds=None, best_recipe=None), id="empty"
        ),
        pytest.param(
            lambda s: s.update(
                trials=[_trial(n, "failed", params={"strategy.r": 8}, error=EVIL * 50) for n in range(3)],
                best=None,
                importances=None,
                importances_note="needs at least 2 complete trials",
                seeds=None,
                best_recipe=None,
            ),
            id="all-failed",
        ),
        pytest.param(
            lambda s: s.update(
                trials=[_trial(0, value=0.5, params={"strategy.type": "lora"})],
                best={"number": 0, "params": {"strategy.type": "lora"}, "value": 0.5, "run_dir": None},
                importances=None,
                seeds=None,
                space={"strategy.type": {"choice": ["lora"]}},
            ),
            id="single-choice-only",
        ),
        pytest.param(
            lambda s: s.update(
                trials=[_trial(n, value=0.7, params={"training.learning_rate": 1e-4}) for n in range(3)],
                best={"number": 0, "params": {"training.learning_rate": 1e-4}, "value": 0.7, "run_dir": None},
            ),
            id="equal-values",
        ),
        pytest.param(
            lambda s: s.update(
                trials=[_trial(0, value=None, params={}), _trial(1, "waiting")], best=None, space={}, importances=None
            ),
            id="values-none",
        ),
        pytest.param(lambda s: s.update(space={"odd": "not-a-table"}, direction="minimize"), id="odd-space"),
    ],
)
def test_edge_cases_render(change):
    sweep = make_sweep()
    change(sweep)
    page = render_sweep_report(copy.deepcopy(sweep))
    _assert_self_contained(page)
    assert "could not be shown" not in page
    assert page.index('id="summary"') < page.index('id="trials"')


def test_empty_and_failed_studies_say_why_there_is_no_best():
    empty = render_sweep_report(make_sweep(trials=[], best=None, importances=None, seeds=None, best_recipe=None))
    assert "no trials yet" in _section(empty, "summary") and "no trials yet" in _section(empty, "trials")
    failed = make_sweep(best=None, importances=None, seeds=None, best_recipe=None)
    failed["trials"] = [_trial(0, "failed", error="boom")]
    assert "every trial failed" in _section(render_sweep_report(failed), "summary")


def test_write_sweep_report_writes_the_file(tmp_path):
    out = write_sweep_report(tmp_path / "sub" / "sweep.html", make_sweep(tmp_path))
    assert out == tmp_path / "sub" / "sweep.html" and out.is_file()
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "tune-lora" in text
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
