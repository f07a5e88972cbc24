"""The report leads with the answer: the summary card under the title, built from a real (tiny) run,
the detail sections after it, and the card on the first screen of a 1280x900 window."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, run_recipe, tiny_recipe

from runner.report.page import build_report
from runner.report.run_record import baselines, interval_of, interval_text, metric_text, read_run, scores
from runner.report.sections.summary import headline_metric
from runner.report.values import esc

AUDIT = '\n[[audits]]\ntype = "leakage"\n'


def section(html: str, key: str) -> str:
    match = re.search(rf'<section id="{key}">(.*?)</section>', html, re.S)
    assert match, f"no section {key}"
    return match.group(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("summary")
    run_recipe(tiny_recipe(root / "recipe.toml", rows=200, epochs=2, extra=AUDIT), root / "run")
    build_report(root / "run")
    return root / "run"


def test_summary_card_comes_first_and_answers(run):
    html = (run / "report.html").read_text(encoding="utf-8")
    after_header = html[html.index("</header>") :]
    assert re.match(r'</header><main><section id="summary">', after_header)
    order = re.findall(r'<section id="([a-z]+)">', html)
    assert order == ["summary", "results", "training", "data", "audits", "recipe", "environment"]

    card = section(html, "summary")
    assert "classification" in card and "gpt2" in card and "full" in card  # task, model, strategy
    rec = read_run(run)
    test = scores(rec.evaluation["finetuned"]["test"])
    metric = headline_metric(rec, "test", list(test))
    assert metric and metric != "loss"
    assert metric_text(test[metric]) in card
    interval = interval_of(rec, "test", metric)
    assert interval and esc(interval_text(interval)) in card
    names = [b["name"] for b in baselines(rec)]
    assert "base model" in names and "majority class" in names
    for b in baselines(rec):
        assert esc(b["name"]) in card and metric_text(b["test"][metric]) in card
    assert esc(str(run / "model")) in card and "AutoModelForSequenceClassification" in card
    assert re.search(r'badge (pass|fail|info)">(PASS|FAIL|INFO)</span> leakage', card)
    assert rec.diagnosis["verdict"] in card


def test_no_generated_samples_section_for_a_classifier(run):
    html = (run / "report.html").read_text(encoding="utf-8")
    assert 'id="samples"' not in html and "Generated samples" not in html


def test_a_run_that_failed_early_still_has_a_summary(run, tmp_path):
    failed = tmp_path / "failed"
    failed.mkdir()
    shutil.copy(run / "recipe.resolved.toml", failed / "recipe.resolved.toml")
    (failed / "status.json").write_text(json.dumps({"state": "failed", "error": "OSError: <no data>"}))
    html = build_report(failed).read_text(encoding="utf-8")
    card = section(html, "summary")
    assert "could not be shown" not in html
    assert "classification" in card and card.count("not recorded") >= 3  # results, audits, diagnosis, model
    assert "OSError: &lt;no data&gt;" in html

    (failed / "recipe.resolved.toml").unlink()  # not even a recipe
    card = section(build_report(failed).read_text(encoding="utf-8"), "summary")
    assert "could not be shown" not in card and card.count("not recorded") >= 6


def test_user_text_in_the_card_is_escaped(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    bad = "<script>alert(1)</script>"
    evaluation = json.loads((copy / "evaluation.json").read_text())
    evaluation["baselines"][0]["name"] = bad
    (copy / "evaluation.json").write_text(json.dumps(evaluation))
    audits = json.loads((copy / "audits.json").read_text())
    audits["audits"][0]["name"] = bad
    (copy / "audits.json").write_text(json.dumps(audits))
    stats = json.loads((copy / "data_stats.json").read_text())
    stats["labels"]["train"][bad] = 3
    (copy / "data_stats.json").write_text(json.dumps(stats))
    html = build_report(copy).read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    card = section(html, "summary")
    assert f'<th scope="row">{esc(bad)}</th>' in card  # the baseline's row
    assert f"</span> {esc(bad)}</span>" in card  # the audit's verdict
    assert esc(bad) in section(html, "data")


def _bench():
    spec = importlib.util.spec_from_file_location("report_screenshot", ROOT / "bench" / "report_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    not any(shutil.which(b) for b in ("chromium", "chromium-headless-shell")), reason="no chromium installed"
)
def test_summary_card_is_on_the_first_screen(run, tmp_path):
    bench = _bench()
    png = bench.screenshot(run / "report.html", tmp_path / "first-screen.png", width=1280, height=900)
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bottom = bench.measure_bottom(run / "report.html", "summary", width=1280, height=900)
    assert 0 < bottom <= 900, f"the summary card ends at {bottom} px"
    assert "<script" not in (run / "report.html").read_text(encoding="utf-8")  # the probe went into a copy only
