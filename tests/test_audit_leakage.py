"""The `leakage` audit: exact and near duplicates between the training and the evaluated splits."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from plugins.audits.leakage import Leakage, normalise
from runner import AuditData, Task


class _Text(Task):
    """The smallest task: rows with a text column."""

    name = "text"


def _words(seed: int, count: int = 3000) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8))) for _ in range(count)]


def sentences(count: int, words: int = 20, seed: int = 0) -> list[str]:
    """Distinct random sentences over a large vocabulary: no two share more than a word or two."""
    rng = random.Random(seed)
    vocab = _words(seed)
    return [" ".join(rng.choice(vocab) for _ in range(words)).capitalize() + "." for _ in range(count)]


def audit_data(**splits: list[str]) -> AuditData:
    from datasets import Dataset

    task = _Text(_Text.Options())
    parts = {split: [(task, Dataset.from_list([{"text": t} for t in texts]))] for split, texts in splits.items()}
    return AuditData(task, parts, where=lambda split, i: f"{split} row {i + 1}")


def audit(**options) -> Leakage:
    return Leakage(Leakage.Options(**options))


def test_normalise_folds_unicode_case_whitespace_and_punctuation():
    assert normalise("  Ｇｒｅａｔ   MOVIE!!\n") == normalise("great movie") == "great movie"
    assert normalise("Straße, «quoted» — text") == "strasse quoted text"
    assert normalise("?!...") == ""


def test_exact_duplicates_with_case_and_whitespace_changes_are_found_at_their_rows():
    train = sentences(200, seed=1)
    test = sentences(50, seed=2)
    test[5] = "  " + train[30].upper().replace(" ", "   ") + "  "
    test[17] = train[99].lower().rstrip(".") + "!"
    result = audit().check_data(audit_data(train=train, test=test))

    assert result.passed is False
    assert result.figures["test"] == {"rows": 50, "exact": 2, "near": 0, "exact_fraction": 0.04, "near_fraction": 0.0}
    pairs = {(e["eval"], e["train"]) for e in result.examples}
    assert pairs == {("test row 6", "train row 31"), ("test row 18", "train row 100")}
    assert all(e["kind"] == "exact" and e["similarity"] == 1.0 for e in result.examples)
    assert result.examples[0]["train_text"] == train[30]
    assert result.summary.startswith("2 of 50 test rows (4.0%) duplicate training rows exactly, 0 more nearly")


def test_near_duplicate_with_one_word_changed_is_found():
    train = sentences(300, seed=3)
    test = sentences(40, seed=4)
    changed = train[123].split()
    changed[10] = "zzzzzz"  # a middle word: two of the 19 word bigrams change
    test[7] = " ".join(changed)
    result = audit().check_data(audit_data(train=train, test=test))

    assert result.figures["test"]["exact"] == 0
    assert result.figures["test"]["near"] == 1
    (example,) = result.examples
    assert (example["kind"], example["train"], example["eval"]) == ("near", "train row 124", "test row 8")
    assert example["similarity"] == pytest.approx((19 - 2) / (19 + 2), abs=1e-4)  # 17 shared of 21 bigrams
    assert result.passed is False  # 1 of 40 rows is 2.5%, above the default 1%


def test_short_texts_are_compared_by_characters():
    train = ["so happy with my new phone today", "the bus was late again this morning", "who else is watching"]
    test = ["so hapy with my new phone today", "completely different words here", "who else is watching???"]
    result = audit(max_near=1.0).check_data(audit_data(train=train, test=test))

    assert result.figures["test"]["exact"] == 1  # punctuation is not a difference
    assert result.figures["test"]["near"] == 1  # one letter dropped: word bigrams would keep only 4 of 8
    near = next(e for e in result.examples if e["kind"] == "near")
    assert (near["train"], near["eval"]) == ("train row 1", "test row 1")


def test_pairs_below_the_similarity_are_not_reported():
    train = sentences(100, seed=5)
    test = sentences(20, seed=6)
    changed = train[50].split()
    changed[6], changed[13] = "qqqqqq", "wwwwww"  # four bigrams change: Jaccard 15/23, about 0.65
    test[0] = " ".join(changed)

    strict = audit().check_data(audit_data(train=train, test=test))
    loose = audit(similarity=0.6, max_near=1.0).check_data(audit_data(train=train, test=test))

    assert strict.figures["test"]["near"] == 0 and strict.passed is True
    assert loose.figures["test"]["near"] == 1 and loose.passed is True
    assert loose.examples[0]["similarity"] == pytest.approx(15 / 23, abs=1e-4)


def test_clean_splits_pass_with_nothing_found():
    data = audit_data(train=sentences(500, seed=7), validation=sentences(80, seed=8), test=sentences(80, seed=9))
    result = audit().check_data(data)

    assert result.passed is True
    for split in ("validation", "test"):
        assert result.figures[split]["rows"] == 80
        assert result.figures[split]["exact"] == result.figures[split]["near"] == 0
    assert result.examples == []


def test_duplicates_within_train_are_not_leakage_and_count_once():
    train = sentences(50, seed=10)
    train += [train[3], train[3].upper(), train[7]]  # repeats inside the training split
    test = sentences(30, seed=11)
    clean = audit().check_data(audit_data(train=train, test=test))
    assert clean.passed is True and clean.figures["test"]["exact"] == 0

    test[0] = train[3]
    leaked = audit().check_data(audit_data(train=train, test=test))
    assert leaked.figures["test"]["exact"] == 1
    assert leaked.examples[0]["train"] == "train row 4"  # the first of the three copies


@pytest.mark.parametrize(
    ("options", "passed"),
    [
        ({}, False),  # any exact duplicate fails by default
        ({"max_exact": 0.02}, True),  # 2 of 100 exact, 1 of 100 near: both at their limits
        ({"max_exact": 0.019}, False),
        ({"max_exact": 0.02, "max_near": 0.009}, False),
    ],
)
def test_thresholds_decide_pass_or_fail(options, passed):
    train = sentences(200, seed=12)
    test = sentences(100, seed=13)
    test[10], test[20] = train[0], train[1].upper()
    changed = train[2].split()
    changed[-1] = "different"
    test[30] = " ".join(changed)
    result = audit(**options).check_data(audit_data(train=train, test=test))

    assert (result.figures["test"]["exact"], result.figures["test"]["near"]) == (2, 1)
    assert result.passed is passed
    assert result.thresholds["max_exact"] == options.get("max_exact", 0.0)


def test_each_split_is_judged_and_examples_are_capped_and_shortened():
    train = sentences(100, words=60, seed=14)  # long rows: examples show at most ~200 characters
    validation = sentences(20, words=60, seed=15)
    test = sentences(20, words=60, seed=16)
    for i in range(5):
        validation[i] = train[i]
        test[i] = train[10 + i]
    result = audit(examples=4, max_exact=1.0).check_data(audit_data(train=train, validation=validation, test=test))

    assert result.passed is True
    assert result.figures["validation"]["exact"] == result.figures["test"]["exact"] == 5
    assert len(result.examples) == 4
    assert {e["split"] for e in result.examples} == {"validation", "test"}
    assert all(len(e["train_text"]) <= 200 and len(e["eval_text"]) <= 200 for e in result.examples)
    assert "5 of 20 validation rows (25.0%)" in result.summary and "5 of 20 test rows (25.0%)" in result.summary


def test_missing_splits_are_skipped_and_nothing_to_compare_is_undecided():
    train = sentences(30, seed=17)
    only_test = audit().check_data(audit_data(train=train, test=[train[0]]))
    assert list(only_test.figures) == ["test"]

    nothing = audit().check_data(audit_data(train=train))
    assert nothing.passed is None
    assert "no validation or test rows" in nothing.summary


def test_options_are_strict_and_the_audit_measures_no_model():
    with pytest.raises(ValidationError):
        Leakage.Options(similarity=0.8, threshold=0.9)  # unknown key
    with pytest.raises(ValidationError):
        Leakage.Options(similarity=0.3)
    with pytest.raises(ValidationError):
        Leakage.Options(splits=["train"])
    from types import SimpleNamespace

    from runner.evaluation.audits import Audits

    audits = Audits([SimpleNamespace(create=audit)], ctx=None, events=None)
    assert audits.audits and not audits.model_audits  # no model is loaded or measured for it
