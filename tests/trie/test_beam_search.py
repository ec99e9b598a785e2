"""constrained_beam_search: only valid IDs, exact against brute force, dead beams, ties, batching."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.trie.strategies import TableStepFn, build, id_sets
from trie import SemanticIdTrie, constrained_beam_search


def search(trie: SemanticIdTrie, step_fn: TableStepFn, num_queries: int, beam_size: int, top_k: int):
    return constrained_beam_search(step_fn, trie, num_queries=num_queries, beam_size=beam_size, top_k=top_k)


@settings(max_examples=200, deadline=None)
@given(
    data=id_sets(min_size=1),
    seed=st.integers(0, 2**16),
    beam_size=st.integers(1, 6),
    top_k=st.integers(1, 6),
    ties=st.booleans(),
)
def test_every_result_is_an_indexed_id_with_its_row(
    data: tuple, seed: int, beam_size: int, top_k: int, ties: bool
) -> None:
    sizes, ids = data
    top_k = min(top_k, beam_size)
    trie = build(sizes, ids)
    step_fn = TableStepFn(sizes, seed, distinct_values=3 if ties else None)
    result = search(trie, step_fn, num_queries=3, beam_size=beam_size, top_k=top_k)
    for query in range(3):
        count = int(result.counts[query])
        assert count == min(top_k, len(ids))  # enough IDs: a full list; never padded with invalid IDs
        found = result.semantic_ids[query, :count]
        assert trie.rows_of(found).tolist() == result.rows[query, :count].tolist()
        assert (result.rows[query, :count] >= 0).all()
        assert len({tuple(row) for row in found.tolist()}) == count
        assert (result.semantic_ids[query, count:] == -1).all() and (result.rows[query, count:] == -1).all()
        assert np.isneginf(result.scores[query, count:]).all()
        assert (np.diff(result.scores[query, :count]) <= 0).all()


@settings(max_examples=200, deadline=None)
@given(data=id_sets(min_size=1), seed=st.integers(0, 2**16), ties=st.booleans(), extra=st.integers(0, 3))
def test_with_beam_at_least_the_number_of_ids_the_result_is_brute_force(
    data: tuple, seed: int, ties: bool, extra: int
) -> None:
    sizes, ids = data
    trie = build(sizes, ids)
    step_fn = TableStepFn(sizes, seed, distinct_values=2 if ties else None)
    beam_size = len(ids) + extra
    top_k = max(1, len(ids) - extra)
    result = search(trie, step_fn, num_queries=2, beam_size=beam_size, top_k=top_k)
    for query in range(2):
        expected_ids, expected_scores = step_fn.brute_force(ids, query)
        assert result.counts[query] == top_k
        # Same IDs, same order (ties: lexicographic), same float64 sums.
        np.testing.assert_array_equal(result.semantic_ids[query], expected_ids[:top_k])
        np.testing.assert_array_equal(result.scores[query], expected_scores[:top_k])


@settings(max_examples=100, deadline=None)  # a consistency check on top of the brute-force tests
@given(data=id_sets(min_size=1), seed=st.integers(0, 2**16), beam_size=st.integers(1, 5))
def test_batched_search_equals_one_query_at_a_time(data: tuple, seed: int, beam_size: int) -> None:
    sizes, ids = data
    trie = build(sizes, ids)
    step_fn = TableStepFn(sizes, seed, distinct_values=3)
    batched = search(trie, step_fn, num_queries=4, beam_size=beam_size, top_k=beam_size)

    for query in range(4):

        def single(level: int, query_index: np.ndarray, prefixes: np.ndarray, query: int = query) -> np.ndarray:
            return step_fn(level, np.full_like(query_index, query), prefixes)

        alone = constrained_beam_search(single, trie, num_queries=1, beam_size=beam_size, top_k=beam_size)
        np.testing.assert_array_equal(alone.semantic_ids[0], batched.semantic_ids[query])
        np.testing.assert_array_equal(alone.scores[0], batched.scores[query])


def test_step_fn_sees_only_live_beams_with_valid_prefixes() -> None:
    ids = np.array([[0, 0, 0], [0, 1, 0], [2, 1, 1]])
    trie = SemanticIdTrie.build(ids, codebook_sizes=(3, 2, 2))
    step_fn = TableStepFn((3, 2, 2), seed=0)
    constrained_beam_search(step_fn, trie, num_queries=2, beam_size=5, top_k=5)
    valid_prefixes = {tuple(row[:level]) for row in ids.tolist() for level in range(4)}
    assert [call[0] for call in step_fn.calls] == [0, 1, 2]
    level0, level1, level2 = step_fn.calls
    assert level0[1].tolist() == [0, 1] and level0[2].shape == (2, 0)
    assert level1[1].tolist() == [0, 0, 1, 1]  # each query: prefixes (0,) and (2,), nothing invalid
    assert all(tuple(prefix) in valid_prefixes for _, _, prefixes in step_fn.calls for prefix in prefixes.tolist())
    assert len(level2[1]) == 6


def test_dead_beams_are_dropped_not_padded() -> None:
    # Only two IDs exist: asking for 5 returns 2, whatever the model prefers.
    trie = SemanticIdTrie.build(np.array([[1, 1, 0], [1, 2, 0]]), codebook_sizes=(3, 3, 2))

    def prefers_invalid(level: int, query_index: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
        log_probs = np.full((len(query_index), 3), -10.0)
        log_probs[:, 0] = 0.0  # code 0 is the favourite: never valid on levels 0 and 1, valid on 2
        return log_probs[:, : (2 if level == 2 else 3)]

    result = constrained_beam_search(prefers_invalid, trie, num_queries=1, beam_size=5, top_k=5)
    assert result.counts.tolist() == [2]
    assert result.semantic_ids[0, :2].tolist() == [[1, 1, 0], [1, 2, 0]]
    assert result.rows[0].tolist() == [0, 1, -1, -1, -1]
    assert result.scores[0, :2].tolist() == [-20.0, -20.0]


def test_ties_go_to_the_lexicographically_smaller_id() -> None:
    ids = np.array([[2, 0, 0], [1, 1, 0], [1, 0, 0], [0, 2, 0]])
    trie = SemanticIdTrie.build(ids, codebook_sizes=(3, 3, 1))

    def uniform(level: int, query_index: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
        return np.zeros((len(query_index), trie.codebook_sizes[level]))

    result = constrained_beam_search(uniform, trie, num_queries=1, beam_size=2, top_k=2)
    assert result.semantic_ids[0].tolist() == [[0, 2, 0], [1, 0, 0]]
    again = constrained_beam_search(uniform, trie, num_queries=1, beam_size=2, top_k=2)
    np.testing.assert_array_equal(again.semantic_ids, result.semantic_ids)


def test_ids_with_zero_probability_are_still_valid_results() -> None:
    trie = SemanticIdTrie.build(np.array([[0, 0], [1, 0]]), codebook_sizes=(2, 1))

    def impossible_one(level: int, query_index: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
        return np.array([[0.0, -np.inf]] * len(query_index))[:, : trie.codebook_sizes[level]]

    result = constrained_beam_search(impossible_one, trie, num_queries=1, beam_size=2, top_k=2)
    assert result.semantic_ids[0].tolist() == [[0, 0], [1, 0]]
    assert result.scores[0].tolist() == [0.0, -np.inf]


def test_removed_ids_are_never_returned_and_inserted_ones_are() -> None:
    ids = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 1, 0]])
    trie = SemanticIdTrie.build(ids, codebook_sizes=(2, 2, 2))
    trie = trie.with_removed(ids[[1, 2]]).with_inserted(np.array([[1, 1, 1]]), np.array([9]))
    step_fn = TableStepFn((2, 2, 2), seed=3)
    result = constrained_beam_search(step_fn, trie, num_queries=1, beam_size=4, top_k=4)
    assert result.counts.tolist() == [3]
    assert sorted(result.semantic_ids[0, :3].tolist()) == [[0, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert sorted(result.rows[0, :3].tolist()) == [0, 3, 9]


def test_an_empty_trie_or_no_queries_give_empty_results() -> None:
    empty = SemanticIdTrie.build(np.zeros((0, 2), dtype=np.int64), codebook_sizes=(2, 2))
    step_fn = TableStepFn((2, 2), seed=0)
    result = constrained_beam_search(step_fn, empty, num_queries=2, beam_size=3, top_k=2)
    assert result.counts.tolist() == [0, 0] and result.semantic_ids.shape == (2, 2, 2)
    assert step_fn.calls == []  # no beam can continue, so the model is never run
    trie = SemanticIdTrie.build(np.array([[0, 0]]), codebook_sizes=(2, 2))
    result = constrained_beam_search(step_fn, trie, num_queries=0, beam_size=3, top_k=2)
    assert result.semantic_ids.shape == (0, 2, 2) and step_fn.calls == []


def test_step_fn_may_return_padded_columns() -> None:
    trie = SemanticIdTrie.build(np.array([[0, 0], [1, 0]]), codebook_sizes=(2, 2))

    def padded(level: int, query_index: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
        return np.tile(np.log([0.3, 0.7, 1e-9, 1e-9]), (len(query_index), 1)).astype(np.float32)

    result = constrained_beam_search(padded, trie, num_queries=1, beam_size=2, top_k=1)
    assert result.semantic_ids[0].tolist() == [[1, 0]]


def test_bad_arguments_and_bad_step_outputs_raise() -> None:
    trie = SemanticIdTrie.build(np.array([[0, 1], [1, 0]]), codebook_sizes=(2, 2))
    step_fn = TableStepFn((2, 2), seed=0)
    with pytest.raises(ValueError, match="top_k"):
        constrained_beam_search(step_fn, trie, num_queries=1, beam_size=2, top_k=3)
    with pytest.raises(ValueError, match=">= 1"):
        constrained_beam_search(step_fn, trie, num_queries=1, beam_size=0, top_k=0)
    with pytest.raises(ValueError, match=r"shape \(1, >= 2\)"):
        constrained_beam_search(lambda *_: np.zeros((1, 1)), trie, num_queries=1, beam_size=2, top_k=1)
    with pytest.raises(ValueError, match="NaN"):
        constrained_beam_search(lambda *_: np.full((1, 2), np.nan), trie, num_queries=1, beam_size=2, top_k=1)
