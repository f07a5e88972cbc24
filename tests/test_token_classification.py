"""Token classification: sub-word alignment, entity-level scoring, and a tagger that learns."""

import importlib.util
import json

import pytest
from conftest import cli, run_recipe, write

from plugins.tasks.token_classification import TokenClassification, TokenClassificationOptions
from plugins.tokenizers.trained import Trained, TrainedTokenizerOptions

TAGS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def entity_spans():
    path = "plugins/metrics/modules/entities/entities.py"
    spec = importlib.util.spec_from_file_location("entities", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.spans


def test_a_word_tag_goes_to_its_first_subword():
    tokenizer = Trained(TrainedTokenizerOptions(vocab_size=270)).build(
        None, lambda: iter(["alice smith flew to paris"] * 30)
    )
    words = ["alice", "smith", "flew", "parisians"]
    word_ids = tokenizer(words, is_split_into_words=True).word_ids()
    assert word_ids.count(3) > 1  # "parisians" is not in the vocabulary: it splits
    task = TokenClassification(TokenClassificationOptions(labels=TAGS))
    tags = ["B-PER", "I-PER", "O", "B-LOC"]
    labels = task.align(word_ids, tags)
    first = [word_ids.index(w) for w in range(4)]
    assert [labels[i] for i in first] == [3, 4, 0, 1]
    assert all(label == -100 for i, label in enumerate(labels) if i not in first)
    task.options.label_all_subwords = True
    continued = task.align(word_ids, tags)
    assert [continued[i] for i, w in enumerate(word_ids) if w == 3][1:] == [2] * (word_ids.count(3) - 1)  # I-LOC


def test_entities_count_only_when_type_and_both_ends_match():
    spans = entity_spans()
    assert spans(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4)}
    assert spans(["I-PER", "I-PER", "B-PER"]) == {("PER", 0, 2), ("PER", 2, 3)}  # a stray I- starts one
    reference = ["B-PER", "I-PER", "O", "B-LOC"]
    predicted = ["B-PER", "O", "O", "B-LOC"]  # the person's end is wrong: only the place counts
    assert spans(predicted) & spans(reference) == {("LOC", 3, 4)}


NER = """
[run]
seed = 1
threads = 1

[[data.sources]]
type = "synthetic"
kind = "ner"
rows = 800

[tokenizer]
type = "trained"
vocab_size = 300
max_length = 32

[model]
type = "config"
architecture = "bert"

[model.config]
num_hidden_layers = 2
num_attention_heads = 2
hidden_size = 64
intermediate_size = 128
max_position_embeddings = 32

[task]
type = "token_classification"

[training]
learning_rate = 5e-3
batch_size = 32
epochs = 8
best_metric = "entity_f1"
"""


@pytest.mark.slow
def test_a_tagger_learns_entities_and_predicts_per_word(tmp_path, capsys):
    result = run_recipe(write(tmp_path / "ner.toml", NER), tmp_path / "run")
    assert result.metrics["test"]["entity_f1"] > 0.8  # a tagger that learnt nothing scores 0
    assert result.model.config.id2label[0] == "O"
    assert cli("predict", result.run_dir.path, "--text", "emma flew to oslo yesterday") == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["tokens"] == ["emma", "flew", "to", "oslo", "yesterday"] and len(row["tags"]) == 5
