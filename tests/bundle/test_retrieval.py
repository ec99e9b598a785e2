"""The hybrid search rule (bundle.retrieval) on hand-made scores and vectors: the fused score, the candidates
(the beam's, then the dense top-N), ties, documents outside the beam or without a vector, and the dense index
(normalised once, appended to without changing older views)."""

from __future__ import annotations

import numpy as np
import pytest

from bundle import DenseIndex, hybrid_scores, hybrid_search, rank_candidates, search_candidates

NEG = -np.inf


def test_the_score_is_the_convex_combination_of_cosine_and_beam_probability() -> None:
    dense = np.array([0.8, 0.2, 0.5, -0.3])
    generative = np.log(np.array([0.1, 0.9, 1.0, 0.5]))
    for w in (0.0, 0.3, 1.0):
        np.testing.assert_allclose(hybrid_scores(dense, generative, w), (1 - w) * dense + w * np.exp(generative))
    # scores are absolute: a document's score does not depend on the other candidates of its query
    np.testing.assert_allclose(hybrid_scores(dense[:2], generative[:2], 0.3), hybrid_scores(dense, generative, 0.3)[:2])


def test_outside_the_beam_p_is_zero_and_without_a_vector_the_cosine_term_is_zero() -> None:
    dense = np.array([0.6, np.nan, 0.4, np.nan, np.inf])
    generative = np.array([NEG, np.log(0.5), np.nan, NEG, NEG])
    scores = hybrid_scores(dense, generative, 0.5)
    np.testing.assert_allclose(scores[:3], [0.3, 0.25, 0.2])
    assert scores[3] == NEG and scores[4] == NEG  # neither term: no candidate
    # a beam member whose ID the model gives probability 0 (log-prob -inf) is just outside the beam
    assert hybrid_scores(np.array([0.5]), np.array([NEG]), 0.5)[0] == 0.25


def test_terms_are_clipped_to_their_ranges_and_the_weight_is_checked() -> None:
    assert hybrid_scores(np.array([1.0000002]), np.array([1e-7]), 0.5)[0] == 1.0
    assert hybrid_scores(np.array([-1.5]), np.array([NEG]), 0.0)[0] == -1.0
    with pytest.raises(ValueError, match="weight"):
        hybrid_scores(np.array([0.5]), np.array([0.0]), 1.5)


def _index() -> DenseIndex:
    # unit axes and mixtures in 3-d, not normalised on input (the index normalises them once)
    return DenseIndex.build(np.array([[2.0, 0, 0], [0, 3, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 0, 0]]))


def test_the_dense_index_normalises_once_and_knows_documents_without_a_vector() -> None:
    index = _index()
    assert index.matrix.dtype == np.float32 and index.matrix.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(index.matrix[:5], axis=1), 1.0, rtol=1e-6)
    assert index.present.tolist() == [True] * 5 + [False]
    rows, cosines = index.nearest(np.array([[1.0, 0.2, 0.0]]), 3)
    assert rows.tolist() == [[0, 3, 4]]
    assert np.all(np.diff(cosines[0]) <= 0)
    rows, _ = index.nearest(np.array([[1.0, 0, 0]]), 10)  # at most the documents that have a vector
    assert sorted(rows[0].tolist()) == [0, 1, 2, 3, 4]
    cos = index.cosines(np.array([[0.0, 5.0, 0.0]]), np.array([[1, 5, -1, 3]]))
    np.testing.assert_allclose(cos[0, [0, 3]], [1.0, np.sqrt(0.5)], rtol=1e-6)
    assert np.isnan(cos[0, 1]) and np.isnan(cos[0, 2])


def test_ties_in_cosine_go_to_the_lower_row() -> None:
    index = DenseIndex.build(np.array([[0, 1.0], [1, 0], [1, 0], [0, 1], [1, 0]]))
    rows, _ = index.nearest(np.array([[1.0, 0.0]]), 2)
    assert rows.tolist() == [[1, 2]]


def test_added_documents_are_appended_and_older_views_do_not_change() -> None:
    index = _index()
    grown = index.with_rows(np.array([6, 7]), np.array([[0, -1.0, 0], [0, 0, 0]]))
    assert len(index) == 6 and len(grown) == 8
    assert grown.present[6] and not grown.present[7]
    rows, _ = grown.nearest(np.array([[0, -1.0, 0]]), 1)
    assert rows.tolist() == [[6]]
    again = grown.with_rows(np.array([8]), np.array([[0, 0, -1.0]]))  # in place, past the older views
    assert len(grown) == 8 and again.nearest(np.array([[0, 0, -1.0]]), 1)[0].tolist() == [[8]]
    assert grown.nearest(np.array([[0, 0, -1.0]]), 1)[0].tolist() != [[8]]
    # a re-indexed document: its row is rewritten in a copy; the view before keeps the old vector
    changed = again.with_rows(np.array([0]), np.array([[0, 0, -2.0]]))
    assert changed.cosines(np.array([[1.0, 0, 0]]), np.array([[0]]))[0, 0] == pytest.approx(0.0, abs=1e-7)
    assert again.cosines(np.array([[1.0, 0, 0]]), np.array([[0]]))[0, 0] == pytest.approx(1.0)
    # a branch from an older view does not overwrite rows a newer view appended
    branch = grown.with_rows(np.array([8]), np.array([[1.0, 0, 0]]))
    assert again.cosines(np.array([[0, 0, -1.0]]), np.array([[8]]))[0, 0] == pytest.approx(1.0)
    assert branch.cosines(np.array([[1.0, 0, 0]]), np.array([[8]]))[0, 0] == pytest.approx(1.0)


def test_re_indexing_one_document_again_and_again_does_not_grow_the_buffer() -> None:
    """Each re-index copies the buffer (older views keep their vectors); the copy keeps the capacity when the
    rows fit (growing 1.5x per copy reached a 32 GiB allocation after a few dozen requests)."""
    index = _index().with_rows(np.array([6]), np.array([[0, 1.0, 0]]))
    capacity = index.capacity
    for step in range(200):
        index = index.with_rows(np.array([6]), np.array([[float(step), 1.0, 0]]))
    assert len(index) == 7 and index.capacity == capacity
    assert index.cosines(np.array([[199.0, 1.0, 0]]), np.array([[6]]))[0, 0] == pytest.approx(1.0)


def test_candidates_are_the_beam_in_beam_order_then_the_dense_ones_not_in_it() -> None:
    index = _index()
    beam_rows = np.array([[2, 0, -1], [1, -1, -1]])
    beam_scores = np.array([[np.log(0.6), np.log(0.3), NEG], [np.log(0.9), NEG, NEG]])
    queries = np.array([[1.0, 0.1, 0.0], [0.0, 1.0, 0.0]])
    candidates = search_candidates(beam_rows, beam_scores, queries, index, dense_candidates=3)
    assert candidates.rows[0].tolist()[:4] == [2, 0, 3, 4]  # row 0 is in the beam and the dense top 3
    assert candidates.rows[0, 4:].tolist() == [-1] * (candidates.rows.shape[1] - 4)
    assert candidates.rows[1].tolist() == [1, 3, 0, -1, -1, -1]  # rows 0, 2, 4 tie at 0: the lowest is taken
    np.testing.assert_allclose(np.exp(candidates.generative[0, :2]), [0.6, 0.3])
    assert (candidates.generative[0, 2:] == NEG).all() and (candidates.generative[1, 1:] == NEG).all()
    np.testing.assert_allclose(candidates.dense[0, :4], index.cosines(queries[:1], np.array([[2, 0, 3, 4]]))[0])


def test_the_hybrid_ranking_moves_between_dense_and_beam_order_with_the_weight() -> None:
    index = _index()
    beam_rows = np.array([[2, 4]])
    beam_scores = np.log(np.array([[0.7, 0.2]]))
    query = np.array([[1.0, 0.1, 0.0]])
    dense_only = hybrid_search(beam_rows, beam_scores, query, index, weight=0.0, dense_candidates=2, top_k=3)
    want_rows, want_cos = index.nearest(query, 3)
    assert dense_only.rows.tolist() == want_rows.tolist()
    np.testing.assert_allclose(dense_only.scores, want_cos, rtol=1e-6)
    beam_first = hybrid_search(beam_rows, beam_scores, query, index, weight=1.0, dense_candidates=2, top_k=4)
    assert beam_first.rows[0].tolist() == [2, 4, 0, 3]  # beam order, then the dense ones (tied at 0) by cosine
    mixed = hybrid_search(beam_rows, beam_scores, query, index, weight=0.5, dense_candidates=2, top_k=6)
    rows = mixed.rows[0, :5]
    scores = 0.5 * index.cosines(query, rows[None])[0] + 0.5 * np.where(rows == 2, 0.7, np.where(rows == 4, 0.2, 0.0))
    np.testing.assert_allclose(mixed.scores[0, :5], scores)
    # the beam's 2 and the 5 documents with a vector: 5 candidates (row 5 has no vector)
    assert np.all(np.diff(mixed.scores[0, :5]) <= 0) and mixed.counts.tolist() == [5]
    assert mixed.rows[0, 5] == -1 and mixed.scores[0, 5] == NEG


def test_ties_keep_candidate_order_and_at_least_k_dense_candidates_are_read() -> None:
    index = DenseIndex.build(np.array([[1.0, 0], [1, 0], [0, 1], [1, 0]]))
    ranking = hybrid_search(np.array([[3, 2]]), np.array([[NEG, NEG]]), np.array([[1.0, 0]]), index,
                            weight=0.3, dense_candidates=1, top_k=3)
    assert ranking.rows[0].tolist() == [3, 0, 1]  # equal scores: the beam's candidate first, then by row
    candidates = search_candidates(np.zeros((1, 0), dtype=np.int64), np.zeros((1, 0)), np.array([[0.0, 1.0]]), index,
                                   dense_candidates=2)
    ranked = rank_candidates(candidates, 0.5, top_k=2)
    assert ranked.rows[0].tolist() == [2, 0] and np.isnan(ranked.dense).sum() == 0

