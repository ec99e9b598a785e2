"""The one ID-assignment path: greedy learned codes over a StepFn, and the next-free-counter rule with its
fallback to the next most probable prefix (trie/assign.py)."""

from __future__ import annotations

import numpy as np
import pytest

from trie import (
    FALLBACK_PREFIXES,
    CounterExhaustedError,
    SemanticIdTrie,
    assign_ids,
    greedy_codes,
    next_free_id,
)


def test_next_free_id_takes_the_smallest_free_counter() -> None:
    trie = SemanticIdTrie.build(np.array([[1, 2, 0], [1, 2, 2], [0, 0, 1]]), codebook_sizes=(4, 3, 3))
    assert next_free_id(trie, (1, 2)) == (1, 2, 1)
    assert next_free_id(trie, (0, 0)) == (0, 0, 0)
    assert next_free_id(trie, (3, 1)) == (3, 1, 0)


def test_ids_given_earlier_in_an_update_are_not_given_again() -> None:
    trie = SemanticIdTrie.build(np.array([[1, 2, 0]]), codebook_sizes=(4, 3, 4))
    assert next_free_id(trie, (1, 2), taken={(1, 2, 1)}) == (1, 2, 2)
    assert assign_ids(trie, np.array([[1, 2], [0, 0], [1, 2], [1, 2]])).tolist() == [
        [1, 2, 1], [0, 0, 0], [1, 2, 2], [1, 2, 3]]


def test_a_full_prefix_falls_back_to_the_next_most_probable_last_code_in_order() -> None:
    full = [[1, 2, c] for c in range(2)] + [[1, 0, c] for c in range(2)]
    trie = SemanticIdTrie.build(np.array(full), codebook_sizes=(4, 3, 2))
    # (1, 2) and (1, 0) are full: the third candidate, code 1, is the first with a free counter.
    assert next_free_id(trie, (1, 2), alternatives=(2, 0, 1)) == (1, 1, 0)
    # The greedy code itself is skipped among the alternatives (it comes first anyway).
    assert next_free_id(trie, (1, 2), alternatives=(2, 2, 1)) == (1, 1, 0)


def test_every_candidate_full_is_counter_exhausted_naming_the_prefixes() -> None:
    trie = SemanticIdTrie.build(np.array([[1, 2, 0], [1, 2, 1], [1, 0, 0], [1, 0, 1]]), codebook_sizes=(4, 3, 2))
    with pytest.raises(CounterExhaustedError, match=r"\(1, 2\).*\[\(1, 0\)\]"):
        next_free_id(trie, (1, 2), alternatives=(2, 0))
    with pytest.raises(CounterExhaustedError):
        assign_ids(trie, np.array([[0, 0], [0, 0], [0, 0]]))  # the third (0, 0) finds no counter


def test_at_most_sixteen_prefixes_are_tried() -> None:
    codebook = FALLBACK_PREFIXES + 4
    used = [[0, c, 0] for c in range(FALLBACK_PREFIXES)]  # counter size 1: these prefixes are full
    trie = SemanticIdTrie.build(np.array(used), codebook_sizes=(1, codebook, 1))
    ranked = list(range(codebook))  # the 17th candidate would be free
    with pytest.raises(CounterExhaustedError):
        next_free_id(trie, (0, 0), alternatives=ranked)
    assert next_free_id(trie, (0, FALLBACK_PREFIXES), alternatives=ranked) == (0, FALLBACK_PREFIXES, 0)


def test_greedy_codes_are_the_argmax_per_level_given_the_codes_before() -> None:
    calls = []

    def step_fn(level: int, query_index: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
        calls.append((level, query_index.tolist(), prefixes.tolist()))
        # Document q prefers code (q + level + sum of its prefix) % 5; ties never happen.
        best = (query_index + level + prefixes.sum(axis=1)) % 5
        scores = -np.abs(np.arange(6)[None, :] - best[:, None]).astype(np.float32)  # 6 columns: one padded
        return scores

    codes, ranked = greedy_codes(step_fn, 3, codebook_sizes=(5, 5, 2), alternatives=3)
    assert codes.tolist() == [[0, 1], [1, 3], [2, 0]]
    assert [c[0] for c in calls] == [0, 1] and calls[1][2] == [[0], [1], [2]]
    assert ranked[:, 0].tolist() == codes[:, 1].tolist() and ranked.shape == (3, 3)
    assert ranked[1].tolist() == [3, 2, 4]  # ties at distance 1: the lower code first
    assert greedy_codes(step_fn, 0, codebook_sizes=(5, 5, 2))[0].shape == (0, 2)
