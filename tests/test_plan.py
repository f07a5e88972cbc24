"""`finetune plan`: where every value came from, and what the run would do, without training."""

import pytest
from conftest import RECIPES, cli, tiny_recipe, write


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping: one table row per line


def plan_output(capsys, *args) -> str:
    assert cli("plan", *args) == 0
    return " ".join(capsys.readouterr().out.split())


def test_plan_shows_provenance_of_every_value(tmp_path, capsys):
    base = tiny_recipe(tmp_path / "base.toml")
    child = write(tmp_path / "child.toml", 'extends = "base.toml"\n\n[training]\nepochs = 5\n')
    out = plan_output(capsys, child, "--set", "training.learning_rate=1e-3")
    assert f"training.epochs │ 5.0 │ {child}:4:1 │" in out
    assert f"training.batch_size │ 32 │ {base}:24:1 │" in out
    assert "training.learning_rate │ 0.001 │ --set training.learning_rate=1e-3 │" in out
    assert "training.weight_decay │ 0.0 │ default" in out
    assert "extends:" in out


def test_plan_counts_parameters_and_steps(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path / "r.toml", rows=320, epochs=2)
    out = plan_output(capsys, recipe)
    assert "rows │ train 256, validation 32, test 32" in out
    assert "optimizer steps │ 16" in out  # 256 rows / 32 per batch x 2 epochs
    assert "labels │ negative, neutral, positive" in out
    full = out[out.index("parameters │") :].split("│")[1]
    lora = plan_output(capsys, recipe, "--set", "strategy.type=lora")
    lora = lora[lora.index("parameters │") :].split("│")[1]
    assert "(100.00%)" in full and "(100.00%)" not in lora


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.toml")))
def test_every_shipped_recipe_plans_offline(name, capsys):
    out = plan_output(capsys, RECIPES / name, "--offline")
    assert "run directory" in out


def test_plan_says_what_the_model_is_compared_with_and_audited_for(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path / "r.toml", extra='\n[[audits]]\ntype = "leakage"\n')
    out = plan_output(capsys, recipe)
    assert "against the untouched base model, the majority class; test intervals from 1000 resamples (95%)" in out
    assert "audits: leakage" in out
    off = plan_output(capsys, recipe, "--set", "evaluation.baseline=false", "--set", "evaluation.bootstrap=0")
    assert "evaluation │ no baseline; audits: leakage" in off
