"""A preference objective written as an outside plugin package (docs/examples/finetune-objective-example):
it uses only `from runner import ...`, registers through its entry point and trains from a recipe with
trainer `dpo`; with a zero margin it is DPO's own loss, step for step."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys

import pytest

from tests.conftest import ROOT
from tests.test_third_party_plugin import finetune, pip_install, plugin_rows

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

EXAMPLE = ROOT / "docs" / "examples" / "finetune-objective-example"
MODULE = EXAMPLE / "finetune_objective_example.py"

# recipes/quickstart-dpo.toml at half its pairs, with the plugin's objective
RECIPE = """
[run]
seed = 42

[[data.sources]]
type = "synthetic"
kind = "preference"
rows = 1500

[tokenizer]
type = "trained"
vocab_size = 500
max_length = 96

[model]
type = "config"
architecture = "gpt2"
config = { n_layer = 2, n_head = 4, n_embd = 64, n_positions = 96 }

[task]
type = "preference"
template = "chatml"

[training]
type = "dpo"
beta = 0.5
learning_rate = 3e-3
batch_size = 16
epochs = 4
log_every = 10

[objective]
type = "margin_dpo"
gamma = 0.5
"""


def example_module():
    spec = importlib.util.spec_from_file_location("finetune_objective_example", MODULE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the options' annotations through it
    spec.loader.exec_module(module)
    return module


def test_the_example_imports_nothing_of_the_runner_but_its_public_api():
    imported = set()
    for node in ast.walk(ast.parse(MODULE.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert {m for m in imported if m.startswith(("runner", "plugins"))} == {"runner"}, imported


def objective_losses(gamma: float | None, data, tokenizer, tmp_path):
    """The first three training logs of trainer dpo on the test_dpo pairs: with `gamma`, the example's
    margin_dpo as the recipe's [objective]; without, trainer dpo's own sigmoid loss."""
    from tests.test_dpo import causal_model, job, trainer

    train, _ = data
    dpo = trainer(max_steps=3, batch_size=len(train), group_by_length=False)
    work = job(causal_model(), tokenizer, train, None, tmp_path / f"gamma-{gamma}")
    if gamma is not None:
        objective = example_module().MarginDPO
        work.objective = objective(objective.Options(gamma=gamma))
    dpo.fit(work)
    return [(step, values["loss"], values["rewards/margins"]) for step, values in work.events.logs]


def test_a_zero_margin_objective_is_dpo_step_for_step_and_a_margin_raises_the_loss(tmp_path):
    from datasets import Dataset

    from tests.test_dpo import pairs, word_tokenizer

    data, tokenizer = (Dataset.from_list(pairs(48, seed=1)), None), word_tokenizer()
    dpo = objective_losses(None, data, tokenizer, tmp_path)
    plugin = objective_losses(0.0, data, tokenizer, tmp_path)
    assert [s for s, _, _ in plugin] == [1, 2, 3]
    assert [v for row in plugin for v in row] == pytest.approx([v for row in dpo for v in row], rel=1e-5, abs=1e-7)
    margin = objective_losses(1.0, data, tokenizer, tmp_path)
    # step 1: policy = reference, so every margin is 0 and the loss is -log sigmoid(-gamma)
    assert margin[0][1] == pytest.approx(-torch.nn.functional.logsigmoid(torch.tensor(-1.0)).item(), abs=1e-4)
    assert plugin[0][1] == pytest.approx(0.6931, abs=1e-3)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return pip_install(EXAMPLE, tmp_path_factory.mktemp("objective") / "site")


@pytest.mark.slow
def test_the_installed_objective_is_listed_and_trains_from_a_recipe(site, tmp_path):
    listed = finetune("plugins", path=[site])
    assert listed.returncode == 0, listed.stderr
    assert plugin_rows(listed.stdout)["margin"][2] == "objective: margin_dpo", listed.stdout

    recipe = tmp_path / "margin.toml"
    recipe.write_text(RECIPE, encoding="utf-8")
    done = finetune("run", recipe, "--output", tmp_path / "run", path=[site], timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    resolved = (tmp_path / "run" / "recipe.resolved.toml").read_text(encoding="utf-8")
    assert '[objective]\ntype = "margin_dpo"' in resolved and "gamma = 0.5" in resolved
    evaluation = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    base = next(b for b in evaluation["baselines"] if b["name"] == "base model")["test"]
    tuned = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert tuned["likelihood_accuracy"] > base["likelihood_accuracy"] + 0.2, (tuned, base)


@pytest.mark.slow
def test_objective_mistakes_are_recipe_errors_naming_their_key(site, tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(RECIPE.replace("gamma = 0.5", "gamma = 0.5\nmargn = 1"), encoding="utf-8")
    done = finetune("validate", recipe, path=[site])
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr
    assert "objective.margn: unknown key (known keys: gamma)" in done.stdout  # as for every component

    recipe.write_text(RECIPE.replace('type = "dpo"', 'type = "dpo"\nloss_type = "ipo"'), encoding="utf-8")
    done = finetune("validate", recipe, path=[site])
    assert done.returncode == 2 and "training.loss_type" in done.stdout
    assert "[objective] 'margin_dpo' is the loss" in done.stdout
    assert finetune("validate", recipe).returncode == 2  # without the package the objective is unknown

    recipe.write_text(RECIPE.replace('type = "dpo"\nbeta = 0.5', 'type = "hf"'), encoding="utf-8")
    done = finetune("validate", recipe, path=[site])
    assert done.returncode == 2 and "objective.type" in done.stdout and "trainer 'hf'" in done.stdout
