"""`finetune validate` checks `[sweep.space]` keys and the sweep metric as it checks the recipe body."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import ROOT, TINY, cli, write

from runner.errors import RecipeError
from runner.plugins.manager import get_plugins
from runner.recipe.load import read_recipe
from runner.recipe.validate import validate

BODY = TINY.format(rows=100, epochs=1, eval_every=2)


def problems(path: Path) -> str:
    with pytest.raises(RecipeError) as caught:
        validate(read_recipe(path), get_plugins().registry)
    return caught.value.render()


def line_of(path: Path, fragment: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if fragment in line)


def test_a_space_key_typo_is_the_same_error_as_the_typo_in_the_recipe_body(tmp_path, capsys):
    swept = write(
        tmp_path / "swept.toml",
        BODY + '[sweep]\n[sweep.space]\n"training.learning_rte" = { log_uniform = [1e-4, 1e-2] }\n',
    )
    in_body = write(tmp_path / "body.toml", BODY.replace("learning_rate = 3e-3", "learning_rte = 3e-3"))
    said = problems(swept)
    assert f"swept.toml:{line_of(swept, 'learning_rte')}" in said
    assert "sweep.space.\"training.learning_rte\": unknown key (did you mean 'learning_rate'?)" in said
    body_said = problems(in_body)
    assert "training.learning_rte: unknown key (did you mean 'learning_rate'?)" in body_said
    assert cli("validate", swept) == 2  # the command, not only the function
    said = capsys.readouterr()
    assert "did you mean 'learning_rate'" in said.out and "Traceback" not in said.out + said.err


def test_the_docs_sweep_example_validates_and_its_old_batch_size_key_does_not(tmp_path):
    docs = (ROOT / "docs" / "experiments.md").read_text()
    example = re.search(r"```toml\n(\[sweep\]\n.*?)```", docs, re.S).group(1)
    path = write(tmp_path / "docs.toml", BODY + '\n[strategy]\ntype = "lora"\n\n' + example)
    validate(read_recipe(path), get_plugins().registry)
    old = write(
        tmp_path / "old.toml", path.read_text().replace('"training.batch_size"', '"training.per_device_batch_size"')
    )
    assert 'sweep.space."training.per_device_batch_size": unknown key' in problems(old)


def test_a_key_that_some_choices_of_the_component_take_is_allowed_one_none_takes_is_not(tmp_path):
    some = (
        '[sweep]\n[sweep.space]\n"strategy.type" = { choice = ["lora", "ia3"] }\n"strategy.r" = { choice = [2, 4] }\n'
    )
    validate(read_recipe(write(tmp_path / "some.toml", BODY + some)), get_plugins().registry)
    # no [strategy]: every trial fine-tunes fully, and `full` has no `r`
    none = write(tmp_path / "none.toml", BODY + '[sweep]\n[sweep.space]\n"strategy.r" = { choice = [2, 4] }\n')
    said = problems(none)
    assert f"none.toml:{line_of(none, 'strategy.r')}" in said and 'sweep.space."strategy.r": unknown key' in said
    wrong = write(
        tmp_path / "wrong.toml", BODY + '[sweep]\n[sweep.space]\n"strategy.type" = { choice = ["lora", "ia4"] }\n'
    )
    assert "unknown strategy 'ia4' (did you mean 'ia3'?)" in problems(wrong)


@pytest.mark.parametrize(
    ("metric", "said"),
    [("f1", "the recipe measures no 'f1'"), ("test.accuracy", "choosing on test leaks it")],
)
def test_an_unknown_or_test_metric_is_refused_by_validate(tmp_path, metric, said):
    path = write(
        tmp_path / "metric.toml",
        BODY + f'[sweep]\nmetric = "{metric}"\n[sweep.space]\n"training.batch_size" = {{ choice = [8, 16] }}\n',
    )
    text = problems(path)
    assert f"metric.toml:{line_of(path, 'metric =')}" in text and said in text
