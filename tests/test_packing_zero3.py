"""Packed rows under DeepSpeed ZeRO-3 on two CPU processes: the build-time packing probe runs on the
gathered weights (it failed on the partitioned ones: "'weight' must be 2-D"), training takes the steps
one process takes, and the chunked loss, which would hang there, is a recipe error."""

from __future__ import annotations

import pytest
from conftest import cli, write

from runner.storage.rundir import RunDir

pytestmark = pytest.mark.slow

RECIPE = """
[run]
seed = 3
threads = 1

[[data.sources]]
type = "synthetic"
kind = "arithmetic"
rows = 160

[tokenizer]
type = "trained"
vocab_size = 200
max_length = 64

[model]
type = "config"
architecture = "llama"
config = { hidden_size = 32, num_hidden_layers = 1, num_attention_heads = 2, num_key_value_heads = 1, \
intermediate_size = 64, max_position_embeddings = 64 }

[task]
type = "instruction"
format = "alpaca"
template = "chatml"
packing = true

[evaluation]
generation_rows = 4
baseline = false

[training]
learning_rate = 1e-2
batch_size = 8
max_steps = 4
log_every = 1
"""


def losses(path) -> list[float]:
    return [r["loss"] for r in RunDir(path).read_metrics_log() if r["split"] == "train" and "loss" in r]


def test_packed_rows_train_under_zero3_as_one_process_does_and_the_chunked_loss_is_refused(tmp_path, capsys):
    recipe = write(tmp_path / "r.toml", RECIPE)
    zero3 = ["--set", 'distributed.engine="deepspeed"', "--set", "distributed.zero_stage=3"]
    # Each process gathers the output layer once per chunk of its own tokens: unequal calls, a hang.
    assert cli("validate", recipe, *zero3, "--set", 'training.loss="chunked"') == 2
    assert "training.loss: 'chunked' cannot run under ZeRO-3" in capsys.readouterr().out
    assert cli("run", recipe, "--output", tmp_path / "one") == 0
    assert (
        cli("run", recipe, "--output", tmp_path / "zero3", "--nproc", "2", "--set", "training.batch_size=4", *zero3)
        == 0
    )
    assert len(losses(tmp_path / "one")) == 4
    assert losses(tmp_path / "zero3") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)
