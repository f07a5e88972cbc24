"""`[model] attn_implementation`: the kernel reaches transformers; one that needs a missing package
is a recipe error naming it. (Packing under each kernel: tests/test_packing_kernels.py.)"""

import importlib.util

import pytest
from conftest import tiny_recipe

from runner import load_recipe
from runner.components import ModelSpec, RunContext
from runner.errors import RecipeError


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_the_kernel_is_the_one_transformers_builds_with(tmp_path, kernel):
    path = tiny_recipe(tmp_path / "r.toml")
    recipe = load_recipe(path, [f'model.attn_implementation="{kernel}"'])
    component = recipe.model.create()
    assert component.attention_kernel() == kernel
    spec = ModelSpec(head="causal_lm", vocab_size=50, max_length=16)
    model = component.build(RunContext(seed=0, cache_dir=tmp_path), spec)
    assert model.config._attn_implementation == kernel


def test_flash_attention_without_its_package_is_a_recipe_error(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))
    path = tiny_recipe(tmp_path / "r.toml")
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ['model.attn_implementation="flash_attention_2"'])
    (issue,) = err.value.issues
    assert "model.attn_implementation" in issue.render() and "pip install flash-attn" in issue.render()


def test_an_unknown_kernel_is_refused(tmp_path):
    path = tiny_recipe(tmp_path / "r.toml")
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ['model.attn_implementation="flash"'])
    assert "model.attn_implementation" in err.value.issues[0].render()
