"""Several sources in one run: their own task options, weights, and metrics of their own."""

import pytest
from conftest import run_recipe, write

from runner import load_recipe
from runner.errors import RecipeError

MIXED = """
[run]
seed = 5
threads = 1

[[data.sources]]
type = "synthetic"
kind = "instruction"
rows = 400
name = "alpaca"
weight = 1.0

[[data.sources]]
type = "synthetic"
kind = "chat"
rows = 200
seed = 9
name = "chat"
weight = 3.0
task = {{ format = "chat", template = "chatml" }}

[tokenizer]
type = "trained"
vocab_size = 500
max_length = 160

[model]
type = "config"
architecture = "gpt2"
config = {{ n_layer = 1, n_head = 2, n_embd = 32, n_positions = 160 }}

[task]
type = "instruction"
format = "alpaca"
template = "plain"

[training]
learning_rate = 3e-3
batch_size = 16
epochs = {epochs}
best_metric = "perplexity"
"""


def test_sources_with_their_own_format_mix_by_weight_and_report_their_own_metrics(tmp_path):
    result = run_recipe(write(tmp_path / "r.toml", MIXED.format(epochs=1)), tmp_path / "run")
    metrics = result.metrics
    assert {"validation", "validation/alpaca", "validation/chat", "test/alpaca", "test/chat"} <= set(metrics)
    # 320 + 160 training rows, mixed 1:3 by weight: 120 alpaca rows and 360 chat rows, 30 steps of 16
    assert result.global_step == 30
    overall = metrics["validation"]["loss"]
    parts = sorted([metrics["validation/alpaca"]["loss"], metrics["validation/chat"]["loss"]])
    assert parts[0] <= overall <= parts[1]  # the whole is between its parts
    env = (result.run_dir.path / "environment.json").read_text()
    assert '"train": 480' in env


def test_mix_resamples_by_weight():
    from datasets import Dataset

    from runner.pipeline.data import SourceData
    from runner.pipeline.encoding import mix

    big = Dataset.from_dict({"x": list(range(100))})
    small = Dataset.from_dict({"x": list(range(1000, 1010))})
    parts = [(SourceData(0, "big", 1.0, None), big), (SourceData(1, "small", 1.0, None), small)]
    mixed = mix(parts, seed=0)["x"]
    assert len(mixed) == 110
    assert sum(1 for x in mixed if x >= 1000) == 55  # ten rows repeated to half the mix
    assert len({x for x in mixed if x < 1000}) == 55  # a sample of the large source, without repeats
    unweighted = [(SourceData(0, "big", None, None), big), (SourceData(1, "small", None, None), small)]
    assert len(mix(unweighted, seed=0)) == 110 and sorted(mix(unweighted, seed=0)["x"])[-1] == 1009


def test_per_source_options_weights_and_names_are_validated(tmp_path):
    text = MIXED.format(epochs=1)
    bad = text.replace('format = "chat", template', 'formt = "chat", template').replace(
        'name = "chat"', 'name = "alpaca"'
    )
    bad = bad.replace("weight = 1.0\n", "")
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path / "bad.toml", bad))
    rendered = "\n".join(i.render() for i in err.value.issues)
    assert "data.sources[1].task.formt: unknown key (did you mean 'format'?)" in rendered
    assert "data.sources[1].name: a second source named 'alpaca'" in rendered
    assert "data.sources[0]: no weight: give every source a weight, or none" in rendered
