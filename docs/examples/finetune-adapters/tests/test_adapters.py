"""The bottleneck adapter strategy passes the strategy contract, and behaves as the papers say."""

import pytest

from runner.testing import StrategyContract, tiny_batch, tiny_model


def adapters_or_head(self, name):
    return "bottleneck_adapter" in name or name.startswith(("score.", "classifier."))


class TestPfeiffer(StrategyContract):
    strategy = {"type": "adapter", "reduction_factor": 4}
    trains = adapters_or_head


class TestHoulsby(StrategyContract):
    strategy = {"type": "adapter", "placement": "houlsby", "bottleneck_size": 4, "non_linearity": "gelu"}
    trains = adapters_or_head


@pytest.mark.parametrize("architecture", ["gpt2", "bert", "llama"])
def test_adapters_start_as_the_identity_and_houlsby_places_twice_as_many(architecture, tmp_path):
    import torch

    base = tiny_model(architecture, "causal_lm")
    batch = {k: v for k, v in tiny_batch("causal_lm").items() if k != "labels"}
    with torch.no_grad():
        expected = base.eval()(**batch).logits
    counts = {}
    for placement in ("pfeiffer", "houlsby"):
        strategy = TestPfeiffer().make().__class__
        adapter = strategy(strategy.Options(placement=placement))
        model = adapter.apply(tiny_model(architecture, "causal_lm"), None, None)
        with torch.no_grad():
            assert torch.equal(model.eval()(**batch).logits, expected)  # zero up-projection: same function
        counts[placement] = sum(1 for name, _ in model.named_modules() if name.endswith("bottleneck_adapter"))
    assert counts == {"pfeiffer": 2, "houlsby": 4}  # two blocks in the tiny models


def test_unknown_architecture_needs_module_names():
    from transformers import AutoModelForCausalLM, GPTNeoConfig

    from runner import FinetuneError

    strategy = TestPfeiffer().make()
    model = AutoModelForCausalLM.from_config(
        GPTNeoConfig(num_layers=1, hidden_size=16, num_heads=2, vocab_size=32, attention_types=[[["global"], 1]])
    )
    with pytest.raises(FinetuneError, match="does not know where the sublayers of a 'gpt_neo' model end") as err:
        strategy.apply(model, None, None)
    assert "strategy.feedforward_module" in err.value.hint
    custom = strategy.__class__(strategy.Options(feedforward_module="mlp.c_proj"))
    assert custom.apply(model, None, None) is model


LM = """
[[data.sources]]
type = "synthetic"
kind = "text"
rows = 1500

[tokenizer]
type = "trained"
vocab_size = 300
max_length = 32

[model]
type = "config"
architecture = "gpt2"
config = { n_layer = 2, n_head = 2, n_embd = 32, n_positions = 32 }

[task]
type = "causal_lm"

[training]
learning_rate = 5e-3
epochs = 3
best_metric = "perplexity"
"""

CLASSIFY = """
[[data.sources]]
type = "synthetic"
rows = 3000

[tokenizer]
type = "pretrained"
path = "{base}"

[model]
type = "pretrained"
path = "{base}"

[task]
type = "classification"

[strategy]
type = "adapter"
placement = "houlsby"
bottleneck_size = 16

[training]
learning_rate = 1e-2
epochs = 4
"""


def test_adapters_on_a_pretrained_base_learn_and_reload(write_recipe, run_recipe, finetune_plugins, tmp_path):
    """Adapters need a trained base: pre-train a tiny language model, then adapt it to classify."""
    import torch

    from runner.testing import load_run

    run_recipe(write_recipe(LM, "lm.toml"))
    (tmp_path / "run").rename(tmp_path / "lm-run")  # the fixture runs every recipe in tmp_path/run
    base = tmp_path / "lm-run" / "model"
    result = run_recipe(write_recipe(CLASSIFY.format(base=base), "classify.toml"))
    trainable = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert all("bottleneck_adapter" in n or n.startswith("score.") for n in trainable)
    # Chance is 1/3. A frozen 2-layer, 32-wide base is a weak feature extractor: full fine-tuning of
    # it reaches about 0.6 on this data, these adapters about 0.44 (measured).
    assert result.metrics["test"]["accuracy"] > 0.4
    saved = {p.name for p in result.run_dir.model.iterdir()}
    assert {"adapter_model.safetensors", "bottleneck_adapters.json", "finetune.json"} <= saved

    reloaded = load_run(result.run_dir.path).model
    enc = result.tokenizer(["the pizza was great", "the bus was not good"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(**enc).logits, result.model.eval()(**enc).logits)
