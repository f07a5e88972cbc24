"""The run report (report.html) and the model card (model/README.md), built from hand-made run directories."""

from __future__ import annotations

import hashlib
import json
import re
from html import unescape
from pathlib import Path

import pytest
import tomli_w
from conftest import cli

from runner.report.chart_frame import nice_ticks
from runner.report.charts import Series, line_chart
from runner.report.model_card import to_yaml, write_model_card
from runner.report.page import build_report
from runner.report.run_record import greater_is_better, read_run, scores, source_fingerprints
from runner.report.values import fmt

LABELS = ["negative", "neutral", "positive"]


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")


def make_run(
    root: Path,
    *,
    learning_rate: float = 0.002,
    description: str = "demo <script>alert('x')</script> & co",
    val_loss: float = 0.31,
    val_accuracy: float = 0.9,
    audits: bool = True,
    adapter: bool = False,
    greater_is_better: dict | None = None,
) -> Path:
    """A completed run directory with every record of docs/rundir (plausible numbers, one "nan" loss)."""
    root.mkdir(parents=True)
    recipe = {
        "run": {"name": "demo", "description": description, "seed": 42, "output_dir": "runs"},
        "data": {"sources": [{"type": "files", "path": "data/train.csv"}], "split": {"train": 0.8}},
        "tokenizer": {"type": "pretrained", "max_length": 48},
        "model": {"type": "pretrained", "path": "gpt2"},
        "task": {"type": "classification"},
        "strategy": {"type": "lora", "r": 8} if adapter else {"type": "full"},
        "training": {"type": "hf", "learning_rate": learning_rate, "batch_size": 32, "epochs": 3.0},
        "metrics": [{"type": "accuracy"}],
    }
    (root / "recipe.resolved.toml").write_text("# resolved\n" + tomli_w.dumps(recipe), encoding="utf-8")
    _write_json(
        root / "environment.json",
        {
            "python": "3.11.7",
            "packages": {"torch": "2.13.0", "transformers": "5.23.0", "peft": "0.21.2"},
            "torch_threads": 2,
            "device": {"cuda": False, "threads": 2},
            "git": {"commit": "abc123", "dirty": False},
            "data": [{"source": "files", "files": {"data/train.csv": "ab" * 32}}],
            "split_sizes": {"train": 240, "validation": 30, "test": 30},
            "recipe_sha256": "0" * 64,
            "max_length": 48,
            "parameters": {"total": 1000, "trainable": 100},
            "world_size": 1,
        },
    )
    _write_json(
        root / "status.json",
        {"state": "completed", "global_step": 120, "started": "2026-01-02T10:00:00", "finished": "2026-01-02T10:05:00"},
    )
    log = []
    for step in range(10, 130, 10):
        loss = "nan" if step == 50 else round(1.2 - step / 150, 4)
        log.append({"step": step, "split": "train", "loss": loss, "learning_rate": 0.002 * (1 - step / 130),
                    "grad_norm": 1.5, "epoch": step / 40})  # fmt: skip
    for step, loss in ((40, 0.7), (80, 0.4), (120, val_loss)):
        log.append({"step": step, "split": "validation", "loss": loss, "accuracy": 1 - loss / 3, "epoch": step / 40})
    final_val = {"loss": val_loss, "accuracy": val_accuracy, "runtime": 0.3}
    final_test = {"loss": 0.29, "accuracy": 0.92, "runtime": 0.3}
    log.append({"step": None, "split": "validation", "final": True, **final_val})
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log), encoding="utf-8")
    _write_json(
        root / "metrics.json",
        {"train": {"global_step": 120, "train_loss": 0.6, "train_runtime": 61.0}, "validation": final_val,
         "test": final_test},
    )  # fmt: skip
    _write_json(
        root / "model" / "finetune.json",
        {"task": "classification", "task_state": {"labels": LABELS}, "head": "sequence_classification",
         "strategy": "lora" if adapter else "full", "adapter": adapter, "base_model": "gpt2", "max_length": 48,
         "parameters": {"total": 1000, "trainable": 100}, "recipe": "demo"},
    )  # fmt: skip
    _write_json(
        root / "evaluation.json",
        {
            "greater_is_better": greater_is_better or {"loss": False, "accuracy": True},
            "baselines": [
                {"name": "base model", "note": "an untrained classifier", "validation": {"loss": 1.1, "accuracy": 0.33},
                 "test": {"loss": 1.12, "accuracy": 0.34}},
                {"name": "bigger model", "note": "a model that does better", "test": {"accuracy": 0.97}},
            ],
            "finetuned": {"validation": final_val, "test": final_test},
            "intervals": {"test": {"accuracy": {"low": 0.8833, "high": 0.9567, "confidence": 0.95, "resamples": 1000}}},
            "confusion": {"test": {"labels": LABELS, "matrix": [[9, 1, 0], [2, 7, 1], [0, 3, 7]]}},
            "diagnosis": {"verdict": "good fit", "summary": "Validation loss fell.", "overfitting_from": None,
                          "best": {"step": 80, "epoch": 2.0, "validation_loss": 0.4}},
        },
    )  # fmt: skip
    if audits:
        _write_json(
            root / "audits.json",
            {"audits": [
                {"name": "leakage", "type": "leakage", "passed": True, "summary": "no duplicates", "thresholds": {},
                 "figures": {"checked": 60}, "examples": []},
                {"name": "bias", "type": "counterfactual", "passed": False, "summary": "flip rate 0.12 > 0.05",
                 "thresholds": {"max_flip_rate": 0.05},
                 "figures": {"base": {"flip_rate": 0.02}, "finetuned": {"flip_rate": 0.12}},
                 "examples": [{"text": "he <b>liked</b> it", "counterfactual": "she <b>liked</b> it"}]},
            ]},
        )  # fmt: skip
    _write_json(
        root / "data_stats.json",
        {"max_length": 48, "splits": {"train": 240, "validation": 30, "test": 30},
         "labels": {"train": {"negative": 80, "neutral": 90, "positive": 70},
                    "validation": {"negative": 10, "neutral": 10, "positive": 10}},
         "lengths": {"train": {"bins": [0, 16, 32, 48], "counts": [100, 120, 20], "mean": 19.5, "median": 18,
                               "p95": 40, "max": 48, "truncated": 7}}},
    )  # fmt: skip
    (root / "samples.jsonl").write_text(json.dumps({"prompt": "<i>hi</i>", "response": "ok"}) + "\n", encoding="utf-8")
    return root


def section(html: str, key: str) -> str:
    match = re.search(rf'<section id="{key}">(.*?)</section>', html, re.S)
    assert match, f"no section {key}"
    return match.group(1)


@pytest.fixture
def run(tmp_path) -> Path:
    return make_run(tmp_path / "run")


def test_report_has_every_section_with_its_figures(run):
    html = build_report(run).read_text(encoding="utf-8")
    assert (run / "report.html").is_file()

    training = section(html, "training")
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in log if r["split"] == "train" and r["loss"] != "nan"]
    points = re.search(r'data-series="training loss"[^>]*points="([^"]+)"', training).group(1).split()
    assert len(points) == len(logged)  # the "nan" loss is skipped, every other logged step is a point
    validated = [r for r in log if r["split"] == "validation" and not r.get("final")]
    points = re.search(r'data-series="validation loss"[^>]*points="([^"]+)"', training).group(1).split()
    assert len(points) == len(validated)
    assert re.search(r'class="marker"[^>]*><title>best point: step 80, epoch 2', training)
    assert "learning rate" in unescape(training) and "good fit" in training

    results = section(html, "results")
    confusion = json.loads((run / "evaluation.json").read_text())["confusion"]["test"]
    for i, true in enumerate(LABELS):
        for j, predicted in enumerate(LABELS):
            count = confusion["matrix"][i][j]
            cell = re.search(rf'title="true {true}, predicted {predicted}: (\d+) [^"]*">(\d+)</td>', results)
            assert cell and int(cell.group(1)) == int(cell.group(2)) == count
    assert "95% CI 0.8833 – 0.9567" in results
    # fine-tuned test accuracy 0.92: better than the base model (0.34), worse than "bigger model" (0.97)
    assert re.search(r'class="diff better"[^>]*>\+0\.5800<', results)
    assert re.search(r'class="diff worse"[^>]*>-0\.0500<', results)
    assert re.search(r'class="diff better"[^>]*>-0\.8300<', results)  # loss: lower is better

    audits = section(html, "audits")
    assert re.search(r'badge fail">FAIL</span> bias', audits)
    assert re.search(r'badge pass">PASS</span> leakage', audits)
    assert "flip rate 0.12 &gt; 0.05" in audits

    data = section(html, "data")
    assert data.count('class="bar"') == len(LABELS) * 2  # two splits with labels
    assert "max_length 48" in data and "7 truncated" in data
    recipe = section(html, "recipe")
    assert "<details" in recipe and "learning_rate = 0.002" in recipe and "ab" * 32 in recipe
    # environment.json recorded another hash than the file's: the report says the file changed since
    actual = hashlib.sha256((run / "recipe.resolved.toml").read_bytes()).hexdigest()
    assert "0" * 64 in recipe and f"changed since the run started (now <code>{actual[:12]}" in recipe
    environment = section(html, "environment")
    assert "5.23.0" in environment and "abc123" in environment
    samples = section(html, "samples")
    assert "&lt;i&gt;hi&lt;/i&gt;" in samples and "before training" not in samples


def test_samples_show_the_base_models_answer_beside_the_tuned_one(run):
    rows = [{"prompt": "p1", "response": "after1", "before": "before1"}, {"prompt": "p2", "response": "after2"}]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    samples = section(build_report(run).read_text(encoding="utf-8"), "samples")
    assert "<th>before training (base model)</th><th>after training</th>" in samples
    assert "<td><pre>p1</pre></td><td><pre>before1</pre></td><td><pre>after1</pre></td>" in samples
    assert "<td><pre>p2</pre></td><td><pre></pre></td><td><pre>after2</pre></td>" in samples


def test_report_escapes_user_content_and_loads_nothing(run):
    html = build_report(run).read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in html
    assert "<b>liked</b>" not in html and "&lt;b&gt;liked&lt;/b&gt;" in html
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"\b(src|srcset)=", html) and "<link" not in html and "@import" not in html
    assert not re.search(r'href="(?!#)', html)  # in-page anchors only


def test_report_degrades_when_records_are_missing(tmp_path):
    run = tmp_path / "failed"
    run.mkdir()
    (run / "recipe.resolved.toml").write_text('[run]\nname = "broken"\n', encoding="utf-8")
    _write_json(run / "status.json", {"state": "failed", "error": "ValueError: <bad> data"})
    html = build_report(run).read_text(encoding="utf-8")
    assert "could not be shown" not in html  # every section knows how to say "not recorded"
    assert "ValueError: &lt;bad&gt; data" in html
    for key in ("environment", "data", "training", "results", "audits", "samples"):
        assert "not recorded" in section(html, key), key
    assert 'badge fail">failed' in html

    (run / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": "nan"}\n{"step": 2, "spl', "utf-8")
    _write_json(run / "environment.json", ["not", "an", "object"])
    html = build_report(run).read_text(encoding="utf-8")
    assert "environment.json is not a JSON object" in html
    assert "<polyline" not in section(html, "training")  # a lone nan loss draws nothing


def test_report_without_audits_or_evaluation(tmp_path):
    run = make_run(tmp_path / "run", audits=False)
    (run / "evaluation.json").unlink()
    html = build_report(run).read_text(encoding="utf-8")
    assert "not recorded: no audits.json" in section(html, "audits")
    results = section(html, "results")
    assert "baselines not recorded" in results and "0.9200" in results
    assert "Diagnosis" in section(html, "training") and "not recorded" in section(html, "training")


def test_finetune_report_command_writes_report_and_card(run, capsys):
    assert cli("report", run) == 0
    out = capsys.readouterr().out
    assert str(run / "report.html") in out and (run / "model" / "README.md").is_file()


def test_finetune_report_on_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert cli("report", tmp_path) == 2
    assert "is not a run directory" in capsys.readouterr().err


def front_matter(card: str) -> dict:
    yaml = pytest.importorskip("yaml")
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, "no front matter"
    return yaml.safe_load(match.group(1))


def test_model_card_front_matter_and_sections(run):
    write_model_card(run, run / "model")
    card = (run / "model" / "README.md").read_text(encoding="utf-8")
    meta = front_matter(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert meta["tags"] == ["finetune-runner", "full"] and meta["base_model"] == "gpt2"
    results = {r["dataset"]["split"]: r for r in meta["model-index"][0]["results"]}
    recorded = json.loads((run / "metrics.json").read_text())
    for split in ("validation", "test"):
        values = {m["type"]: m["value"] for m in results[split]["metrics"]}
        assert values == {"loss": recorded[split]["loss"], "accuracy": recorded[split]["accuracy"]}
        assert results[split]["task"]["type"] == "text-classification"
    for heading in ("Model description", "Intended use", "Out of scope", "Training data", "Training procedure",
                    "Evaluation", "Audits", "Limitations", "How to load it", "Reproduce"):  # fmt: skip
        assert f"## {heading}" in card or f"### {heading}" in card, heading
    assert "Failed audit **bias**" in card  # limitations name the failed audit
    assert "95% CI 0.8833 – 0.9567" in card and "| base model |" in card
    assert "AutoModelForSequenceClassification.from_pretrained" in card
    assert "finetune run recipe.resolved.toml" in card
    assert "<script>" not in card.split("```toml")[0]  # user text is escaped outside the recipe block


def test_model_card_of_an_adapter_run_names_its_base_model(tmp_path):
    run = make_run(tmp_path / "run", adapter=True)
    write_model_card(run, run / "model")
    card = (run / "model" / "README.md").read_text(encoding="utf-8")
    meta = front_matter(card)
    assert meta["library_name"] == "peft" and meta["base_model"] == "gpt2"
    assert meta["tags"] == ["finetune-runner", "lora"]
    assert "from peft import AutoPeftModelForSequenceClassification" in card


def test_yaml_writer_round_trips_awkward_values():
    yaml = pytest.importorskip("yaml")
    value = {
        "plain": 'x: "quoted" # not a comment\nsecond line',
        "small": 1e-05,
        "nested": [{"yes": True, "no": None}, ["a", 2]],
        "empty": {},
        "é: key": "tab\there \x85 \u2028",
        "true": "false",
    }
    assert yaml.safe_load(to_yaml(value)) == value


def test_chart_helpers():
    ticks = nice_ticks(0.13, 0.97)
    assert ticks[0] >= 0.13 - 1e-9 and ticks[-1] <= 0.97 + 1e-9 and len(ticks) >= 3
    assert fmt(float("nan")) == "nan" and fmt(2e-5) == "2.000e-05"
    assert fmt(0.93333) == "0.9333" and fmt(12000) == "12,000" and fmt(3.0) == "3"
    assert line_chart([Series("x", [(1, "nan", ""), (2, None, "")])], title="t") == ""
    svg = line_chart([Series("x", [(1, 0.5, "a"), (2, "inf", "b"), (3, 0.25, "c")])], title="t")
    assert len(re.search(r'points="([^"]+)"', svg).group(1).split()) == 2


def test_confusion_matrix_from_the_metrics_details(run):
    # evaluation.json as the metrics write it: details.<split>.confusion_matrix, label names from the model
    path = run / "evaluation.json"
    evaluation = json.loads(path.read_text())
    matrix = evaluation.pop("confusion")["test"]["matrix"]
    evaluation["details"] = {"test": {"confusion_matrix": {"matrix": matrix, "rows": "reference"}}}
    path.write_text(json.dumps(evaluation))
    results = section(build_report(run).read_text(encoding="utf-8"), "results")
    cell = re.search(r'title="true neutral, predicted positive: (\d+) ', results)
    assert cell and int(cell.group(1)) == matrix[1][2]


def test_audits_section_when_the_recipe_has_none(tmp_path):
    run = make_run(tmp_path / "run", audits=False)
    recipe = run / "recipe.resolved.toml"
    recipe.write_text("audits = []\n" + recipe.read_text(), encoding="utf-8")
    assert "no audits were configured" in section(build_report(run).read_text(encoding="utf-8"), "audits")


def test_model_card_written_before_the_model_is_in_place_names_the_final_directory(run):
    # runner.storage.rundir.publish writes the model into .model.tmp and renames it to model/ when complete
    temporary = run / ".model.tmp"
    temporary.mkdir()
    (temporary / "finetune.json").write_text((run / "model" / "finetune.json").read_text())
    write_model_card(run, temporary)
    card = (temporary / "README.md").read_text(encoding="utf-8")
    assert f"path = {str(run / 'model')!r}" in card and ".model.tmp" not in card


def test_run_record_reads_what_there_is(tmp_path):
    # a run killed before metrics.json and evaluation.json: the final metrics come from metrics.jsonl
    run = make_run(tmp_path / "run", val_loss=0.27, val_accuracy=0.81)
    (run / "metrics.json").unlink()
    (run / "evaluation.json").unlink()
    with (run / "metrics.jsonl").open("a", encoding="utf-8") as log:
        log.write('{"step": 130, "split": "tr')  # cut off by the kill
    _write_json(run / "model" / "finetune.json", ["not", "an", "object"])
    rec = read_run(run)
    assert scores(rec.final_metrics()["validation"]) == {"loss": 0.27, "accuracy": 0.81}
    assert rec.model_meta is None and rec.problems == ["model/finetune.json is not a JSON object"]
    assert rec.seed == 42 and rec.diagnosis is None and rec.global_step == 120
    environment = json.loads((run / "environment.json").read_text())
    assert source_fingerprints(rec) == [({"type": "files", "path": "data/train.csv"}, environment["data"][0])]


def test_which_way_a_metric_is_better():
    assert greater_is_better("accuracy") and greater_is_better("test/f1")
    assert not greater_is_better("eval_loss") and not greater_is_better("validation/perplexity")
    assert not greater_is_better("train_loss") and not greater_is_better("wer_normalized")
    assert greater_is_better("eval_loss", {"loss": True})  # what evaluation.json says comes first
    assert not greater_is_better("test/accuracy", {"accuracy": False})
