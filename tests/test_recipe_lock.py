"""Locked recipes (`finetune lock`, `--locked`) and `[run] requires`."""

import json

import pytest
from conftest import cli, tiny_recipe, write

from runner.recipe import lockfile

ROWS = "".join(f"{w} day {i},{'ab'[i % 2]}\n" for i, w in enumerate(["good", "bad"] * 60))


def files_recipe(tmp_path, extra: str = ""):
    """The tiny recipe reading a CSV file beside it, at a size that trains in a few seconds."""
    write(tmp_path / "data.csv", "text,label\n" + ROWS)
    path = tiny_recipe(tmp_path / "recipe.toml", epochs=1, extra=extra)
    path.write_text(path.read_text().replace('type = "synthetic"\nrows = 300', 'type = "files"\npath = "data.csv"'))
    return path


def test_lock_then_run_locked_passes_and_keeps_the_lock(tmp_path, capsys):
    recipe = files_recipe(tmp_path)
    assert cli("lock", recipe) == 0
    out = capsys.readouterr().out
    lock_file = tmp_path / "recipe.lock"
    assert f"wrote {lock_file}" in out
    lock = json.loads(lock_file.read_text())
    # paths inside the recipe's folder are relative: the lock holds on a colleague's checkout
    assert lock["resolved"]["data"]["sources"][0]["path"] == "./data.csv"
    files = lock["inputs"]["data.sources[0]"]["files"]
    assert list(files) == ["./data.csv"] and len(files["./data.csv"]) == 64
    assert lock["versions"]["finetune-runner"]
    assert lock["components"]["model config"] == "finetune-runner"

    assert cli("lock", recipe) == 0  # locking again changes nothing: a clean diff
    assert json.loads(lock_file.read_text()) == lock

    assert cli("validate", "--locked", recipe) == 0
    run = tmp_path / "run"
    code = cli("run", recipe, "--locked", "--output", run)
    assert code == 0, capsys.readouterr().err
    assert json.loads((run / "recipe.lock").read_text()) == lock  # recipe + lock reproduce the run


def test_locked_refuses_after_a_data_file_changes(tmp_path, capsys):
    recipe = files_recipe(tmp_path)
    assert cli("lock", recipe) == 0
    with open(tmp_path / "data.csv", "a") as f:
        f.write("one more day,a\n")
    capsys.readouterr()
    run = tmp_path / "run"
    assert cli("run", recipe, "--locked", "--output", run) == 2
    err = capsys.readouterr().err
    assert "--locked: 1 difference from" in err
    # the key path spelled as `--set` takes it: a file's path is a quoted key
    assert 'inputs.data.sources[0].files."./data.csv": locked "' in err
    assert "Traceback" not in err
    assert not run.exists()  # refused before anything was written


def test_locked_refuses_after_a_plugin_version_changes(tmp_path, capsys, monkeypatch):
    recipe = files_recipe(tmp_path)
    assert cli("lock", recipe) == 0
    locked = json.loads((tmp_path / "recipe.lock").read_text())["versions"]["finetune-runner"]
    monkeypatch.setattr(lockfile, "distribution_version", lambda dist, recorded: "9.9.9")
    capsys.readouterr()
    assert cli("validate", "--locked", recipe) == 2
    out = capsys.readouterr().out
    assert f'versions.finetune-runner: locked "{locked}", now "9.9.9"' in out


def test_locked_refuses_a_changed_override_and_names_the_key(tmp_path, capsys):
    recipe = files_recipe(tmp_path)
    assert cli("lock", recipe, "--set", "training.learning_rate=0.01") == 0
    capsys.readouterr()
    assert cli("validate", "--locked", recipe) == 2
    out = capsys.readouterr().out
    assert "resolved.training.learning_rate: locked 0.01, now 0.003" in out
    assert "the lock was made with --set training.learning_rate=0.01" in out
    assert cli("validate", "--locked", recipe, "--set", "training.learning_rate=0.01") == 0


def test_locked_without_a_lock_says_to_run_finetune_lock(tmp_path, capsys):
    recipe = files_recipe(tmp_path)
    assert cli("run", recipe, "--locked", "--output", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "recipe.lock does not exist" in err and "finetune lock" in err


def test_a_hub_id_offline_is_recorded_unresolved_and_not_a_difference(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = files_recipe(tmp_path)
    text = recipe.read_text().replace(
        '[tokenizer]\ntype = "trained"', '[tokenizer]\ntype = "pretrained"\npath = "gpt2"'
    )
    recipe.write_text(text.replace("vocab_size = 400\n", ""))
    assert cli("lock", recipe) == 0
    out = capsys.readouterr().out
    assert "tokenizer.path: 'gpt2' unresolved (offline)" in out
    lock = json.loads((tmp_path / "recipe.lock").read_text())
    assert lock["inputs"]["tokenizer.path"] == {"hub": "gpt2", "revision": lockfile.OFFLINE}
    current = {**lock, "inputs": {**lock["inputs"], "tokenizer.path": {"hub": "gpt2", "revision": "abc123"}}}
    differences, notes = lockfile.compare(lock, current)
    assert differences == [] and notes == [
        'inputs.tokenizer.path.revision: cannot verify (locked "unresolved (offline)", now "abc123")'
    ]


def test_a_local_model_directory_is_hashed(tmp_path):
    model = tmp_path / "model"
    write(model / "config.json", "{}")
    write(model / ".cache" / "x", "ignored")
    before = lockfile.sha256_tree(model)
    write(model / ".cache" / "x", "changed")  # hidden bookkeeping does not count
    assert lockfile.sha256_tree(model) == before
    write(model / "config.json", '{"n": 1}')
    assert lockfile.sha256_tree(model) != before


# -- [run] requires ------------------------------------------------------------------------------------
@pytest.mark.parametrize("requirement", ['"finetune-runner>=0.1"', '"pydantic>=2", "finetune-runner"'])
def test_met_requirements_pass(tmp_path, requirement):
    recipe = tiny_recipe(tmp_path / "r.toml")
    recipe.write_text(recipe.read_text().replace("[run]\n", f"[run]\nrequires = [{requirement}]\n"))
    assert cli("validate", recipe) == 0


def test_unmet_and_malformed_requirements_are_errors_with_file_and_line(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path / "r.toml")
    requires = 'requires = ["finetune-runner>=99", "no-such-dist-xyz>=1", "not a requirement!"]\n'
    recipe.write_text(recipe.read_text().replace("[run]\n", "[run]\n" + requires))
    assert cli("validate", recipe) == 2
    out = capsys.readouterr().out
    assert "r.toml:2:13 run.requires[0]: finetune-runner " in out
    assert "is installed, the recipe requires finetune-runner>=99 (pip install 'finetune-runner>=99')" in out
    assert (
        "r.toml:2:36 run.requires[1]: no-such-dist-xyz is not installed (the recipe requires no-such-dist-xyz>=1)"
        in out
    )
    assert "r.toml:2:59 run.requires[2]: not a valid requirement" in out


def test_requirements_are_checked_before_anything_runs(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path / "r.toml")
    recipe.write_text(recipe.read_text().replace("[run]\n", '[run]\nrequires = ["finetune-runner>=99"]\n'))
    run = tmp_path / "run"
    assert cli("run", recipe, "--output", run) == 2
    assert "run.requires[0]" in capsys.readouterr().err
    assert not run.exists()


def test_requires_must_be_an_array_of_strings(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path / "r.toml")
    recipe.write_text(recipe.read_text().replace("[run]\n", '[run]\nrequires = "finetune-runner"\n'))
    assert cli("validate", recipe) == 2
    assert "run.requires: expected an array" in capsys.readouterr().out


def test_validate_locked_imports_neither_torch_nor_transformers(tmp_path):
    import subprocess
    import sys

    recipe = files_recipe(tmp_path)
    assert cli("lock", recipe) == 0
    code = (
        "import sys\n"
        "from runner.cli.main import main\n"
        f"rc = main(['validate', '--locked', {str(recipe)!r}])\n"
        "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))\n"
        "sys.exit(rc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def test_a_lock_holds_where_the_recipe_pack_is_installed_elsewhere(tmp_path, capsys):
    import shutil

    from runner.plugins.manager import get_plugins
    from runner.plugins.packs import shipped_recipes_dir

    mine = write(tmp_path / "mine" / "recipe.toml", 'extends = "finetune-runner:local-csv"\n')
    assert cli("lock", mine) == 0
    lock = json.loads((tmp_path / "mine" / "recipe.lock").read_text())
    # the pack's data file is named by the pack, not by where this machine installed it
    assert lock["resolved"]["data"]["sources"][0]["path"] == "finetune-runner:data/reviews.csv"
    assert list(lock["inputs"]["data.sources[0]"]["files"]) == ["finetune-runner:data/reviews.csv"]
    # a colleague's machine: the same pack, installed at another path
    elsewhere = shutil.copytree(shipped_recipes_dir(), tmp_path / "site-packages" / "recipes")
    get_plugins().packs.get("finetune-runner").paths[:] = [elsewhere]
    capsys.readouterr()
    assert cli("validate", "--locked", mine) == 0, capsys.readouterr()
