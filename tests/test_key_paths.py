"""One spelling of a key path, the one `--set` takes, and one flattening of nested tables into key
paths (runner.recipe.keys), for the lock, the run record, the trackers and `finetune plan`."""

from __future__ import annotations

import json

import pytest
from conftest import cli, tiny_recipe, write

import runner
from runner.errors import format_key
from runner.recipe import lockfile
from runner.recipe.keys import key_paths, leaves, parse_key_path
from runner.recipe.load import read_recipe

PATHS = [
    ("training", "learning_rate"),
    ("data", "sources", 0, "path"),
    ("data", "sources", 12, "files", "./data/train.csv"),
    ("sweep", "space", "training.epochs", "low"),
    ("inputs", "model.path", "revision"),
    ("odd", 'a "quoted" key', "back\\slash", "tab\there"),
    ("odd", "", "spaces and ünïcode", 0, 1),
    ("run", "name-with_dashes", "0"),
]


@pytest.mark.parametrize("path", PATHS)
def test_a_spelled_key_path_reads_back_as_the_same_path(path):
    assert parse_key_path(format_key(path, None)) == path


@pytest.mark.parametrize("text", ["a..b", "a.", ".a", "[0]", "a.[0]", "a[0]b", 'a."unterminated', "a b", "a[x]", ""])
def test_malformed_key_paths_are_refused(text):
    assert parse_key_path(text) is None


def test_set_takes_a_quoted_key_as_the_messages_spell_it(tmp_path):
    recipe = tiny_recipe(tmp_path / "r.toml")
    key = format_key(("sweep", "space", "training.epochs"))
    assert key == 'sweep.space."training.epochs"'
    source = read_recipe(recipe, [f"{key}={{ choice = [1, 2] }}", "data.sources[0].rows=50"])
    assert source.data["sweep"]["space"] == {"training.epochs": {"choice": [1, 2]}}
    assert source.data["data"]["sources"][0]["rows"] == 50


def test_flattening_walks_tables_and_arrays_of_tables_only():
    value = {
        "training": {"epochs": 2, "target_modules": ["q", "v"]},
        "data": {"sources": [{"type": "files", "files": {"./a.csv": "ab12"}, "columns": {}}]},
        "metrics": [],
    }
    assert key_paths(value) == {
        "training.epochs": 2,
        "training.target_modules": ["q", "v"],  # an array of plain values is one value
        "data.sources[0].type": "files",
        'data.sources[0].files."./a.csv"': "ab12",
        "data.sources[0].columns": {},
        "metrics": [],
    }
    assert runner.key_paths is key_paths  # what plugins (the trackers) use
    for path, item in leaves(value):  # every key path leads back to its value
        node = value
        for part in parse_key_path(format_key(path, None)):
            node = node[part]
        assert node == item


def test_a_lock_names_each_input_by_the_path_that_reaches_it(tmp_path, capsys):
    data = write(tmp_path / "data.csv", "text,label\n" + "".join(f"day {i},{'ab'[i % 2]}\n" for i in range(40)))
    recipe = tiny_recipe(tmp_path / "r.toml")
    text = recipe.read_text().replace('type = "synthetic"\nrows = 300', f'type = "files"\npath = "{data.name}"')
    recipe.write_text(text)
    assert cli("lock", recipe) == 0, capsys.readouterr().err
    lock = json.loads((tmp_path / "r.lock").read_text())
    flat = lockfile.flatten(lock)
    key = 'inputs.data.sources[0].files."./data.csv"'
    assert flat[key] == lock["inputs"]["data.sources[0]"]["files"]["./data.csv"]
    assert parse_key_path(key) == ("inputs", "data", "sources", 0, "files", "./data.csv")
    assert flat["resolved.data.sources[0].path"] == "./data.csv"
    assert "0 Hub revision(s) pinned, 1 hash(es)" in capsys.readouterr().out
