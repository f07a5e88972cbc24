"""The plugin author's kit: a scaffolded plugin installs, registers, and passes the contract."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT, cli

pytestmark = pytest.mark.slow


def test_new_plugin_scaffold_installs_and_passes_its_contract_tests(tmp_path, capsys):
    assert cli("new", "plugin", "finetune-bitfit", "--dir", tmp_path) == 0
    root = tmp_path / "finetune-bitfit"
    assert (root / "finetune_bitfit.py").is_file() and (root / "tests" / "test_finetune_bitfit.py").is_file()
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*install, "--target", str(site), str(root)], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}

    listed = subprocess.run([sys.executable, "-m", "runner.cli", "plugins"], env={**env, "COLUMNS": "200"},
                            capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert "finetune_bitfit" in listed.stdout and "strategy: finetune_bitfit" in listed.stdout

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
        env=env, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout[-2000:]
    # 5 contract tests x 3 architectures x 2 heads; the padding test is for classifiers only
    assert "27 passed, 3 skipped" in tests.stdout

    assert cli("new", "plugin", "finetune-bitfit", "--dir", tmp_path) == 2
    assert "already exists" in capsys.readouterr().err


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
