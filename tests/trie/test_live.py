"""LiveTrie: serialised writers, readers that always see one whole version."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import trie.semantic_id_trie as semantic_id_trie_module
from tests.trie.strategies import all_prefixes
from trie import LiveTrie, SemanticIdTrie, TrieError, constrained_beam_search

SIZES = (8, 8, 8, 4)


def test_readers_during_concurrent_updates_only_ever_see_whole_versions() -> None:
    rng = np.random.default_rng(0)
    every_id = all_prefixes(SIZES)
    chosen = rng.permutation(len(every_id))[:1300]
    initial, pending = chosen[:100], chosen[100:].reshape(-1, 6)
    # expected[v]: the sorted packed IDs of version v (inserts of 6, and every 4th update removes 3).
    expected: list[set[int]] = [set(initial.tolist())]
    operations: list[tuple[str, np.ndarray]] = []
    for index, batch in enumerate(pending):
        if index % 4 == 3:
            victims = np.array(sorted(expected[-1]))[rng.choice(len(expected[-1]), 3, replace=False)]
            operations.append(("remove", victims))
            expected.append(expected[-1] - set(victims.tolist()))
        operations.append(("insert", batch))
        expected.append(expected[-1] | set(batch.tolist()))
    live = LiveTrie(SemanticIdTrie.build(every_id[initial], codebook_sizes=SIZES, rows=initial))
    failures: list[str] = []
    seen_versions: set[int] = set()
    done = threading.Event()

    def step_fn(level: int, query_index: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
        return np.zeros((len(query_index), SIZES[level]))

    def reader() -> None:
        checked = 0
        while not done.is_set() or checked == 0:
            snapshot = live.current  # once per batch of reads
            seen_versions.add(snapshot.version)
            ids, rows = snapshot.to_arrays()
            flat = np.ravel_multi_index(tuple(ids.T), SIZES)
            if set(flat.tolist()) != expected[snapshot.version] or not (rows == flat).all():
                failures.append(f"version {snapshot.version}: {len(flat)} IDs, not the expected set")
            result = constrained_beam_search(step_fn, snapshot, num_queries=2, beam_size=8, top_k=8)
            found = result.semantic_ids[0, : result.counts[0]]
            if (snapshot.rows_of(found) < 0).any():
                failures.append(f"version {snapshot.version}: beam search returned an absent ID")
            checked += 1

    with pytest.MonkeyPatch.context() as patch:  # small layers: compactions happen during the run
        patch.setattr(semantic_id_trie_module, "TINY_MAX", 8)
        patch.setattr(semantic_id_trie_module, "DELTA_MIN", 40)
        readers = [threading.Thread(target=reader) for _ in range(2)]
        for thread in readers:
            thread.start()
        for operation, flats in operations:
            if operation == "insert":
                live.insert(every_id[flats], flats)
            else:
                live.remove(every_id[flats])
        done.set()
        for thread in readers:
            thread.join()
    assert failures == []
    assert len(seen_versions) >= 3  # the readers really ran while the writer was updating
    assert live.version == len(operations)
    assert set(live.current.rows_of(every_id[list(expected[-1])]).tolist()) == expected[-1]


def test_concurrent_counter_assignment_never_hands_out_a_counter_twice() -> None:
    live = LiveTrie(SemanticIdTrie.build(np.zeros((0, 3), dtype=np.int64), codebook_sizes=(4, 4, 64)))
    assigned: list[np.ndarray] = []

    def writer(first_row: int) -> None:
        for offset in range(10):
            rows = np.array([first_row + 2 * offset, first_row + 2 * offset + 1])
            ids = live.insert_with_counters(np.array([[1, 2], [1, 2]]), rows)
            assigned.append(ids)

    threads = [threading.Thread(target=writer, args=(1000 * n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counters = sorted(int(c) for ids in assigned for c in ids[:, 2])
    assert counters == list(range(60))
    assert live.version == 30 and len(live.current) == 60


def test_replace_keeps_versions_increasing_and_checks_the_shape() -> None:
    live = LiveTrie(SemanticIdTrie.build(np.array([[0, 0]]), codebook_sizes=(2, 2)))
    live.insert(np.array([[1, 1]]), np.array([1]))
    fresh = SemanticIdTrie.build(np.array([[1, 0]]), codebook_sizes=(2, 2))
    published = live.replace(fresh)
    assert published.version == 2 and live.current is published and live.current.row_of((1, 0)) == 0
    with pytest.raises(TrieError, match="codebook_sizes"):
        live.replace(SemanticIdTrie.build(np.array([[1, 0]]), codebook_sizes=(2, 3)))


def test_insert_with_counters_of_nothing_only_bumps_the_version() -> None:
    live = LiveTrie(SemanticIdTrie.build(np.array([[0, 0, 0]]), codebook_sizes=(2, 2, 2)))
    ids = live.insert_with_counters(np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64))
    assert ids.shape == (0, 3) and len(live.current) == 1 and live.version == 1
