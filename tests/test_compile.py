"""training.compile: torch.compile trains to the same losses and saves a model plain transformers loads."""

from __future__ import annotations

import json

import pytest
from conftest import no_dropout_recipe, run_recipe

from plugins.trainers._hf_trainer import compile_unavailable


def _train_losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r.get("split") == "train" and "loss" in r]


@pytest.mark.skipif(compile_unavailable() is not None, reason=str(compile_unavailable()))
def test_a_compiled_run_trains_as_the_plain_one_and_saves_a_plain_model(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForSequenceClassification

    from plugins.trainers.hf import HF

    # Dynamo and AOT autograd as training.compile runs them, without inductor's C++ code generation,
    # which takes a minute on 2 cores (by hand, with it: the same losses to 1e-7 on this recipe).
    values = HF._argument_values
    monkeypatch.setattr(
        HF,
        "_argument_values",
        lambda self, *a: (
            {**values(self, *a), "torch_compile_backend": "aot_eager"} if self.options.compile else values(self, *a)
        ),
    )

    from torch._dynamo.utils import counters

    losses, outcomes, graphs = {}, {}, {}
    for compiled in (False, True):
        recipe = no_dropout_recipe(
            tmp_path / f"{compiled}.toml", rows=80, batch_size=16, eval_every=3,
            extra=f"max_steps = 3\ncompile = {str(compiled).lower()}\n[evaluation]\nbaseline = false\n",
        )  # fmt: skip
        counters.clear()
        outcomes[compiled] = run_recipe(recipe, tmp_path / str(compiled))
        graphs[compiled] = counters["stats"]["unique_graphs"]
        losses[compiled] = _train_losses(outcomes[compiled].run_dir.path)
    assert graphs == {False: 0, True: graphs[True]} and graphs[True] >= 1  # dynamo compiled the model
    assert len(losses[False]) == 3 and losses[True] == pytest.approx(losses[False], rel=1e-4)
    environment = json.loads((outcomes[True].run_dir.path / "environment.json").read_text())
    assert environment["training_speed"]["compile"] is True
    # saved unwrapped: no torch.compile prefix in the weights, and transformers loads them as they are
    saved = AutoModelForSequenceClassification.from_pretrained(outcomes[True].run_dir.path / "model")
    trained = outcomes[True].model
    trained = getattr(trained, "_orig_mod", trained)
    for name, value in saved.state_dict().items():
        assert torch.equal(value, trained.state_dict()[name]), name


def test_compile_without_a_compiler_is_a_clear_error(monkeypatch):
    import shutil

    import plugins.trainers._hf_trainer as hf_trainer

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "needs a C++ compiler" in hf_trainer.compile_unavailable()
