"""Data preparation: splits, stratification, column mapping, padding, the tokenization cache."""

from collections import Counter

import pytest
from conftest import tiny_recipe, write

from runner import load_recipe
from runner.components import RunContext
from runner.pipeline.data import prepare_data
from runner.pipeline.encoding import encode_splits
from runner.toolkit.collate import PadCollator


def prepared(recipe_path, overrides=None, seed=7):
    recipe = load_recipe(recipe_path, overrides)
    task = recipe.task.create()
    return prepare_data(recipe, task, RunContext(seed=seed, cache_dir=None)), task


def rows_of(ds):
    return [(r["_src"], r["_row"]) for r in ds]


def test_fractions_make_disjoint_stratified_seeded_splits(tmp_path):
    recipe = tiny_recipe(tmp_path / "r.toml", rows=1000)
    data, task = prepared(recipe)
    sizes = data.sizes()
    assert sizes == {"train": 800, "validation": 100, "test": 100}
    sets = [set(rows_of(data.splits[s])) for s in ("train", "validation", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert len(sets[0] | sets[1] | sets[2]) == 1000
    overall = Counter(r["label"] for split in data.splits.values() for r in split)
    for split in data.splits.values():
        counts = Counter(split["label"])
        for label, n in overall.items():  # each split keeps the label proportions
            assert abs(counts[label] / len(split) - n / 1000) < 0.02
    again, _ = prepared(recipe)
    assert rows_of(again.splits["test"]) == rows_of(data.splits["test"])
    other, _ = prepared(recipe, seed=8)
    assert rows_of(other.splits["test"]) != rows_of(data.splits["test"])
    assert task.labels == ["negative", "neutral", "positive"]


def test_source_splits_are_kept_and_only_missing_ones_carved(tmp_path):
    write(tmp_path / "train.csv", "tweet,sentiment\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(90)))
    write(tmp_path / "test.csv", "tweet,sentiment\n" + "".join(f"x{i},{'ab'[i % 2]}\n" for i in range(20)))
    recipe = tiny_recipe(tmp_path / "r.toml")
    source = 'type = "files"\ntrain = "train.csv"\ntest = "test.csv"\ncolumns = { text = "tweet", label = "sentiment" }'
    recipe.write_text(recipe.read_text().replace('type = "synthetic"\nrows = 300', source))
    data, task = prepared(recipe)
    assert data.sizes() == {"train": 80, "validation": 10, "test": 20}  # validation = 1/9 of train
    assert all(t.startswith("x") for t in data.splits["test"]["text"])
    assert task.labels == ["a", "b"]
    assert data.where("test", 0).endswith("test.csv, line 2")


def test_max_rows_keeps_a_seeded_sample(tmp_path):
    recipe = tiny_recipe(tmp_path / "r.toml", rows=1000, extra="[data.max_rows]\ntrain = 50\n")
    data, _ = prepared(recipe)
    assert data.sizes()["train"] == 50 and data.sizes()["test"] == 100


def test_integer_labels_with_names(tmp_path):
    write(tmp_path / "d.jsonl", "".join(f'{{"text": "t{i}", "label": {i % 3}}}\n' for i in range(60)))
    recipe = tiny_recipe(tmp_path / "r.toml")
    recipe.write_text(recipe.read_text().replace('type = "synthetic"\nrows = 300', 'type = "files"\npath = "d.jsonl"'))
    data, task = prepared(recipe, ['task.labels=["neg", "neu", "pos"]'])
    assert task.labels == ["neg", "neu", "pos"]
    data, task = prepared(recipe)
    assert task.labels == ["0", "1", "2"]


def test_dynamic_padding_pads_to_the_longest_row_and_masks_by_position():
    rows = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [5, 9], "labels": [5, 9]}]
    eos = 9  # a tokenizer that pads with its EOS token
    batch = PadCollator(pad_token_id=eos, sequence_labels=True)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [5, 9, -100]]  # the real EOS stays supervised
    fixed = PadCollator(pad_token_id=0, pad_to=8)([{"input_ids": [1, 2], "labels": 1, "length": 2}])
    assert fixed["input_ids"].shape == (1, 8) and "length" not in fixed


def test_left_padding_puts_ids_mask_and_labels_before_the_row():
    left = PadCollator(0, sequence_labels=True, side="left")
    batch = left([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["labels"].tolist() == [[5, 6, 7], [-100, -100, 8]]
    given = left([{"input_ids": [5, 6], "attention_mask": [1, 1]}, {"input_ids": [8], "attention_mask": [1]}])
    assert given["attention_mask"].tolist() == [[1, 1], [0, 1]]


def test_tokenization_is_cached_by_content_tokenizer_and_length(tmp_path):
    from plugins.tokenizers.trained import Trained, TrainedTokenizerOptions
    from runner.toolkit.modeling import ensure_pad_token

    recipe = tiny_recipe(tmp_path / "r.toml", rows=200)
    data, task = prepared(recipe)
    tokenizer = Trained(TrainedTokenizerOptions(vocab_size=300)).build(None, lambda: iter(data.splits["train"]["text"]))
    ensure_pad_token(tokenizer)
    cache = tmp_path / "cache"
    first, cached = encode_splits(task, tokenizer, data.splits, 32, cache)
    assert not any(cached.values())
    second, cached = encode_splits(task, tokenizer, data.splits, 32, cache)
    assert all(cached.values())
    assert second["train"]["input_ids"] == first["train"]["input_ids"]
    _, cached = encode_splits(task, tokenizer, data.splits, 16, cache)
    assert not any(cached.values())
    assert max(second["train"]["length"]) <= 32 and "text" not in second["train"].column_names


@pytest.mark.parametrize("algorithm", ["bpe", "wordlevel"])
def test_trained_tokenizers_are_deterministic(algorithm):
    from plugins.data.synthetic import generate
    from plugins.tokenizers.trained import Trained, TrainedTokenizerOptions

    texts = [r["text"] for r in generate(500, seed=1)]
    options = TrainedTokenizerOptions(algorithm=algorithm, vocab_size=300)
    a = Trained(options).build(None, lambda: iter(texts))
    b = Trained(options).build(None, lambda: iter(texts))
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert a.pad_token == "[PAD]" and a.pad_token_id != a.eos_token_id
