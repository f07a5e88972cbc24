"""The plugin author's kit: a scaffolded plugin installs, registers, and passes the contract."""

import os
import subprocess
import sys

import pytest
from conftest import cli

from runner.errors import FinetuneError

pytestmark = pytest.mark.slow


def test_new_plugin_scaffold_installs_and_passes_its_contract_tests_from_the_folder_above_it(tmp_path, capsys):
    """A plugin named like its folder (`bitfit/`), installed editable as its README says, then used
    from the folder above: with the module at the project's top, the folder `bitfit/` shadowed it (an
    empty namespace package through the current directory) and the plugin registered nothing."""
    assert cli("new", "plugin", "bitfit", "--dir", tmp_path) == 0
    root = tmp_path / "bitfit"
    assert (root / "src" / "bitfit" / "__init__.py").is_file() and (root / "tests" / "test_bitfit.py").is_file()
    assert not (root / "bitfit.py").exists() and not (root / "bitfit").exists()
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*install, "--target", str(site), "-e", str(root)], check=True, capture_output=True)
    # `site` acts as a site-packages directory: its .pth file (the editable install) is read.
    (site / "sitecustomize.py").write_text("import os, site\nsite.addsitedir(os.path.dirname(__file__))\n")
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}

    def finetune(*args):  # `python -m` puts the current directory first on sys.path, as pytest does
        return subprocess.run([sys.executable, "-m", "runner.cli", *args], env=env, capture_output=True, text=True,
                              cwd=tmp_path)  # fmt: skip

    listed = finetune("plugins")
    assert "strategy: bitfit" in listed.stdout and "registered no components" not in listed.stdout, listed.stdout
    reference = finetune("reference", "--plugin", "bitfit")
    assert reference.returncode == 0 and '### `type = "bitfit"`' in reference.stdout
    assert "| `train_head` | boolean | true | Also train the task head. |" in reference.stdout

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "bitfit/tests"],
        env=env, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout[-2000:]
    # the installed package's check, then 5 contract tests x 3 architectures x 2 heads; the padding
    # test is for classifiers only
    assert "28 passed, 3 skipped" in tests.stdout

    assert cli("new", "plugin", "bitfit", "--dir", tmp_path) == 2
    assert "already exists" in capsys.readouterr().err


def test_new_reward_plugin_scaffold_installs_and_passes_the_reward_contract(tmp_path):
    """`--kind reward`: the package registers a reward (a keyword match) that `finetune plugins` lists,
    whose options the reference shows, and whose generated tests (the reward contract and what it
    scores) pass once installed as its README says, run from the folder above it."""
    assert cli("new", "plugin", "polite", "--dir", tmp_path, "--kind", "reward") == 0
    root = tmp_path / "polite"
    code = (root / "src" / "polite" / "__init__.py").read_text()
    assert "register_rewards" in code and "import torch" not in code  # `finetune validate` stays fast
    assert "class TestPolite(RewardContract)" in (root / "tests" / "test_polite.py").read_text()
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*install, "--target", str(site), "-e", str(root)], check=True, capture_output=True)
    (site / "sitecustomize.py").write_text("import os, site\nsite.addsitedir(os.path.dirname(__file__))\n")
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}

    def finetune(*args):
        return subprocess.run([sys.executable, "-m", "runner.cli", *args], env=env, capture_output=True, text=True,
                              cwd=tmp_path)  # fmt: skip

    listed = finetune("plugins")
    assert "reward: polite" in listed.stdout and "registered no components" not in listed.stdout, listed.stdout
    reference = finetune("reference", "--plugin", "polite")
    assert reference.returncode == 0 and '### `type = "polite"`' in reference.stdout, reference.stdout
    assert "| `words` |" in reference.stdout and "| `weight` |" in reference.stdout

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "polite/tests"],
        env=env, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout[-2000:]
    # the installed package's check, 5 contract tests, 2 of what it scores
    assert "8 passed" in tests.stdout and "skipped" not in tests.stdout, tests.stdout[-2000:]


def test_the_scaffold_writes_a_strategy_unless_told_otherwise_and_refuses_other_kinds(tmp_path, capsys):
    from runner.cli.scaffold import new_plugin

    assert cli("new", "plugin", "plain", "--dir", tmp_path) == 0
    assert "register_strategies" in (tmp_path / "plain" / "src" / "plain" / "__init__.py").read_text()
    with pytest.raises(SystemExit) as refused:  # argparse's own error: usage and exit code 2
        cli("new", "plugin", "other", "--dir", tmp_path, "--kind", "metric")
    assert refused.value.code == 2
    assert "invalid choice: 'metric'" in capsys.readouterr().err and not (tmp_path / "other").exists()
    with pytest.raises(FinetuneError, match="writes one of strategy, reward"):
        new_plugin("other", tmp_path, kind="metric")


def test_a_package_name_with_dashes_gets_a_module_with_underscores(tmp_path):
    import tomllib

    assert cli("new", "plugin", "finetune-bitfit", "--dir", tmp_path) == 0
    root = tmp_path / "finetune-bitfit"
    assert (root / "src" / "finetune_bitfit" / "__init__.py").is_file()
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["name"] == "finetune-bitfit"
    assert project["project"]["entry-points"]["finetune"] == {"finetune_bitfit": "finetune_bitfit"}
    assert project["tool"]["setuptools"]["packages"]["find"]["where"] == ["src"]
    assert "class TestFinetuneBitfit(StrategyContract)" in (root / "tests" / "test_finetune_bitfit.py").read_text()


def test_fixtures_write_and_run_a_recipe(write_recipe, run_recipe, finetune_plugins):
    recipe = write_recipe(
        """
        [[data.sources]]
        type = "synthetic"
        rows = 120

        [tokenizer]
        type = "trained"
        max_length = 24

        [model]
        type = "config"
        architecture = "gpt2"
        config = { n_layer = 1, n_head = 2, n_embd = 16, n_positions = 24 }

        [task]
        type = "classification"

        [training]
        epochs = 1
        """
    )
    result = run_recipe(recipe)
    assert result.run_dir.status()["state"] == "completed" and "accuracy" in result.metrics["test"]
    assert "strategy_full" in finetune_plugins.registry.plugins
