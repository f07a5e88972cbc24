"""End to end: baselines come from the untouched model, test metrics carry intervals, classifiers a
confusion matrix, generating tasks text metrics and a few-shot baseline; the report and model card
are written; `finetune audit` audits a finished run again."""

import json

import pytest
from conftest import cli, run_recipe, tiny_recipe, write

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifier")
    return run_recipe(tiny_recipe(root / "recipe.toml", rows=1200, epochs=4), root / "run")


def evaluation(run) -> dict:
    return json.loads((run.run_dir.path / "evaluation.json").read_text())


def test_the_baseline_is_the_untouched_base_model(classifier):
    from runner.pipeline.data import prepare_data
    from runner.running.saved import load_finished

    base_row = evaluation(classifier)["baselines"][0]
    assert base_row["name"] == "base model" and "randomly initialised" in base_row["note"]
    done = load_finished(classifier.run_dir)
    data = prepare_data(done.recipe, done.recipe.task.create(), done.ctx)
    test = data.splits["test"]
    predicted = done.task.predict(done.base(), done.tokenizer, list(test["text"]), done.meta["max_length"])
    accuracy = sum(p["label"] == str(label) for p, label in zip(predicted, test["label"], strict=True)) / len(test)
    assert base_row["test"]["accuracy"] == pytest.approx(accuracy)
    assert classifier.metrics["test"]["accuracy"] > base_row["test"]["accuracy"] + 0.2  # training helped


def test_the_majority_class_is_a_baseline(classifier):
    from collections import Counter

    from runner.pipeline.data import prepare_data
    from runner.running.saved import load_finished

    row = next(b for b in evaluation(classifier)["baselines"] if b["name"] == "majority class")
    done = load_finished(classifier.run_dir)
    splits = prepare_data(done.recipe, done.recipe.task.create(), done.ctx).splits
    top = Counter(splits["train"]["label"]).most_common(1)[0][0]
    assert f"'{top}'" in row["note"]
    assert row["test"]["accuracy"] == pytest.approx(list(splits["test"]["label"]).count(top) / len(splits["test"]))


def test_a_classifier_that_learnt_nothing_is_called_no_better_than_the_majority_class(classifier, tmp_path):
    learnt = evaluation(classifier)["against_majority"]
    assert learnt["verdict"] == "better" and learnt["split"] == "test" and learnt["metric"] == "accuracy"
    assert "no better than guessing" not in (classifier.run_dir.path / "report.html").read_text()

    # a learning rate this small changes nothing: the untrained head is as good as a guess
    still = run_recipe(
        tiny_recipe(tmp_path / "r.toml", rows=300, epochs=1), tmp_path / "run", ["training.learning_rate=1e-12"]
    )
    check = evaluation(still)["against_majority"]
    assert check["verdict"] == "no better"
    assert check["interval"]["low"] <= check["majority"]  # its interval reaches the guess
    report = (still.run_dir.path / "report.html").read_text()
    assert "no better than guessing" in report and "majority-class baseline" in report


def test_test_metrics_have_intervals_and_a_confusion_matrix(classifier):
    record = evaluation(classifier)
    test = classifier.metrics["test"]
    interval = record["intervals"]["test"]["accuracy"]
    assert interval["low"] <= test["accuracy"] <= interval["high"] and interval["low"] < interval["high"]
    assert interval["confidence"] == 0.95 and interval["resamples"] == 1000
    matrix = record["details"]["test"]["confusion_matrix"]
    assert matrix["labels"] == ["negative", "neutral", "positive"]
    cells = matrix["matrix"]
    total = sum(map(sum, cells))
    stats = json.loads((classifier.run_dir.path / "data_stats.json").read_text())
    assert total == stats["splits"]["test"]
    assert sum(cells[i][i] for i in range(3)) / total == pytest.approx(test["accuracy"])
    assert record["diagnosis"]["verdict"] in ("good fit", "under-fitting", "over-fitting", "not enough evaluations")


def test_the_report_and_the_model_card_are_written(classifier):
    report = (classifier.run_dir.path / "report.html").read_text()
    assert "majority class" in report and "<svg" in report and "http://" not in report
    card = (classifier.run_dir.model / "README.md").read_text()
    assert card.startswith("---\n") and "accuracy" in card


def test_audit_command_audits_a_finished_run(classifier, tmp_path, capsys):
    audits = write(
        tmp_path / "audits.toml",
        """
        [[audits]]
        type = "leakage"

        [[audits]]
        type = "bias"
        max_flip_rate = 0.0

        [audits.terms]
        good = ["great", "amazing", "wonderful", "excellent", "good"]
        bad = ["terrible", "awful", "horrible", "poor", "bad"]
        """,
    )
    code = cli("audit", classifier.run_dir.path, "--audits", audits)
    results = {a["name"]: a for a in json.loads((classifier.run_dir.path / "audits.json").read_text())["audits"]}
    assert results["leakage"]["passed"] is not None
    bias = results["bias"]
    # Swapping sentiment words changes a sentiment classifier's answers: a flip rate the audit must see.
    assert bias["figures"]["finetuned"]["flip_rate"] > 0.3 and bias["passed"] is False and code == 3
    assert bias["figures"]["base"]["rows"] == bias["figures"]["finetuned"]["rows"]


def test_audits_file_errors_name_the_file_and_line(classifier, tmp_path, capsys):
    audits = write(tmp_path / "audits.toml", '[[audits]]\ntype = "leakage"\nsimilarity = 2\n')
    assert cli("audit", classifier.run_dir.path, "--audits", audits) == 2
    assert "audits.toml:3" in capsys.readouterr().err


INSTRUCT = """
[run]
seed = 3
threads = 1

[[data.sources]]
type = "synthetic"
kind = "chat"
rows = 240

[tokenizer]
type = "trained"
vocab_size = 400
max_length = 96

[model]
type = "config"
architecture = "gpt2"
config = { n_layer = 1, n_head = 2, n_embd = 32, n_positions = 160 }

[task]
type = "instruction"
format = "chat"
template = "chatml"
max_new_tokens = 12

[training]
learning_rate = 3e-3
batch_size = 16
epochs = 1

[evaluation]
few_shot = 2
generation_rows = 6
bootstrap = 200

[[audits]]
type = "forgetting"
corpus = "reference.txt"
max_increase = 1000.0

[[audits]]
type = "bias"

[audits.terms]
good = ["great", "amazing", "wonderful", "excellent", "good"]
bad = ["terrible", "awful", "horrible", "poor", "bad"]
"""


def test_a_generating_task_gets_text_metrics_and_a_few_shot_baseline(tmp_path):
    write(tmp_path / "reference.txt", "the weather was fine today\nwe walked to the station and back\n")
    run = run_recipe(write(tmp_path / "instruct.toml", INSTRUCT), tmp_path / "run")
    test = run.metrics["test"]
    assert {"perplexity", "exact_match", "bleu", "rougeL"} <= set(test)
    record = evaluation(run)
    names = [b["name"] for b in record["baselines"]]
    assert names == ["base model", "base model, 2-shot"]
    assert {"exact_match", "bleu", "rougeL"} <= set(record["baselines"][1]["test"])
    assert "perplexity" in record["baselines"][0]["test"]
    assert {"perplexity", "bleu"} <= set(record["intervals"]["test"])
    forgetting, bias = json.loads((run.run_dir.path / "audits.json").read_text())["audits"]
    assert forgetting["passed"] is True
    # a language model is audited by the likelihoods of the swapped versions; no threshold: measured only
    assert bias["passed"] is None and bias["figures"]["finetuned"]["term_rows"] > 0
    assert bias["figures"]["base"]["likelihood_gap"] > 0 and bias["figures"]["finetuned"]["likelihood_gap"] > 0
    assert forgetting["figures"]["base"]["perplexity"] > 0 and forgetting["figures"]["finetuned"]["perplexity"] > 0
