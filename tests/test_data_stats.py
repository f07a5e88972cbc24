"""data_stats.json: split sizes, label counts in the task's order, token-length histograms."""

import json

import pytest

from runner.evaluation.data_stats import data_stats, length_edges, length_summary


def test_edges_are_integers_from_zero_to_max_length_in_about_twenty_bins():
    assert length_edges(48) == list(range(0, 49, 3))  # 16 bins of 3
    edges = length_edges(512)
    assert edges[0] == 0 and edges[-1] == 512 and len(edges) - 1 == 20
    assert all(isinstance(e, int) for e in edges) and edges == sorted(set(edges))
    assert length_edges(128)[-2:] == [126, 128]  # the last bin is narrower
    assert length_edges(5) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="max_length"):
        length_edges(0)


def test_length_summary_counts_every_row_once_and_truncated_at_max_length():
    lengths = [1, 2, 3, 3, 10, 47, 48, 48, 60]  # 60: longer than max_length (not cut), kept in the last bin
    stats = length_summary(lengths, 48)
    assert sum(stats["counts"]) == len(lengths)
    assert stats["counts"][0] == 2  # [0, 3): 1 and 2
    assert stats["counts"][1] == 2  # [3, 6): the two 3s
    assert stats["counts"][3] == 1  # [9, 12): 10
    assert stats["counts"][-1] == 4  # [45, 48]: 47, 48, 48, and 60
    assert stats["truncated"] == 3
    assert stats["max"] == 60 and stats["median"] == 10.0
    assert stats["mean"] == pytest.approx(sum(lengths) / len(lengths), abs=0.01)
    assert stats["p95"] == 60  # nearest rank: ceil(0.95 * 9) = 9th of 9


def test_p95_and_median_of_a_longer_split():
    lengths = list(range(1, 101))  # 1..100
    stats = length_summary(lengths, 128)
    assert stats["p95"] == 95 and stats["median"] == 50.5 and stats["truncated"] == 0


def test_data_stats_for_a_classification_task():
    names = ["negative", "neutral", "positive"]
    out = data_stats(
        lengths={"train": [5, 12, 30, 32, 7, 9], "validation": [4, 32], "test": []},
        labels={"train": [0, 2, 2, 1, 2, 0], "validation": [2, 2], "test": []},
        label_names=names,
        max_length=32,
    )
    assert out["max_length"] == 32
    assert out["splits"] == {"train": 6, "validation": 2, "test": 0}
    assert out["labels"]["train"] == {"negative": 2, "neutral": 1, "positive": 3}
    assert list(out["labels"]["validation"]) == names  # the task's order, zero counts included
    assert out["labels"]["validation"] == {"negative": 0, "neutral": 0, "positive": 2}
    assert out["lengths"]["train"]["truncated"] == 1 and out["lengths"]["validation"]["truncated"] == 1
    empty = out["lengths"]["test"]
    assert empty["mean"] is None and empty["median"] is None and empty["p95"] is None and empty["max"] is None
    assert empty["truncated"] == 0 and sum(empty["counts"]) == 0 and empty["bins"] == length_edges(32)
    json.dumps(out, allow_nan=False)  # writable as strict JSON


def test_label_values_given_by_name_and_labels_outside_the_list():
    out = data_stats(
        lengths={"train": [3, 3, 3, 3]},
        labels={"train": ["pos", "neg", "pos", "maybe"]},
        label_names=["neg", "pos"],
        max_length=8,
    )
    assert list(out["labels"]["train"].items()) == [("neg", 1), ("pos", 2), ("maybe", 1)]
    # without a label list: integer labels are their own names, sorted
    out = data_stats(lengths={"train": [3, 3, 3]}, labels={"train": [1, 0, 1]}, max_length=8)
    assert out["labels"]["train"] == {"0": 1, "1": 2}


def test_tasks_without_labels_have_no_labels_key():
    out = data_stats(lengths={"train": [3, 4]}, labels=None, max_length=8)
    assert "labels" not in out and out["splits"] == {"train": 2}
    out = data_stats(lengths={"train": [3, 4]}, labels={"train": None}, max_length=8)
    assert "labels" not in out


def test_labels_must_match_the_rows():
    with pytest.raises(ValueError, match="train"):
        data_stats(lengths={"train": [3, 4]}, labels={"train": [0]}, label_names=["a", "b"], max_length=8)
