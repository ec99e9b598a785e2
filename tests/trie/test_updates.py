"""with_inserted / with_removed against a plain dict model, through every layer and compaction."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trie.semantic_id_trie as semantic_id_trie_module
from tests.trie.strategies import all_prefixes
from trie import (
    DuplicateRowError,
    DuplicateSemanticIdError,
    InvalidSemanticIdError,
    MissingSemanticIdError,
    SemanticIdTrie,
)

SIZES = (3, 3, 4)


@pytest.fixture
def small_layers() -> Iterator[None]:
    """Tiny thresholds so a handful of updates crosses every layer boundary and compaction."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(semantic_id_trie_module, "TINY_MAX", 2)
        patch.setattr(semantic_id_trie_module, "DELTA_MIN", 5)
        yield


EVERY_ID = all_prefixes(SIZES)


def assert_matches_model(trie: SemanticIdTrie, model: dict[tuple[int, ...], int]) -> None:
    """Every read of ``trie`` agrees with the dict ``{semantic ID: row}``."""
    assert len(trie) == len(model)
    ids, rows = trie.to_arrays()
    assert dict(zip(map(tuple, ids.tolist()), rows.tolist(), strict=True)) == model
    assert ids.tolist() == sorted(ids.tolist())
    assert trie.rows_of(EVERY_ID).tolist() == [model.get(tuple(row), -1) for row in EVERY_ID.tolist()]
    by_row = {row: semantic_id for semantic_id, row in model.items()}
    held = trie.semantic_ids_of(np.arange(40))
    assert [tuple(row) if row[0] >= 0 else None for row in held.tolist()] == [by_row.get(r) for r in range(40)]
    for depth in range(len(SIZES)):
        prefixes = all_prefixes(SIZES[:depth])
        expected = np.zeros((len(prefixes), SIZES[depth]), dtype=bool)
        if model:
            present = np.array(list(model), dtype=np.int64)
            # Index of each present ID's prefix among all prefixes (lexicographic = mixed-radix order).
            prefix_index = np.ravel_multi_index(tuple(present[:, :depth].T), SIZES[:depth]) if depth else 0
            expected[prefix_index, present[:, depth]] = True
        np.testing.assert_array_equal(trie.allowed_mask(prefixes), expected)


operations = st.lists(
    st.tuples(
        st.sampled_from(["insert", "remove"]),
        st.lists(st.integers(0, int(np.prod(SIZES)) - 1), min_size=1, max_size=4, unique=True),
    ),
    max_size=12,
)


# The fixture only patches constants, identical for every example: sharing it is safe.
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(initial=st.lists(st.integers(0, int(np.prod(SIZES)) - 1), max_size=12, unique=True), steps=operations)
def test_updates_agree_with_a_dict_model_and_leave_old_versions_unchanged(
    small_layers: None, initial: list[int], steps: list[tuple[str, list[int]]]
) -> None:
    every_id = EVERY_ID
    model = {tuple(every_id[flat].tolist()): row for row, flat in enumerate(initial)}
    trie = SemanticIdTrie.build(every_id[initial].reshape(-1, 3), codebook_sizes=SIZES)
    next_row = len(initial)
    history: list[tuple[SemanticIdTrie, dict[tuple[int, ...], int]]] = []
    for operation, flats in steps:
        ids = every_id[flats]
        history.append((trie, dict(model)))
        if operation == "insert":
            fresh = [flat for flat in flats if tuple(every_id[flat].tolist()) not in model]
            if len(fresh) < len(flats):
                with pytest.raises(DuplicateSemanticIdError):
                    trie.with_inserted(ids, np.arange(next_row, next_row + len(flats)))
                ids = every_id[fresh]
            rows = np.arange(next_row, next_row + len(ids))
            trie = trie.with_inserted(ids, rows)
            model.update({tuple(semantic_id): int(row) for semantic_id, row in zip(ids.tolist(), rows, strict=True)})
            next_row += len(ids)
        else:
            held = [flat for flat in flats if tuple(every_id[flat].tolist()) in model]
            if len(held) < len(flats):
                with pytest.raises(MissingSemanticIdError):
                    trie.with_removed(ids)
                ids = every_id[held]
            trie = trie.with_removed(ids)
            for semantic_id in ids.tolist():
                del model[tuple(semantic_id)]
        assert trie.version == history[-1][0].version + 1
        assert_matches_model(trie, model)
    for old_trie, old_model in history:
        assert_matches_model(old_trie, old_model)


def test_reinserting_a_removed_id_gives_it_the_new_row(small_layers: None) -> None:
    trie = SemanticIdTrie.build(np.array([[0, 0, 0], [1, 1, 0]]), codebook_sizes=SIZES)
    trie = trie.with_removed(np.array([[0, 0, 0]])).with_inserted(np.array([[0, 0, 0]]), np.array([7]))
    assert trie.row_of((0, 0, 0)) == 7
    assert trie.semantic_id_of(0) is None
    assert trie.allowed_mask(np.array([[0, 0]]))[0].tolist() == [True, False, False, False]


def test_a_removed_row_can_be_reused() -> None:
    trie = SemanticIdTrie.build(np.array([[0, 0, 0], [1, 1, 0]]), codebook_sizes=SIZES)
    trie = trie.with_removed(np.array([[1, 1, 0]])).with_inserted(np.array([[2, 2, 2]]), np.array([1]))
    assert trie.semantic_id_of(1) == (2, 2, 2)


def test_removing_the_last_id_under_a_prefix_closes_the_prefix() -> None:
    trie = SemanticIdTrie.build(np.array([[0, 0, 0], [0, 1, 0], [1, 1, 0]]), codebook_sizes=SIZES)
    trie = trie.with_removed(np.array([[0, 1, 0]]))
    assert trie.allowed_mask(np.array([[0]]))[0].tolist() == [True, False, False]
    trie = trie.with_removed(np.array([[0, 0, 0]]))
    assert trie.allowed_mask(np.zeros((1, 0), dtype=np.int64))[0].tolist() == [False, True, False]


def test_insert_rejects_existing_ids_and_taken_rows_and_changes_nothing() -> None:
    trie = SemanticIdTrie.build(np.array([[0, 0, 0], [1, 1, 0]]), codebook_sizes=SIZES)
    with pytest.raises(DuplicateSemanticIdError, match=r"already in the trie: \(1, 1, 0\)") as info:
        trie.with_inserted(np.array([[2, 0, 0], [1, 1, 0]]), np.array([5, 6]))
    assert info.value.duplicates == [(1, 1, 0)]
    with pytest.raises(DuplicateSemanticIdError, match="more than once"):
        trie.with_inserted(np.array([[2, 0, 0], [2, 0, 0]]), np.array([5, 6]))
    with pytest.raises(DuplicateRowError, match=r"\[1\]"):
        trie.with_inserted(np.array([[2, 0, 0]]), np.array([1]))
    with pytest.raises(DuplicateRowError):
        trie.with_inserted(np.array([[2, 0, 0], [2, 0, 1]]), np.array([9, 9]))
    with pytest.raises(InvalidSemanticIdError, match="rows must have shape"):
        trie.with_inserted(np.array([[2, 0, 0]]), np.array([5, 6]))
    with pytest.raises(InvalidSemanticIdError, match="level 2"):
        trie.with_inserted(np.array([[2, 0, 4]]), np.array([5]))
    assert len(trie) == 2 and trie.version == 0


def test_remove_rejects_missing_and_repeated_ids() -> None:
    trie = SemanticIdTrie.build(np.array([[0, 0, 0], [1, 1, 0]]), codebook_sizes=SIZES)
    with pytest.raises(MissingSemanticIdError, match=r"\(2, 2, 2\)") as info:
        trie.with_removed(np.array([[0, 0, 0], [2, 2, 2]]))
    assert info.value.missing == [(2, 2, 2)]
    with pytest.raises(DuplicateSemanticIdError):
        trie.with_removed(np.array([[0, 0, 0], [0, 0, 0]]))
    assert len(trie) == 2


def test_many_single_inserts_compact_into_the_base() -> None:
    rng = np.random.default_rng(1)
    sizes = (32, 32, 32, 4)
    learned = np.unique(rng.integers(0, 32, (6000, 3)), axis=0)
    ids = np.concatenate([learned, np.zeros((len(learned), 1), dtype=np.int64)], axis=1)
    trie = SemanticIdTrie.build(ids[:100], codebook_sizes=sizes)
    batches = np.array_split(np.arange(100, len(ids)), 600)
    for batch in batches:
        trie = trie.with_inserted(ids[batch], batch)
    assert trie.version == len(batches)
    assert len(ids) - 100 > semantic_id_trie_module.DELTA_MIN
    assert trie.delta_size < len(ids) - 100  # so a compaction happened on the way
    assert trie.rows_of(ids).tolist() == list(range(len(ids)))
