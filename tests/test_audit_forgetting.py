"""The `forgetting` audit: corpus perplexity of the base and the fine-tuned model."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import pytest

from plugins.audits.forgetting import Forgetting, read_corpus
from plugins.tasks.causal_lm import CausalLM
from plugins.tasks.classification import Classification
from runner import AuditSubject, DataError

CORPUS = [
    "the cat sat on the mat and looked at the garden",
    "a dog ran across the field after the ball",
    "she read the letter twice before she answered it",
    "the river was quiet in the early morning light",
    "we walked home slowly while the rain kept falling",
    "he opened the window to let the cool air in",
]
UNRELATED = "0 1 2 3 4 5 6 7 8 9 9 8 7 6 5 4 3 2 1 0"


@pytest.fixture(scope="module")
def tokenizer():
    from plugins.tokenizers.trained import Trained

    trained = Trained(Trained.Options(vocab_size=320, max_length=64))
    return trained.build(None, lambda: iter(CORPUS + [UNRELATED]))


@pytest.fixture(scope="module")
def base_model(tokenizer):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    return GPT2LMHeadModel(config)


def fine_tuned_on_unrelated_text(model, tokenizer, steps: int = 15):
    """A copy of `model` after a few large steps on digits only: it learns that text is digits."""
    import torch

    tuned = copy.deepcopy(model)
    tuned.train()
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=1e-2)
    ids = torch.tensor([tokenizer(UNRELATED)["input_ids"]] * 4)
    for _ in range(steps):
        loss = tuned(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return tuned.eval()


def subject(label, model, tokenizer) -> AuditSubject:
    return AuditSubject(label, model, tokenizer, CausalLM(CausalLM.Options()), max_length=64)


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "reference.txt"
    path.write_text("\n".join(CORPUS[:3]) + "\n\n   \n" + "\n".join(CORPUS[3:]) + "\n", encoding="utf-8")
    return path


def audit(corpus, **options) -> Forgetting:
    return Forgetting(Forgetting.Options(corpus=str(corpus), **options))


def test_perplexity_is_token_weighted_over_the_corpus(corpus_file, base_model, tokenizer):
    import torch

    figures = audit(corpus_file).measure(subject("base", base_model, tokenizer), None, None)

    # Independently: the model's own mean loss per text, weighted by the tokens it predicts.
    total, tokens = 0.0, 0
    with torch.no_grad():
        for text in CORPUS:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            total += float(base_model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            tokens += ids.shape[1] - 1
    assert figures["rows"] == len(CORPUS)  # blank lines are skipped
    assert figures["tokens"] == tokens
    assert figures["perplexity"] == pytest.approx(math.exp(total / tokens), rel=1e-4)


def test_training_on_unrelated_text_raises_perplexity_and_fails_a_tight_threshold(corpus_file, base_model, tokenizer):
    forgetting = audit(corpus_file, max_increase=0.05)
    before = forgetting.measure(subject("base", base_model, tokenizer), None, None)
    tuned = fine_tuned_on_unrelated_text(base_model, tokenizer)
    after = forgetting.measure(subject("finetuned", tuned, tokenizer), None, None)
    result = forgetting.judge(before, after)

    assert after["perplexity"] > before["perplexity"] * 1.05
    assert result.passed is False
    assert result.figures["relative_increase"] == pytest.approx(after["perplexity"] / before["perplexity"] - 1)
    assert result.figures["base"] == before and result.figures["finetuned"] == after
    assert result.thresholds == {"max_increase": 0.05}
    assert result.summary.startswith("perplexity on reference.txt rose from ")
    assert result.summary.endswith("more than the 5% allowed")


def test_the_same_model_against_itself_passes_with_no_increase(corpus_file, base_model, tokenizer):
    forgetting = audit(corpus_file, max_increase=0.0)
    before = forgetting.measure(subject("base", base_model, tokenizer), None, None)
    after = forgetting.measure(subject("finetuned", base_model, tokenizer), None, None)
    result = forgetting.judge(before, after)

    assert result.passed is True
    assert result.figures["relative_increase"] == 0.0
    assert "(+0.0%), within the 0% allowed" in result.summary


def test_judge_wording_and_the_missing_baseline(corpus_file):
    forgetting = audit(corpus_file)
    base = {"perplexity": 12.3, "tokens": 100, "rows": 6}
    within = forgetting.judge(base, {**base, "perplexity": 14.1})
    assert within.passed is True
    assert within.summary == "perplexity on reference.txt rose from 12.3 to 14.1 (+14.6%), within the 20% allowed"
    lower = forgetting.judge(base, {**base, "perplexity": 11.0})
    assert lower.passed is True and "fell from 12.3 to 11.0 (-10.6%)" in lower.summary

    unknown = forgetting.judge(None, {**base, "perplexity": 14.1})
    assert unknown.passed is None
    assert "no baseline was measured" in unknown.summary
    assert unknown.figures == {"base": None, "finetuned": {**base, "perplexity": 14.1}, "relative_increase": None}


def test_corpus_formats_and_the_row_cap(tmp_path, corpus_file):
    assert read_corpus(corpus_file, 500) == CORPUS
    assert read_corpus(corpus_file, 2) == CORPUS[:2]
    jsonl = tmp_path / "reference.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(CORPUS)), encoding="utf-8")
    assert read_corpus(jsonl, 500) == CORPUS


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"text": "fine"}\n\n{"text": oops}\n', "bad.jsonl:3: not valid JSON"),
        ("bad.jsonl", '{"text": "fine"}\n{"body": "no text here"}\n', 'bad.jsonl:2: no "text" field'),
        ("bad.jsonl", '["a list"]\n', 'bad.jsonl:1: no "text" field'),
        ("bad.jsonl", '{"text": 5}\n', 'bad.jsonl:1: "text" must be a non-empty string'),
        ("bad.txt", "\n  \n", "no texts in the corpus"),
        ("bad.csv", "text\nhello\n", "a corpus is a .txt or .jsonl file"),
    ],
)
def test_bad_corpus_rows_name_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_corpus(path, 500)
    assert message in error.value.message
    assert str(path) in error.value.message


def test_check_rejects_tasks_without_a_language_model_head(tmp_path, corpus_file):
    def recipe(task):
        return SimpleNamespace(task=SimpleNamespace(cls=task, name=task.name))

    options = Forgetting.Options(corpus=str(corpus_file))
    problems = list(Forgetting.check(options, recipe(Classification)))
    assert len(problems) == 1
    key, message = problems[0]
    assert key == ("type",)
    assert "causal language model" in message and "'classification'" in message
    assert "sequence_classification" in message

    assert list(Forgetting.check(options, recipe(CausalLM))) == []

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n', encoding="utf-8")
    ((key, message),) = Forgetting.check(Forgetting.Options(corpus=str(bad)), recipe(CausalLM))
    assert key == ("corpus",) and f"{bad}:2" in message


def test_options_are_strict(corpus_file):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Forgetting.Options(corpus=str(corpus_file), threshold=0.1)
    with pytest.raises(ValidationError):
        Forgetting.Options(corpus=str(corpus_file), max_increase=-0.1)
    with pytest.raises(ValidationError):
        Forgetting.Options()  # the corpus is required
