"""SemanticIdTrie: build, lookups, allowed codes and bad input (the counter rule: test_assign.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trie.layer as layer_module
from tests.trie.strategies import all_prefixes, build, id_sets
from trie import (
    DuplicateRowError,
    DuplicateSemanticIdError,
    InvalidSemanticIdError,
    SemanticIdTrie,
    TrieError,
)

SIZES = (4, 3, 2)
IDS = np.array([[1, 2, 0], [1, 2, 1], [3, 0, 0], [0, 1, 0]])


def test_lookups_map_ids_to_rows_and_back() -> None:
    trie = SemanticIdTrie.build(IDS, codebook_sizes=SIZES)
    assert len(trie) == 4 and trie.depth == 3 and trie.codebook_sizes == SIZES and trie.version == 0
    assert [trie.row_of(tuple(row)) for row in IDS] == [0, 1, 2, 3]
    assert trie.row_of((1, 2, 1)) == 1
    assert trie.row_of((2, 2, 1)) is None
    assert trie.rows_of(np.array([[3, 0, 0], [3, 0, 1], [0, 1, 0]])).tolist() == [2, -1, 3]
    assert [trie.semantic_id_of(row) for row in range(4)] == [tuple(row) for row in IDS.tolist()]
    assert trie.semantic_id_of(4) is None and trie.semantic_id_of(-1) is None
    assert (1, 2, 0) in trie and (1, 2, 2) not in trie


def test_build_accepts_explicit_rows() -> None:
    trie = SemanticIdTrie.build(IDS, codebook_sizes=SIZES, rows=np.array([10, 7, 5_000_000, 3]))
    assert trie.rows_of(IDS).tolist() == [10, 7, 5_000_000, 3]
    assert trie.semantic_id_of(5_000_000) == (3, 0, 0)
    assert trie.semantic_id_of(4) is None


def test_to_arrays_returns_ids_in_lexicographic_order_with_rows() -> None:
    ids, rows = SemanticIdTrie.build(IDS, codebook_sizes=SIZES).to_arrays()
    assert ids.tolist() == sorted(IDS.tolist())
    assert rows.tolist() == [3, 0, 1, 2]


def test_empty_trie_has_no_ids_and_allows_nothing() -> None:
    trie = SemanticIdTrie.build(np.zeros((0, 3), dtype=np.int64), codebook_sizes=SIZES)
    assert len(trie) == 0
    assert not trie.allowed_mask(np.zeros((2, 0), dtype=np.int64)).any()
    assert trie.rows_of(np.array([[0, 0, 0]])).tolist() == [-1]


@settings(max_examples=200, deadline=None)
@given(data=id_sets(), extra=st.data())
def test_allowed_mask_matches_brute_force_at_every_depth(data: tuple, extra: st.DataObject) -> None:
    sizes, ids = data
    trie = build(sizes, ids)
    present = {tuple(row) for row in ids.tolist()}
    for depth in range(len(sizes)):
        # Every possible prefix of this length, present or not.
        prefixes = all_prefixes(sizes[:depth])
        mask = trie.allowed_mask(prefixes)
        expected = np.zeros((len(prefixes), sizes[depth]), dtype=bool)
        for index, prefix in enumerate(prefixes.tolist()):
            for full in present:
                if list(full[:depth]) == prefix:
                    expected[index, full[depth]] = True
        np.testing.assert_array_equal(mask, expected)
    queried = extra.draw(st.lists(st.tuples(*(st.integers(0, s - 1) for s in sizes)), max_size=10))
    rows = trie.rows_of(np.array(queried, dtype=np.int64).reshape(-1, len(sizes)))
    lookup = {tuple(row): index for index, row in enumerate(ids.tolist())}
    assert rows.tolist() == [lookup.get(tuple(q), -1) for q in queried]


def test_wrong_length_is_rejected_with_the_expected_shape() -> None:
    with pytest.raises(InvalidSemanticIdError, match=r"shape \(M, 3\).*got shape \(2, 2\)"):
        SemanticIdTrie.build(np.array([[0, 0], [1, 1]]), codebook_sizes=SIZES)
    trie = SemanticIdTrie.build(IDS, codebook_sizes=SIZES)
    with pytest.raises(InvalidSemanticIdError, match="shape"):
        trie.row_of((1, 2))
    with pytest.raises(InvalidSemanticIdError, match="shape"):
        trie.allowed_mask(np.zeros((1, 3), dtype=np.int64))


def test_code_out_of_range_names_the_id_level_and_valid_range() -> None:
    with pytest.raises(InvalidSemanticIdError, match=r"\(1, 3, 0\).*code 3 at level 1, valid codes are 0\.\.2"):
        SemanticIdTrie.build(np.array([[0, 0, 0], [1, 3, 0]]), codebook_sizes=SIZES)
    with pytest.raises(InvalidSemanticIdError, match="code -1 at level 0"):
        SemanticIdTrie.build(np.array([[-1, 0, 0]]), codebook_sizes=SIZES)


def test_non_integer_ids_are_rejected() -> None:
    with pytest.raises(InvalidSemanticIdError, match="integers"):
        SemanticIdTrie.build(np.array([[0.0, 1.0, 0.0]]), codebook_sizes=SIZES)
    with pytest.raises(InvalidSemanticIdError, match="integers"):
        SemanticIdTrie.build(np.array([[True, False, True]]), codebook_sizes=SIZES)


def test_duplicate_ids_are_reported_never_merged() -> None:
    ids = np.array([[1, 2, 0], [0, 0, 0], [1, 2, 0], [0, 0, 0], [2, 2, 1]])
    with pytest.raises(DuplicateSemanticIdError, match=r"2 semantic ID\(s\).*\(0, 0, 0\), \(1, 2, 0\)") as info:
        SemanticIdTrie.build(ids, codebook_sizes=SIZES)
    assert info.value.duplicates == [(0, 0, 0), (1, 2, 0)]


def test_duplicate_rows_are_rejected() -> None:
    with pytest.raises(DuplicateRowError, match=r"\[4\]"):
        SemanticIdTrie.build(IDS, codebook_sizes=SIZES, rows=np.array([4, 1, 4, 2]))


def test_too_many_key_bits_is_a_clear_error() -> None:
    with pytest.raises(TrieError, match="bits"):
        SemanticIdTrie.build(np.zeros((1, 4), dtype=np.int64), codebook_sizes=[2**20] * 4)


def test_arrays_are_compact_numpy_arrays_not_python_nodes() -> None:
    rng = np.random.default_rng(0)
    learned = np.unique(rng.integers(0, 64, (20_000, 3)), axis=0)
    ids = np.concatenate([learned, np.zeros((len(learned), 1), dtype=np.int64)], axis=1)
    trie = SemanticIdTrie.build(ids, codebook_sizes=(64, 64, 64, 8))
    assert trie.nbytes / len(trie) <= 40


@settings(max_examples=100, deadline=None)  # a consistency check on top of the brute-force tests
@given(data=id_sets(min_size=1), seed=st.integers(0, 2**16))
def test_bitmap_and_slice_layouts_give_the_same_answers(data: tuple, seed: int) -> None:
    # Small tries get a bitmap on every level; large ones keep only slices on the deep levels.
    # Both code paths (mask: unpack vs scatter; child: popcount vs binary search) must agree.
    sizes, ids = data
    with_bitmaps = build(sizes, ids)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(layer_module, "BITMAP_FLOOR_BYTES", -1)
        patch.setattr(layer_module, "BITMAP_BYTES_PER_CHILD", 0)
        without_bitmaps = build(sizes, ids)
    assert all(bitmap is None for bitmap in without_bitmaps._base.csr.bitmaps)
    assert all(bitmap is not None for bitmap in with_bitmaps._base.csr.bitmaps)
    rng = np.random.default_rng(seed)
    for depth in range(len(sizes)):
        prefixes = all_prefixes(sizes[:depth])
        np.testing.assert_array_equal(with_bitmaps.allowed_mask(prefixes), without_bitmaps.allowed_mask(prefixes))
        beams = rng.integers(0, len(prefixes), 8)
        codes = rng.integers(0, sizes[depth], 8)
        for trie in (with_bitmaps, without_bitmaps):
            child = trie.advance(trie.state_of(prefixes), beams, codes)
            expected = trie.state_of(np.concatenate([prefixes[beams], codes[:, None]], axis=1))
            np.testing.assert_array_equal(child.nodes, expected.nodes)
        np.testing.assert_array_equal(
            with_bitmaps.advance(with_bitmaps.state_of(prefixes), beams, codes).nodes,
            without_bitmaps.advance(without_bitmaps.state_of(prefixes), beams, codes).nodes,
        )
