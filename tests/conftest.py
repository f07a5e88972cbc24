"""Shared test set-up: offline, a private cache, tiny recipes, in-process runs."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# DeepSpeed's JIT-built C++ op is cached by name only: environments with other paths (a CI clone,
# .venv-latest) would rebuild it over each other for minutes. Each keeps its own, where `make` built it.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"

# A complete, tiny, offline recipe: the quickstart's components at a size that trains in seconds.
TINY = """
[run]
seed = 7
threads = 1

[[data.sources]]
type = "synthetic"
rows = {rows}

[tokenizer]
type = "trained"
vocab_size = 400
max_length = 32

[model]
type = "config"
architecture = "gpt2"
config = {{ n_layer = 1, n_head = 2, n_embd = 32, n_positions = 32 }}

[task]
type = "classification"

[training]
learning_rate = 3e-3
batch_size = 32
epochs = {epochs}
log_every = 1
eval_every = {eval_every}
"""


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    os.environ["FINETUNE_CACHE"] = str(tmp_path_factory.mktemp("finetune-cache"))


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch):
    """Every test starts from the installed plugins, loaded anew."""
    from runner.plugins.manager import reset_plugins

    monkeypatch.delenv("FINETUNE_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("FINETUNE_LOAD_PLUGINS", raising=False)
    reset_plugins()
    yield
    reset_plugins()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def tiny_recipe(path: Path, *, rows: int = 300, epochs: int = 2, eval_every: str | int = '"epoch"', extra: str = ""):
    return write(path, TINY.format(rows=rows, epochs=epochs, eval_every=eval_every) + textwrap.dedent(extra))


def no_dropout_recipe(path: Path, *, rows: int, batch_size: int, eval_every: str | int, extra: str = "") -> Path:
    """The tiny recipe with no dropout (each process would draw its own masks) and one thread a
    process: its runs agree exactly however many processes, or machines, train it."""
    path = tiny_recipe(path, rows=rows, epochs=1, eval_every=eval_every, extra="keep_best = false\n" + extra)
    text = path.read_text().replace("batch_size = 32", f"batch_size = {batch_size}")
    no_dropout = "n_positions = 32, resid_pdrop = 0.0, embd_pdrop = 0.0, attn_pdrop = 0.0 }"
    return write(path, text.replace("n_positions = 32 }", no_dropout))


def save_tiny_hub_model(directory: Path, make_model, seed: int = 5, rows: int = 500) -> Path:
    """A tiny model and the tokenizer trained for it, saved as a Hub repository holds them.
    `make_model(vocab_size)` builds the (randomly initialised, seeded) model."""
    import torch

    from plugins.data.synthetic import generate
    from plugins.tokenizers.trained import Trained, TrainedTokenizerOptions

    texts = [r["text"] for r in generate(rows, seed=seed)]
    tokenizer = Trained(TrainedTokenizerOptions(vocab_size=300)).build(None, lambda: iter(texts))
    torch.manual_seed(0)
    make_model(len(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def with_pretrained(text: str, model_dir: Path, max_length: int = 32) -> str:
    """A recipe's text with its [tokenizer] and [model] replaced by the saved model at `model_dir`."""
    start, end = text.index("[tokenizer]"), text.index("[task]")
    local = f'[tokenizer]\ntype = "pretrained"\npath = "{model_dir}"\nmax_length = {max_length}\n\n'
    local += f'[model]\ntype = "pretrained"\npath = "{model_dir}"\n\n'
    return text[:start] + local + text[end:]


def run_recipe(path: Path, output: Path, overrides: list[str] | None = None):
    """Run a recipe in this process, through the front door as `finetune run` does (runner.run);
    returns its RunOutcome (metrics, run directory, trained model and tokenizer)."""
    from runner import run

    return run(path, overrides=overrides, output=output)


def cli(*args: str) -> int:
    from runner.cli.main import main

    return main([str(a) for a in args])


def finetune_subprocess() -> list[str]:
    return [sys.executable, "-m", "runner.cli"]


@pytest.fixture
def recipe_dir(tmp_path) -> Path:
    return tmp_path
