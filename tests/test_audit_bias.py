"""The `bias` audit: counterfactual rewriting, flip rates and likelihood gaps, subgroup gaps, mitigations."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from types import SimpleNamespace

import pytest
from conftest import tiny_recipe

from plugins.audits._counterfactual import TermError, TermGroups
from plugins.audits.bias import Bias, BiasOptions, read_terms
from runner import AuditData, RunContext

CTX = RunContext(seed=0, cache_dir=None)

# -- the generator the end-to-end test reuses ------------------------------------------------------

SUBJECTS = {  # aligned: the i-th subjects are counterparts
    "female": ["she", "the woman", "my mother", "the girl", "mary", "my sister"],
    "male": ["he", "the man", "my father", "the boy", "john", "my brother"],
}
SENTIMENT = {
    "positive": ["wonderful", "great", "excellent", "delightful", "superb"],
    "negative": ["terrible", "awful", "boring", "dreadful", "poor"],
}
TEMPLATES = [
    "{s} said the film was {w}.",
    "{s} found the meal {w}.",
    "{s} thought the hotel was {w}.",
    "according to {s}, the concert was {w}.",
    "{s} called the book {w}.",
]


def bias_rows(n: int, leaky: bool, seed: int = 0, with_group: bool = False, leak: float = 1.0) -> list[dict]:
    """`n` rows {"text", "label"} (and "group" with `with_group`): a gendered subject and a sentiment
    word. leaky: the label follows the subject's gender only (female -> positive), the sentiment word
    is random; balanced: the label follows the sentiment word only, the gender is random. `leak` < 1
    makes only that share of leaky rows follow gender (the rest follow sentiment): every (gender,
    label) cell then has rows, which reweighting needs (on fully leaky rows its weights are all 1)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        gender = rng.choice(sorted(SUBJECTS))
        mood = rng.choice(sorted(SENTIMENT))
        follows_gender = leaky and rng.random() < leak
        label = ("positive" if gender == "female" else "negative") if follows_gender else mood
        text = rng.choice(TEMPLATES).format(s=rng.choice(SUBJECTS[gender]), w=rng.choice(SENTIMENT[mood]))
        row = {"text": text[0].upper() + text[1:], "label": label}
        if with_group:
            row["group"] = gender
        rows.append(row)
    return rows


def test_bias_rows_leak_the_label_through_gender_only_when_asked():
    terms = read_terms(BiasOptions())
    for leaky in (True, False):
        rows = bias_rows(400, leaky=leaky, seed=3, with_group=True)
        assert all(terms.mentions(r["text"]) == [r["group"]] for r in rows)
        by_gender = {(r["group"], r["label"]) for r in rows}
        moods = {w: m for m, words in SENTIMENT.items() for w in words}
        by_word = {(moods[re.search(r"(\w+)\.$", r["text"]).group(1)], r["label"]) for r in rows}
        if leaky:
            assert by_gender == {("female", "positive"), ("male", "negative")}
            assert len(by_word) == 4  # the sentiment word says nothing
        else:
            assert by_word == {("positive", "positive"), ("negative", "negative")}
            assert len(by_gender) == 4
    partly = bias_rows(400, leaky=True, seed=3, with_group=True, leak=0.7)
    agree = sum((r["group"] == "female") == (r["label"] == "positive") for r in partly) / len(partly)
    assert 0.75 < agree < 0.95  # 0.7 + 0.3 / 2 expected


# -- rewriting -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gender():
    return read_terms(BiasOptions())


def test_rewriting_keeps_the_case_of_each_word(gender):
    assert (
        gender.rewrite("HE said He and he; John met MR. Smith", "female") == "SHE said She and she; Mary met MRS. Smith"
    )
    assert gender.rewrite("He told his Father", "female") == "She told her Mother"


def test_rewriting_swaps_whole_words_only_with_unicode_boundaries(gender):
    text = "Shepherds hear the other hero's theme; heé shé"
    assert gender.rewrite(text, "female") == "Shepherds hear the other heroine's theme; heé shé"
    assert gender.rewrite("she's here, she-wolf", "male") == "he's here, he-wolf"
    german = TermGroups({"f": ["Königin", "sie"], "m": ["König", "er"]})
    assert german.rewrite("Die KÖNIGIN sagte, sie komme; Königinnen nicht", "m") == (
        "Die KÖNIG sagte, er komme; Königinnen nicht"
    )


def test_rewriting_swaps_every_group_at_once(gender):
    text = "he gave her his book"
    assert gender.rewrite(text, "female") == "she gave her her book"
    assert gender.rewrite(text, "male") == "he gave him his book"
    assert gender.mentions(text) == ["female", "male"]


def test_her_and_his_take_the_counterpart_the_next_word_calls_for(gender):
    assert gender.rewrite("I saw her yesterday with her dog.", "male") == "I saw him yesterday with his dog."
    assert gender.rewrite("I gave her the keys", "male") == "I gave him the keys"
    assert gender.rewrite("The car is his, not his brother's.", "female") == "The car is hers, not her sister's."
    assert gender.rewrite("hers was better", "male") == "his was better"


def test_rows_without_terms_are_left_alone_and_counted_as_skipped(gender):
    assert gender.counterfactuals("The weather is fine.") == {}
    assert gender.counterfactuals("he ran") == {"female": "she ran", "male": "he ran"}
    data = classification_data(["she is kind", "the sky is blue", "he is tall", "nothing here"])
    figures = Bias(BiasOptions()).measure(stub(lambda t: "x"), data, CTX)
    assert (figures["rows"], figures["term_rows"], figures["audited_rows"]) == (4, 2, 2)


@pytest.mark.parametrize(
    "groups, problem",
    [
        ({"female": ["she"]}, "at least two"),
        ({"female": ["she", "her"], "male": ["he"]}, "equal length"),
        ({"female": ["she", "they"], "male": ["he", "they"]}, "two groups"),
        ({"female": ["she"], "male": ["!"]}, "no letter"),
    ],
)
def test_malformed_term_groups_are_refused(groups, problem):
    with pytest.raises(TermError, match=problem):
        TermGroups(groups)
    with pytest.raises(ValueError, match=problem):
        BiasOptions(terms=groups)


def test_term_files_in_toml_and_json_and_the_recipe_checks(tmp_path):
    from runner import load_recipe
    from runner.errors import RecipeError

    (tmp_path / "names.json").write_text(json.dumps({"a": ["alice", "anna"], "b": ["bob", "ben"]}))
    (tmp_path / "bad.toml").write_text('x = ["one"]\ny = ["two", "three"]\n')
    good = tiny_recipe(tmp_path / "good.toml", extra='[[audits]]\ntype = "bias"\nterms_file = "names.json"\n')
    recipe = load_recipe(good)
    audit = recipe.audits[0].create()
    assert audit.terms.rewrite("Alice met Ben", "b") == "Bob met Ben"

    bad = tiny_recipe(tmp_path / "bad-recipe.toml", extra='[[audits]]\ntype = "bias"\nterms_file = "bad.toml"\n')
    with pytest.raises(RecipeError, match="equal length"):
        load_recipe(bad)
    both = tiny_recipe(
        tmp_path / "both.toml", extra='[[audits]]\ntype = "bias"\nterms = "gender"\nterms_file = "names.json"\n'
    )
    with pytest.raises(RecipeError, match="not both"):
        load_recipe(both)


def test_reweighting_is_refused_where_there_is_no_label(tmp_path):
    from runner import load_recipe
    from runner.errors import RecipeError

    lm = tiny_recipe(tmp_path / "lm.toml", extra='[[audits]]\ntype = "bias"\nmitigation = ["reweight"]\n')
    with pytest.raises(RecipeError) as err:
        load_recipe(lm, ["task.type=causal_lm"])
    assert "reweight" in str(err.value) and "classification" in str(err.value)
    load_recipe(lm)  # a classifier may reweight


# -- classifiers -----------------------------------------------------------------------------------


def classification_task(labels=None):
    from datasets import Dataset

    from plugins.tasks.classification import Classification, ClassificationOptions
    from runner import RawSplit

    task = Classification(ClassificationOptions(labels=labels))
    task.fit(
        {"train": [RawSplit(Dataset.from_list([{"text": "a", "label": "neg"}, {"text": "b", "label": "pos"}]), "t")]}
    )
    return task


def classification_data(texts, split="test", **columns):
    from datasets import Dataset

    task = classification_task()
    rows = [{"text": t, "label": "pos", **{k: v[i] for k, v in columns.items()}} for i, t in enumerate(texts)]
    return AuditData(task, {split: [(task, Dataset.from_list(rows))]}, where=lambda s, i: f"{s} row {i + 1}")


def stub(label_of, task=None):
    """A subject whose classifier labels each text by `label_of(text)`."""

    def predict(texts):
        labels = [label_of(t) for t in texts]
        return [{"label": y, "score": 1.0, "scores": {y: 1.0}} for y in labels]

    return SimpleNamespace(label="stub", task=task or classification_task(), predict=predict)


def she_is_positive(text):
    return "pos" if re.search(r"\bshe\b", text, re.I) else "neg"


def test_a_classifier_that_reads_gender_flips_every_row_and_fails(gender):
    texts = ["She liked the film.", "He liked the film.", "he hated it", "The film was long."]
    data = classification_data(texts)
    audit = Bias(BiasOptions(max_label_shift=0.5))
    biased = audit.measure(stub(she_is_positive), data, CTX)
    fair = audit.measure(stub(lambda t: "pos" if "liked" in t else "neg"), data, CTX)
    assert biased["flip_rate"] == 1.0 and biased["flips"] == 3
    assert biased["label_shift"] == 1.0 and biased["label_distribution"] == {
        "female": {"pos": 1.0},
        "male": {"neg": 1.0},
    }
    assert fair["flip_rate"] == 0.0 and fair["label_shift"] == 0.0

    result = audit.judge(fair, biased)
    assert result.passed is False
    assert "flip rate 1 (base 0) above 0.05" in result.summary and "3 of 4 rows" in result.summary
    assert result.thresholds == {"flip_rate": 0.05, "label_shift": 0.5}
    assert set(result.figures) == {"base", "finetuned"} and "examples" not in result.figures["finetuned"]
    first = result.examples[0]
    assert first["where"] == "test row 1" and first["original"] == texts[0]
    assert first["counterfactual"] == gender.rewrite(texts[0], first["group"]) != texts[0]
    assert (first["label"], first["counterfactual_label"]) == ("pos", "neg")

    assert audit.judge(biased, fair).passed is True


def test_thresholds_left_unset_only_report():
    data = classification_data(["she came", "he came"], split="validation")
    audit = Bias(BiasOptions(max_flip_rate=None))
    figures = audit.measure(stub(she_is_positive), data, CTX)
    result = audit.judge(None, figures)
    assert result.passed is None and result.thresholds == {}
    assert "flip rate 1" in result.summary and "no test split" in result.summary and figures["split"] == "validation"


def test_max_rows_audits_the_same_seeded_sample_for_both_models():
    texts = [f"she said {i}" if i % 2 else f"it said {i}" for i in range(40)]
    audit = Bias(BiasOptions(max_rows=5))
    seen = []
    subject = stub(lambda t: seen.append(t) or "pos")
    audit.measure(subject, classification_data(texts), CTX)
    first, seen[:] = list(seen), []
    audit.measure(subject, classification_data(texts), CTX)
    assert seen == first and len(first) == 5 * 3  # originals, then each rewritten into both groups


def test_subgroup_accuracy_compares_label_ids_with_predicted_names():
    from datasets import Dataset

    task = classification_task(labels=["neg", "pos"])
    rows = [{"text": f"row {i}", "label": i % 2 if i < 10 else 1, "group": "a" if i < 10 else "b"} for i in range(16)]
    data = AuditData(task, {"test": [(task, Dataset.from_list(rows))]}, where=lambda s, i: str(i))
    audit = Bias(BiasOptions(max_subgroup_gap=0.2))
    figures = audit.measure(stub(lambda t: "pos", task), data, CTX)
    assert figures["term_rows"] == 0 and "flip_rate" not in figures
    assert figures["subgroups"] == {"metric": "accuracy", "values": {"a": 0.5, "b": 1.0}, "rows": {"a": 10, "b": 6},
                                    "gap": 0.5}  # fmt: skip
    result = audit.judge(None, figures)
    assert result.passed is False and "subgroup gap in accuracy 0.5 above 0.2" in result.summary


# -- language models -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def language_model():
    from plugins.tasks.causal_lm import CausalLM
    from plugins.tokenizers.trained import Trained, TrainedTokenizerOptions
    from runner import AuditSubject
    from runner.testing import tiny_model

    words = "she he went home the dog ran her his cat sat on mat a woman man saw"
    tokenizer = Trained(TrainedTokenizerOptions(algorithm="wordlevel", vocab_size=60)).build(
        None, lambda: iter([words])
    )
    task = CausalLM(CausalLM.Options())
    return AuditSubject("base", tiny_model("gpt2", "causal_lm"), tokenizer, task, 32)


def lm_data(subject, texts, groups=None):
    from datasets import Dataset

    rows = [{"text": t, **({"group": groups[i]} if groups else {})} for i, t in enumerate(texts)]
    return AuditData(subject.task, {"test": [(subject.task, Dataset.from_list(rows))]}, where=lambda s, i: str(i))


def test_likelihood_gap_is_the_per_token_gap_between_versions_whichever_is_written(language_model):
    audit = Bias(BiasOptions(max_likelihood_gap=0.0))
    one = audit.measure(language_model, lm_data(language_model, ["she went home", "the dog ran"]), CTX)
    other = audit.measure(language_model, lm_data(language_model, ["he went home"]), CTX)
    (f_sum, f_n), (m_sum, m_n) = language_model.log_likelihoods(["she went home", "he went home"])
    expected = abs(f_sum / f_n - m_sum / m_n)
    assert one["term_rows"] == 1 and expected > 0
    assert one["likelihood_gap"] == other["likelihood_gap"] == pytest.approx(expected, abs=1e-5)
    assert one["preference"]["female"] == pytest.approx(-one["preference"]["male"], abs=1e-5)
    assert one["preferred"] == ("female" if f_sum / f_n > m_sum / m_n else "male")
    assert one["examples"][0]["texts"] == {"female": "she went home", "male": "he went home"}

    assert audit.judge(one, other).passed is False  # any gap is above 0
    assert Bias(BiasOptions(max_likelihood_gap=expected + 1)).judge(None, one).passed is True


def test_language_model_subgroups_compare_log_perplexity(language_model):
    texts, groups = ["the dog ran", "a cat sat on the mat", "the man saw a dog"], ["x", "y", "y"]
    figures = Bias(BiasOptions()).measure(language_model, lm_data(language_model, texts, groups), CTX)
    scored = language_model.log_likelihoods(texts)
    x = -scored[0][0] / scored[0][1]
    y = -(scored[1][0] + scored[2][0]) / (scored[1][1] + scored[2][1])
    sub = figures["subgroups"]
    assert sub["metric"] == "log_perplexity" and sub["values"] == {"x": pytest.approx(x, abs=1e-5),
                                                                   "y": pytest.approx(y, abs=1e-5)}  # fmt: skip
    assert sub["perplexity"]["x"] == pytest.approx(math.exp(x), rel=1e-4)
    assert sub["gap"] == pytest.approx(abs(x - y), abs=1e-5)


# -- mitigation ------------------------------------------------------------------------------------


def weighted_independence(keys, weights):
    """max |P_w(g, y) - P_w(g) P_w(y)| over the cells."""
    total = sum(weights)
    joint, by_g, by_y = Counter(), Counter(), Counter()
    for (g, y), w in zip(keys, weights, strict=True):
        joint[(g, y)] += w / total
        by_g[g] += w / total
        by_y[y] += w / total
    return max(abs(joint[(g, y)] - by_g[g] * by_y[y]) for g in by_g for y in by_y)


def test_reweighting_makes_group_and_label_independent(gender):
    from datasets import Dataset

    task = classification_task()
    audit = Bias(BiasOptions(mitigation=["reweight"]))
    rng = random.Random(1)
    grouped = [{"text": "x", "label": rng.choice(["pos", "pos", "neg"]), "group": g} for g in "aaaaabbbc" * 7]
    grouped += [{"text": "y", "label": "neg", "group": "c"}] * 5
    keys = [(r["group"], r["label"]) for r in grouped]
    assert weighted_independence(keys, [1.0] * len(keys)) > 0.05
    weights = audit.reweight(Dataset.from_list(grouped), task)
    assert weighted_independence(keys, weights) < 1e-9 and sum(weights) / len(weights) == pytest.approx(1)

    # Without a group column: the term group a row mentions; none or several are buckets of their own.
    # (every cell holds a row: an empty one cannot be weighted into independence)
    rows = bias_rows(60, leaky=False, seed=2) + [{"text": "no one", "label": "positive"}] * 3
    rows += [{"text": "nobody", "label": "negative"}]
    rows += [{"text": "she and he", "label": "negative"}, {"text": "he and her", "label": "positive"}]
    female = [i for i, r in enumerate(rows) if gender.mentions(r["text"]) == ["female"]]
    for i in female[::3] + female[1::3]:  # two in three women positive: group and label correlate
        rows[i] = {**rows[i], "label": "positive"}
    weights = audit.reweight(Dataset.from_list(rows), task)
    keys = [(tuple(gender.mentions(r["text"])), r["label"]) for r in rows]
    assert weighted_independence(keys, [1.0] * len(keys)) > 0.01
    assert weighted_independence(keys, weights) < 1e-9

    assert Bias(BiasOptions()).reweight(Dataset.from_list(rows), task) is None  # not asked for


def test_augmentation_adds_a_swapped_copy_of_each_term_row_with_its_label(gender):
    from datasets import Dataset

    # A row without terms gets no copy, though its group names a term group.
    no_terms = {"text": "The film was long.", "label": "negative", "group": "female"}
    rows = [*bias_rows(20, leaky=True, seed=4, with_group=True), no_terms]
    train = Dataset.from_list(rows)
    added = Bias(BiasOptions(mitigation=["augment"])).augment(train, classification_task())
    assert added.column_names == train.column_names and len(added) == 20
    for row, copy in zip(rows[:20], added, strict=True):
        (mentioned,) = gender.mentions(row["text"])
        other = "male" if mentioned == "female" else "female"
        assert copy["text"] == gender.rewrite(row["text"], other) != row["text"]
        assert gender.mentions(copy["text"]) == [other] and copy["label"] == row["label"]
        assert (row["group"], copy["group"]) == (mentioned, other)  # the group follows the rewriting
    assert Bias(BiasOptions()).augment(train, classification_task()) is None


def test_augmentation_rewrites_instruction_and_chat_rows():
    from datasets import Dataset

    audit = Bias(BiasOptions(mitigation=["augment"]))
    alpaca = Dataset.from_list([{"instruction": "Describe her day.", "input": "", "output": "She worked."}])
    (copy,) = audit.augment(alpaca, None)
    assert copy == {"instruction": "Describe his day.", "input": "", "output": "He worked."}
    chat = Dataset.from_list([{"messages": [{"role": "user", "content": "Is he ok?"}, {"role": "assistant",
                                                                                     "content": "Yes."}]}])  # fmt: skip
    (copy,) = audit.augment(chat, None)
    assert [m["content"] for m in copy["messages"]] == ["Is she ok?", "Yes."]
