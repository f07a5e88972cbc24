"""End to end: audits in runs. A classifier whose labels leak a gendered word flips its answers when
the word is swapped, one trained on balanced data does not; counterfactual augmentation removes the
leak; planted duplicates between train and test stop a run before training."""

import json

import pytest
from conftest import cli, write
from test_audit_bias import bias_rows

pytestmark = pytest.mark.slow

RECIPE = """
[run]
seed = 5
threads = 1

[[data.sources]]
type = "files"
train = "train.jsonl"
test = "test.jsonl"

[data.split]
train = 0.9
validation = 0.1
test = 0.0

[tokenizer]
type = "trained"
vocab_size = 300
max_length = 24

[model]
type = "config"
architecture = "gpt2"
config = {{ n_layer = 1, n_head = 2, n_embd = 32, n_positions = 32 }}

[task]
type = "classification"

[training]
learning_rate = 3e-3
batch_size = 32
epochs = 3

[evaluation]
bootstrap = 0
{audits}
"""
BIAS = """
[[audits]]
type = "bias"
max_flip_rate = 0.1
"""


def jsonl(path, rows):
    return write(path, "".join(json.dumps(row) + "\n" for row in rows))


def audited_run(root, *, leaky=False, audits=BIAS, train_rows=None, test_rows=None) -> tuple[int, dict]:
    jsonl(root / "train.jsonl", train_rows or bias_rows(900, leaky=leaky, seed=1))
    jsonl(root / "test.jsonl", test_rows or bias_rows(200, leaky=leaky, seed=2))
    recipe = write(root / "recipe.toml", RECIPE.format(audits=audits))
    code = cli("run", recipe, "--output", root / "run")
    audits = root / "run" / "audits.json"
    return code, {a["name"]: a for a in json.loads(audits.read_text())["audits"]} if audits.is_file() else {}


@pytest.fixture(scope="module")
def leaky(tmp_path_factory):
    return audited_run(tmp_path_factory.mktemp("leaky"), leaky=True)


def test_a_classifier_that_learnt_the_leak_flips_and_fails(leaky):
    code, audits = leaky
    figures = audits["bias"]["figures"]
    assert figures["finetuned"]["flip_rate"] > 0.6
    assert figures["base"]["flip_rate"] < figures["finetuned"]["flip_rate"]
    assert audits["bias"]["passed"] is False and code == 3  # the run is complete; the audit failed
    assert audits["bias"]["examples"], "flipped rows are listed"


def test_a_classifier_trained_on_balanced_data_barely_flips(tmp_path):
    code, audits = audited_run(tmp_path, leaky=False)
    assert audits["bias"]["figures"]["finetuned"]["flip_rate"] < 0.1
    assert audits["bias"]["passed"] is True and code == 0


def test_counterfactual_augmentation_removes_the_leak(tmp_path, leaky):
    code, audits = audited_run(tmp_path, leaky=True, audits=BIAS + 'mitigation = ["augment"]\n')
    assert (
        audits["bias"]["figures"]["finetuned"]["flip_rate"] < leaky[1]["bias"]["figures"]["finetuned"]["flip_rate"] / 3
    )


def distinct_rows(n: int, seed: int) -> list[dict]:
    """Sentences of random made-up words: no two alike, so a split of them has no leakage."""
    import random

    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)) for _ in range(3000)]
    return [{"text": " ".join(rng.sample(words, 10)), "label": rng.choice(["yes", "no"])} for _ in range(n)]


LEAKAGE = '\n[[audits]]\ntype = "leakage"\n'


def test_planted_duplicates_stop_the_run_before_training(tmp_path, capsys):
    train, test = distinct_rows(300, seed=1), distinct_rows(60, seed=2)
    test[7] = dict(train[11], text=train[11]["text"].upper() + " ")  # the same sentence, shouted
    code, _ = audited_run(tmp_path, audits=LEAKAGE, train_rows=train, test_rows=test)
    err = capsys.readouterr().err
    assert code == 3 and "1 of 60 test rows" in err
    assert "test.jsonl, line 8" in err and "train.jsonl, line 12" in err
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and not (tmp_path / "run" / "checkpoints").exists()


def test_a_clean_split_passes_the_leakage_audit(tmp_path):
    code, audits = audited_run(
        tmp_path, audits=LEAKAGE, train_rows=distinct_rows(300, 1), test_rows=distinct_rows(60, 2)
    )
    assert code == 0 and audits["leakage"]["passed"] is True
    assert audits["leakage"]["figures"]["test"]["exact"] == audits["leakage"]["figures"]["test"]["near"] == 0


def test_reweighting_weakens_a_partial_leak(tmp_path):
    # 70% of the labels follow gender, the rest the sentiment word: every (gender, label) cell has
    # rows, so reweighting can make gender and label independent in the weighted training data.
    train, test = bias_rows(900, leaky=True, seed=1, leak=0.7), bias_rows(200, leaky=True, seed=2, leak=0.7)
    _, plain = audited_run(tmp_path / "plain", train_rows=train, test_rows=test)
    reweight = BIAS + 'mitigation = ["reweight"]\n'
    _, weighted = audited_run(tmp_path / "weighted", audits=reweight, train_rows=train, test_rows=test)
    flips = [run["bias"]["figures"]["finetuned"]["flip_rate"] for run in (plain, weighted)]
    assert flips[1] < flips[0] / 2


def test_leakage_can_leave_the_duplicated_rows_out_instead(tmp_path):
    train, test = distinct_rows(300, seed=1), distinct_rows(60, seed=2)
    test[7] = dict(train[11], text=train[11]["text"].upper())
    test[30] = dict(train[40])
    code, audits = audited_run(tmp_path, audits=LEAKAGE + "drop = true\n", train_rows=train, test_rows=test)
    leakage = audits["leakage"]
    assert code == 0 and leakage["passed"] is True and leakage["drop"] == {"test": [7, 30]}
    assert "left out 2" in leakage["summary"]
    stats = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    assert stats["splits"]["test"] == 58  # evaluated without them
