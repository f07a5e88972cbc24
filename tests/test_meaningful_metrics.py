"""Metrics that mean something: text metrics compare the way the model can write (a lowercasing
tokenizer makes exact match case-insensitive), BLEU is left out where references are shorter than
its n-grams, `finetune plan --offline` says which rows it cannot work out and why, and saved
configs name the tokenizer's special tokens."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
from conftest import cli, run_recipe, tiny_recipe, write

from plugins.metrics import text as T
from plugins.tokenizers.trained import Trained, TrainedTokenizerOptions
from runner.components import RunContext
from runner.evaluation.evaluator import Evaluator, lowercasing

TEXTS = ["positive news about the coffee", "negative words on the flight", "neutral notes on the pizza"] * 20


def _tokenizer(lowercase: bool):
    options = TrainedTokenizerOptions(vocab_size=300, lowercase=lowercase)
    return Trained(options).build(RunContext(seed=0, cache_dir=Path(".")), lambda: iter(TEXTS))


def _metric(cls, **options):
    m = cls(cls.Options(**options))
    m.prepare(None)
    return m


class _Events:
    def __init__(self):
        self.lines: list[str] = []

    def info(self, text: str) -> None:
        self.lines.append(text)


def _evaluator(tokenizer, metrics) -> Evaluator:
    """An Evaluator with only what scoring generated answers needs."""
    return Evaluator(
        options=None, trainer=None, task=None, tokenizer=tokenizer, max_length=32, metrics=metrics,
        collator=None, splits={}, train_rows=None, seed=0, events=_Events(), checkpoint_dir=None,
    )  # fmt: skip


def test_exact_match_ignores_case_when_the_tokenizer_lowercases():
    lower = _tokenizer(lowercase=True)
    assert lowercasing(lower) == "the tokenizer lowercases"
    assert lower.decode(lower.encode("Positive", add_special_tokens=False)).strip() == "positive"
    # what the model can write through it: lower-case answers; the references keep their capitals
    answers, references = ["positive", "negative ", "neutral"], ["Positive", "Negative", "Positive"]
    evaluator = _evaluator(lower, [_metric(T.ExactMatch)])
    assert evaluator.text_scores(answers, references)["exact_match"] == pytest.approx(2 / 3)
    note = evaluator.record["notes"]["exact_match"]
    assert note.startswith("case-insensitive: the tokenizer lowercases")
    assert evaluator.record["comparison"] == {
        "case": "insensitive",
        "reason": "the tokenizer lowercases",
        "metrics": ["exact_match"],
    }
    assert len(evaluator.events.lines) == 1 and "exact_match compare answers lower-cased" in evaluator.events.lines[0]
    evaluator.text_scores(answers, references)
    assert len(evaluator.events.lines) == 1  # said once

    # A tokenizer that keeps case keeps the comparison exact, and says nothing.
    cased = _tokenizer(lowercase=False)
    assert lowercasing(cased) is None
    evaluator = _evaluator(cased, [_metric(T.ExactMatch)])
    assert evaluator.text_scores(answers, references)["exact_match"] == 0.0
    assert "notes" not in evaluator.record and not evaluator.events.lines


def test_bleu_on_single_token_references_is_reported_as_not_meaningful():
    evaluator = _evaluator(_tokenizer(lowercase=False), [_metric(T.ExactMatch), _metric(T.Bleu)])
    scores = evaluator.text_scores(["positive", "negative", "neutral"], ["positive", "negative", "positive"])
    assert scores == {"exact_match": pytest.approx(2 / 3)}  # no BLEU of 0 beside it
    reason = evaluator.record["left_out"]["bleu"]
    assert "median length of 1 word," in reason and "4-gram BLEU" in reason
    assert evaluator.events.lines == [f"bleu left out: {reason}"]
    # on sentences it is computed
    long = ["the cat sat on the mat today", "a dog ran far away from home"]
    assert "bleu" in _evaluator(None, [_metric(T.Bleu)]).text_scores(long, long)


def test_plan_offline_names_the_rows_it_cannot_work_out(tmp_path, capsys, monkeypatch):
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("gpt2", "config.json"), str):
        pytest.skip("gpt2's config is cached here: the plan can build the model")
    recipe = write(
        tmp_path / "hub.toml",
        """
        [[data.sources]]
        type = "synthetic"
        rows = 100

        [tokenizer]
        type = "trained"
        vocab_size = 300
        max_length = 32

        [model]
        type = "pretrained"
        path = "gpt2"

        [task]
        type = "classification"
        """,
    )
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping: one table row per line
    assert cli("plan", recipe, "--offline") == 0
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    why = "cannot load model config 'gpt2': working offline and it is not in the local cache"
    assert f"parameters unknown ({why})" in out
    assert f"memory per device unknown ({why})" in out
    assert "optimizer steps 15" in out  # the data is there: the steps are known

    # Without the data, the steps are unknown too, and say why.
    recipe.write_text(
        recipe.read_text().replace('type = "synthetic"\nrows = 100', 'type = "hub"\npath = "no-one/no-such-set"')
    )
    assert cli("plan", recipe, "--offline") == 0
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "optimizer steps unknown (cannot load Hub dataset 'no-one/no-such-set'" in out
    assert "parameters unknown (the tokenizer is trained on the data, and cannot load Hub dataset" in out


def test_saved_configs_carry_the_tokenizers_special_token_ids(tmp_path, caplog):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, GenerationConfig

    extra = '[strategy]\ntype = "lora"\nr = 4\n\n[evaluation]\nbaseline = false\nbootstrap = 0\n'
    recipe = tiny_recipe(tmp_path / "r.toml", rows=100, epochs=1, extra=extra)
    result = run_recipe(recipe, tmp_path / "run")
    assert cli("export", result.run_dir.path, "--merge") == 0
    for name in ("base_model", "merged"):
        directory = result.run_dir.path / name
        tokenizer = AutoTokenizer.from_pretrained(directory)
        config = AutoConfig.from_pretrained(directory)
        ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
        assert None not in ids.values()
        assert {k: getattr(config, f"{k}_token_id") for k in ids} == ids, name
        assert all(i < config.vocab_size == len(tokenizer) for i in ids.values())
        if (directory / "generation_config.json").is_file():
            generation = GenerationConfig.from_pretrained(directory)
            assert {k: getattr(generation, f"{k}_token_id") for k in ids} == ids, name
        saved = json.loads((directory / "config.json").read_text())
        assert 50256 not in (saved.get("bos_token_id"), saved.get("eos_token_id"))
        caplog.clear()
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
            warnings.simplefilter("always")
            AutoModelForSequenceClassification.from_pretrained(directory)
        said = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
        assert not [s for s in said if "token_id" in s or "vocab" in s], said
