"""End to end: models learn, save and reload to the same logits; strategies train what they say."""

import json

import pytest
import torch
from conftest import RECIPES, cli, run_recipe, tiny_recipe, write

from runner import load_recipe

pytestmark = pytest.mark.slow

TEXTS = ["the movie was not great", "wow the pizza is amazing", "the bus was okay", "my flight was terrible"]


def logits(model, tokenizer, texts=TEXTS):
    model.eval()
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    return run_recipe(RECIPES / "quickstart.toml", tmp_path_factory.mktemp("quickstart") / "run")


def test_quickstart_learns_well_above_chance(quickstart):
    test = quickstart.metrics["test"]
    assert test["accuracy"] > 0.85  # chance is 1/3; 5% of the labels are noise
    assert test["f1_macro"] > 0.85
    assert quickstart.metrics["validation"]["loss"] < 0.7


def test_run_directory_is_self_describing(quickstart):
    run = quickstart.run_dir
    names = {p.name for p in run.path.iterdir()}
    assert {"recipe.resolved.toml", "environment.json", "metrics.jsonl", "metrics.json", "status.json"} <= names
    assert {"checkpoints", "model", "tokenizer"} <= names
    assert not [n for n in names if n.startswith(".")], "temporary files left behind"
    assert run.status()["state"] == "completed"
    env = json.loads(run.environment.read_text())
    assert env["seed"] == 42 and env["torch_threads"] >= 1
    assert env["packages"]["transformers"].startswith("5.")
    assert env["data"][0]["source"] == "synthetic" and len(env["data"][0]["content_sha256"]) == 64
    assert env["parameters"]["trainable"] == env["parameters"]["total"] > 0
    records = run.read_metrics_log()
    assert [r["step"] for r in records if r["split"] == "train"][:3] == [1, 20, 40]
    assert any(r["split"] == "test" and r.get("final") for r in records)
    again = load_recipe(run.recipe)  # the resolved recipe is a valid recipe
    assert again.resolved()["training"] == load_recipe(RECIPES / "quickstart.toml").resolved()["training"]
    model_files = {p.name for p in run.model.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "finetune.json"} <= model_files
    assert not [n for n in model_files if n.endswith((".bin", ".pt", ".pth"))]


def test_saved_model_reloads_with_plain_transformers_to_the_same_logits(quickstart):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    directory = quickstart.run_dir.model
    model = AutoModelForSequenceClassification.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert torch.equal(logits(model, tokenizer), logits(quickstart.model, quickstart.tokenizer))


def test_eval_command_reproduces_the_test_metrics(quickstart, capsys):
    assert cli("eval", quickstart.run_dir.path, "--split", "test") == 0
    saved = sorted((quickstart.run_dir.path / "evaluations").glob("test-*.json"))
    result = json.loads(saved[-1].read_text())
    assert result["accuracy"] == pytest.approx(quickstart.metrics["test"]["accuracy"])
    assert "accuracy" in capsys.readouterr().out


def test_predict_command(quickstart, tmp_path, capsys):
    assert cli("predict", quickstart.run_dir.path, "--text", "wow the pizza is amazing") == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["label"] == "positive" and sum(row["scores"].values()) == pytest.approx(1, abs=1e-4)
    inputs = write(tmp_path / "in.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    assert cli("predict", quickstart.run_dir.path, "--input", inputs, "--output", tmp_path / "out.jsonl") == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == TEXTS
    assert {r["label"] for r in rows} <= {"negative", "neutral", "positive"}


def test_lora_trains_only_adapters_and_the_head_and_reloads(tmp_path, monkeypatch):
    import shutil
    from pathlib import Path

    from peft import AutoPeftModelForSequenceClassification
    from safetensors.torch import load_file

    recipe = tiny_recipe(tmp_path / "r.toml", rows=200, epochs=1, extra='[strategy]\ntype = "lora"\nr = 4\n')
    monkeypatch.chdir(tmp_path)
    result = run_recipe(recipe, Path("run"))  # a relative run directory, as `--output run` gives
    trainable = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert any("lora_A" in n for n in trainable) and any("score" in n for n in trainable)

    model_dir = result.run_dir.model
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in model_dir.iterdir()}
    adapter = load_file(model_dir / "adapter_model.safetensors")
    assert adapter and all("lora_" in k or "score" in k for k in adapter)  # no base weights

    base = load_file(result.run_dir.path / "base_model" / "model.safetensors")
    trained = result.model.get_base_model().state_dict()
    for name, tensor in base.items():  # frozen: the base weights did not move
        if "score" not in name and name in trained:
            assert torch.equal(tensor, trained[name]), name

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(model_dir, elsewhere / "model")
    monkeypatch.chdir(elsewhere)  # the adapter finds its base from any folder
    reloaded = AutoPeftModelForSequenceClassification.from_pretrained(elsewhere / "model")
    assert torch.allclose(logits(reloaded, result.tokenizer), logits(result.model, result.tokenizer), atol=1e-6)


def test_freeze_trains_only_the_named_parts():
    from plugins.strategies.freeze import Freeze, FreezeOptions
    from runner.components import ModelSpec, RunContext
    from runner.toolkit.modeling import auto_class

    spec = ModelSpec(head="sequence_classification", vocab_size=50, max_length=16, pad_token_id=0, num_labels=2)
    from transformers import GPT2Config

    model = auto_class(spec.head).from_config(GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=50, num_labels=2))
    ctx = RunContext(seed=0, cache_dir=None)
    Freeze(FreezeOptions(train_last_layers=1)).apply(model, ctx, spec)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert "score.weight" in trainable
    assert all(n.startswith(("transformer.h.2.", "score.")) for n in trainable)
    assert any(n.startswith("transformer.h.2.") for n in trainable)
    Freeze(FreezeOptions(train_head=False, train_modules=[r"\.ln_f\."])).apply(model, ctx, spec)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "transformer.ln_f.weight",
        "transformer.ln_f.bias",
    }


def test_causal_lm_learns_and_reloads(tmp_path):
    from transformers import AutoModelForCausalLM

    recipe = tiny_recipe(tmp_path / "r.toml", rows=600, epochs=4)
    text = recipe.read_text().replace('type = "synthetic"', 'type = "synthetic"\nkind = "text"')
    recipe.write_text(text.replace('type = "classification"', 'type = "causal_lm"'))
    result = run_recipe(recipe, tmp_path / "run", ["training.best_metric=perplexity", "training.learning_rate=1e-2"])
    vocab = len(result.tokenizer)
    assert result.metrics["test"]["perplexity"] < vocab / 10  # uniform guessing scores `vocab`
    model = AutoModelForCausalLM.from_pretrained(result.run_dir.model)
    assert torch.equal(logits(model, result.tokenizer), logits(result.model, result.tokenizer))


def test_regression_beats_predicting_the_mean(tmp_path):
    from plugins.data.synthetic import generate

    score = {"negative": -1.0, "neutral": 0.0, "positive": 1.0}
    rows = generate(800, seed=3)
    lines = "".join(json.dumps({"text": r["text"], "label": score[r["label"]]}) + "\n" for r in rows)
    write(tmp_path / "d.jsonl", lines)
    recipe = tiny_recipe(tmp_path / "r.toml", epochs=6)
    text = recipe.read_text().replace('type = "synthetic"\nrows = 300', 'type = "files"\npath = "d.jsonl"')
    recipe.write_text(text.replace('type = "classification"', 'type = "regression"'))
    result = run_recipe(recipe, tmp_path / "run", ["training.learning_rate=5e-3"])
    values = torch.tensor([score[r["label"]] for r in rows])
    assert result.metrics["test"]["mse"] < 0.6 * float(values.var())  # the mean predictor scores var


def test_early_stopping_and_keeping_the_best_model(tmp_path):
    # A learning rate this small changes nothing: accuracy never improves on the first evaluation,
    # so with patience 2 training stops at the third evaluation, far before max_steps.
    recipe = tiny_recipe(tmp_path / "r.toml", rows=300, eval_every=2)
    overrides = [
        "training.learning_rate=1e-12",
        "training.max_steps=100",
        "training.early_stopping_patience=2",
        'training.best_metric="accuracy"',
    ]
    result = run_recipe(recipe, tmp_path / "run", overrides)
    assert result.global_step == 6
    evals = [r for r in result.run_dir.read_metrics_log() if r["split"] == "validation" and not r.get("final")]
    assert [r["step"] for r in evals] == [2, 4, 6]
    assert result.metrics["validation"]["accuracy"] == max(r["accuracy"] for r in evals)


def test_export_merges_lora_into_a_plain_model(tmp_path):
    from transformers import AutoModelForSequenceClassification

    recipe = tiny_recipe(tmp_path / "r.toml", rows=200, epochs=1, extra='[strategy]\ntype = "lora"\nr = 4\n')
    result = run_recipe(recipe, tmp_path / "run")
    assert cli("export", result.run_dir.path, "--merge") == 0
    merged_dir = result.run_dir.path / "merged"
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir)
    assert not list(merged_dir.glob("adapter_*"))
    assert torch.allclose(logits(merged, result.tokenizer), logits(result.model, result.tokenizer), atol=1e-5)
