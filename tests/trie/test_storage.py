"""save / load: one file, memory-mapped or read, the same IDs, rows and version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from tests.trie.strategies import all_prefixes, build, id_sets
from trie import SemanticIdTrie, TrieFormatError


def assert_same_trie(loaded: SemanticIdTrie, original: SemanticIdTrie) -> None:
    assert loaded.codebook_sizes == original.codebook_sizes
    assert loaded.version == original.version
    assert len(loaded) == len(original)
    for left, right in zip(loaded.to_arrays(), original.to_arrays(), strict=True):
        np.testing.assert_array_equal(left, right)
    for depth in range(loaded.depth):
        prefixes = all_prefixes(loaded.codebook_sizes[:depth])
        np.testing.assert_array_equal(loaded.allowed_mask(prefixes), original.allowed_mask(prefixes))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=id_sets())
def test_save_load_round_trip(tmp_path: Path, data: tuple) -> None:
    sizes, ids = data
    trie = build(sizes, ids)
    if len(ids) > 2:  # a version with a delta: save must fold it in
        trie = trie.with_removed(ids[:1]).with_inserted(ids[:1], np.array([1000]))
    path = tmp_path / "trie.bin"
    trie.save(path)
    for mmap in (True, False):
        assert_same_trie(SemanticIdTrie.load(path, mmap=mmap), trie)


def test_loaded_trie_is_memory_mapped_read_only_and_updatable(tmp_path: Path) -> None:
    ids = np.array([[0, 1, 0], [2, 2, 0], [2, 2, 1]])
    trie = SemanticIdTrie.build(ids, codebook_sizes=(3, 3, 2), rows=np.array([5, 0, 9])).with_version(7)
    path = tmp_path / "trie.bin"
    trie.save(path)
    loaded = SemanticIdTrie.load(path)
    keys = loaded._base.keys
    assert isinstance(keys.base, np.memmap) or isinstance(getattr(keys.base, "base", None), np.memmap)
    assert not keys.flags.writeable
    assert loaded.version == 7 and loaded.row_of((2, 2, 1)) == 9 and loaded.semantic_id_of(5) == (0, 1, 0)
    updated = loaded.with_inserted(np.array([[1, 1, 1]]), np.array([3])).with_removed(ids[:1])
    assert updated.version == 9 and len(updated) == 3 and len(loaded) == 3
    updated.compacted().save(path)  # overwriting the mapped file is atomic: the old map stays valid
    assert loaded.row_of((0, 1, 0)) == 5
    assert SemanticIdTrie.load(path).row_of((1, 1, 1)) == 3


def test_not_a_trie_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "junk.bin"
    path.write_bytes(b"hello world, not a trie")
    with pytest.raises(TrieFormatError, match="not a trie file"):
        SemanticIdTrie.load(path)


def test_truncated_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "trie.bin"
    SemanticIdTrie.build(np.array([[0, 1, 0], [2, 2, 0]]), codebook_sizes=(3, 3, 2)).save(path)
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(TrieFormatError, match="truncated"):
        SemanticIdTrie.load(path)
