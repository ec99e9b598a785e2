"""The ID table (collision counter, uniqueness, stability) and the generic code diagnostics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.errors import DataFormatError
from training.indexing.diagnostics import (
    code_diagnostics,
    code_perplexity,
    collision_statistics,
    same_prefix_diff_ratio,
)
from training.indexing.id_table import assign_semantic_ids, collision_counter, read_ids_jsonl, write_ids_jsonl


def test_counter_is_the_occurrence_index_in_document_order():
    codes = np.array([[1, 2], [1, 2], [0, 0], [1, 2], [0, 0], [3, 3]])
    assert collision_counter(codes).tolist() == [0, 1, 0, 2, 1, 0]


def test_ids_are_unique_after_the_counter_on_random_colliding_codes():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, size=(2000, 2))  # only 9 distinct codes: heavy collisions
    table = assign_semantic_ids(codes, [f"d{i}" for i in range(2000)])
    assert table.semantic_ids.shape == (2000, 3)
    assert len({tuple(row) for row in table.semantic_ids.tolist()}) == 2000
    assert np.array_equal(table.semantic_ids[:, :2], codes)
    # The counter level needs exactly the largest group's size.
    assert table.counter_size == np.unique(codes, axis=0, return_counts=True)[1].max()
    assert table.doc_of(table.id_of("d17")) == "d17"


def test_ids_are_stable_when_documents_are_appended():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 4, size=(300, 2))
    first = assign_semantic_ids(codes[:200], [str(i) for i in range(200)])
    both = assign_semantic_ids(codes, [str(i) for i in range(300)])
    assert np.array_equal(both.semantic_ids[:200], first.semantic_ids)
    again = assign_semantic_ids(codes, [str(i) for i in range(300)])
    assert np.array_equal(again.semantic_ids, both.semantic_ids)


def test_duplicate_doc_ids_are_refused():
    with pytest.raises(ValueError, match="not unique"):
        assign_semantic_ids(np.zeros((2, 1), dtype=int), ["a", "a"])


def test_ids_jsonl_round_trip_and_bad_line(tmp_path):
    table = assign_semantic_ids(np.array([[4, 1], [4, 1], [2, 0]]), ["x", "y", "z"])
    path = tmp_path / "ids.jsonl"
    write_ids_jsonl(path, table.doc_ids, table.semantic_ids)
    assert path.read_text().splitlines()[1] == '{"doc_id": "y", "semantic_id": [4, 1, 1]}'
    back = read_ids_jsonl(path)
    assert back.doc_ids == ("x", "y", "z") and np.array_equal(back.semantic_ids, table.semantic_ids)
    path.write_text(path.read_text() + '{"doc_id": "w"}\n')
    with pytest.raises(DataFormatError, match=r"ids\.jsonl:4"):
        read_ids_jsonl(path)


def test_perplexity_uniform_and_collapsed():
    assert code_perplexity(np.arange(8).repeat(5)) == pytest.approx(8.0)
    assert code_perplexity(np.zeros(10, dtype=int)) == pytest.approx(1.0)
    # Two codes with shares 3/4 and 1/4: exp(H) by hand.
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert code_perplexity(np.array([0, 0, 0, 1])) == pytest.approx(math.exp(h))


def test_collision_statistics_by_hand():
    codes = np.array([[0, 0], [0, 0], [0, 0], [1, 0], [1, 0], [2, 5]])
    stats = collision_statistics(codes)
    assert stats["distinct_codes"] == 3
    assert stats["collision_rate"] == pytest.approx(5 / 6)
    assert stats["colliding_groups"] == 2
    assert stats["largest_collision_group"] == 3
    assert stats["group_size_histogram"] == {"1": 1, "2": 1, "3": 1}


def test_diff_ratio_by_hand():
    # Prefix 0 has 4 docs with 2 distinct second codes; prefix 1 has 2 docs with 2; prefix 2 is alone.
    codes = np.array([[0, 1], [0, 1], [0, 2], [0, 2], [1, 0], [1, 3], [2, 0]])
    assert same_prefix_diff_ratio(codes, 1) == pytest.approx((2 + 2) / (4 + 2))
    assert same_prefix_diff_ratio(codes, 0) is None


def test_code_diagnostics_ami_per_level():
    labels = ["a", "a", "b", "b", None, "c"]
    codes = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [1, 2], [2, 0]])
    figures = code_diagnostics(codes, (3, 3), labels=labels)
    level0, level1 = figures["levels"]
    assert level0["ami"] == pytest.approx(1.0)  # the first level recovers the labels exactly
    assert level1["ami"] < level0["ami"]  # splitting each label further costs AMI
    assert level0["codes_used"] == 3 and level0["usage"] == pytest.approx(1.0)
    assert level1["prefixes"] == 6
    assert figures["labelled_documents"] == 5 and figures["distinct_labels"] == 3


def test_prefix_collisions_per_level_by_hand():
    codes = np.array([[0, 0, 1], [0, 0, 1], [0, 1, 0], [1, 0, 0], [2, 5, 5], [2, 5, 6]])
    levels = code_diagnostics(codes, (3, 6, 7))["levels"]
    assert [lv["prefix_collision_rate"] for lv in levels] == pytest.approx([5 / 6, 4 / 6, 2 / 6])
    assert [lv["prefix_colliding_groups"] for lv in levels] == [2, 2, 1]
    assert [lv["largest_prefix_group"] for lv in levels] == [3, 2, 2]
    # at the last level the prefix is the whole learned code: the collision statistics
    assert levels[-1]["prefix_collision_rate"] == pytest.approx(collision_statistics(codes)["collision_rate"])
