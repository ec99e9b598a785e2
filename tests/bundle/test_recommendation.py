"""bundle.recommendation on hand-made numbers: the hybrid rule, the parity rule for near ties, and the
ranking of histories (cut to the model's length, the history excluded, both modes) over a trie."""

from __future__ import annotations

import numpy as np
import pytest

from bundle.recommendation import History, fuse, history_inputs, rankings_agree, recommend
from trie import SemanticIdTrie

# 6 items, 2 learned levels of 2 codes + a counter of 2: item i has ID IDS[i]
IDS = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [1, 0, 1], [1, 1, 0]])
SIZES = (2, 2, 2)


class HandMadeGraphs:
    """A recommender whose decoder prefers low codes (level probabilities fixed) and whose dense head
    scores item i by DENSE[i] (read through its vector, a one-hot of i); hidden = the last item's vector."""

    codebook_sizes = SIZES
    max_history = 2
    DENSE = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])

    def __init__(self) -> None:
        self.seen_widths: list[int] = []

    def hidden(self, vectors: np.ndarray, codes: np.ndarray, padding: np.ndarray) -> np.ndarray:
        self.seen_widths.append(vectors.shape[1])
        return vectors[:, -1]

    def step(self, hidden: np.ndarray, codes: np.ndarray, level: int) -> np.ndarray:
        log_probs = np.log(np.array([0.7, 0.3], dtype=np.float32))  # code 0 first at every level
        return np.broadcast_to(log_probs, (*codes.shape[:2], 2)).copy()

    def dense_scores(self, hidden: np.ndarray, vectors: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return vectors @ self.DENSE  # (B, K)


def _history(rows: list[int]) -> History:
    return History(np.eye(6, dtype=np.float32)[rows], IDS[rows])


def _recommend(rows: list[int], mode: str, weight: float = 0.5, exclude: bool = True, k: int = 6):
    trie = SemanticIdTrie.build(IDS, codebook_sizes=list(SIZES))
    return recommend(HandMadeGraphs(), [_history(rows)], trie, lambda r: np.eye(6, dtype=np.float32)[r], mode=mode,
                     top_k=k, beam_size=6, hybrid_weight=weight, exclude_history=exclude)


def test_fuse_is_the_convex_combination_and_keeps_missing_candidates_out() -> None:
    generative = np.array([[-1.0, -2.0, -np.inf]])
    dense = np.array([[-5.0, -1.0, 7.0]])
    np.testing.assert_allclose(fuse(generative, dense, 0.25)[0, :2], [0.75 * -1 + 0.25 * -5, 0.75 * -2 + 0.25 * -1])
    np.testing.assert_allclose(fuse(generative, dense, 0.0)[0, :2], generative[0, :2])
    assert fuse(generative, dense, 1.0)[0, 2] == -np.inf


def test_a_shift_of_the_dense_scores_per_user_keeps_the_hybrid_order() -> None:
    """Training fuses dense log-probabilities, the service raw scores: they differ by log Z per user."""
    generative = np.array([[-0.2, -0.9, -1.7, -2.0]])
    dense = np.array([[0.3, 2.5, 1.0, 4.0]])
    for weight in (0.1, 0.5, 0.9):
        shifted = fuse(generative, dense - 6.3, weight)
        assert (np.argsort(-fuse(generative, dense, weight)) == np.argsort(-shifted)).all()


def test_generative_mode_is_beam_order_without_the_history() -> None:
    result = _recommend([0, 3], "generative")
    # ID log-prob: count of code-1s decides (0.7 vs 0.3 per level); items 0 and 3 are the history
    assert result.rows[0, : result.counts[0]].tolist() == [1, 2, 4, 5]
    expected = np.log([0.7 * 0.7 * 0.3, 0.7 * 0.3 * 0.7, 0.3 * 0.7 * 0.3, 0.3 * 0.3 * 0.7])
    np.testing.assert_allclose(result.scores[0, :4], expected, rtol=1e-6)


def test_hybrid_mode_reranks_the_beam_by_the_rule() -> None:
    result = _recommend([0, 3], "hybrid", weight=0.5)
    generative = np.log([0.7 * 0.7 * 0.3, 0.7 * 0.3 * 0.7, 0.3 * 0.7 * 0.3, 0.3 * 0.3 * 0.7])
    fused = 0.5 * generative + 0.5 * np.array([1.0, 2.0, 4.0, 5.0])  # items 1, 2, 4, 5
    order = np.argsort(-fused, kind="stable")
    assert result.rows[0, :4].tolist() == np.array([1, 2, 4, 5])[order].tolist() == [5, 4, 2, 1]
    np.testing.assert_allclose(result.scores[0, :4], fused[order], rtol=1e-6)
    # weight 0 is the generative order
    assert _recommend([0, 3], "hybrid", weight=0.0).rows[0, :4].tolist() == [1, 2, 4, 5]


def test_repeats_may_be_recommended_when_exclusion_is_off() -> None:
    assert _recommend([0, 3], "generative", exclude=False).rows[0, :2].tolist() == [0, 1]


def test_the_model_reads_the_newest_items_and_every_item_is_excluded() -> None:
    vectors, codes, padding = history_inputs([_history([0, 1, 2, 4]), _history([5])], 2, 6, 3)
    assert vectors.shape == (2, 2, 6) and padding.tolist() == [[False, False], [True, False]]
    assert codes[0].tolist() == IDS[[2, 4]].tolist()  # the two newest, oldest first
    assert vectors[1, 1].argmax() == 5 and not vectors[1, 0].any()
    # a history with repeats and longer than the model: all of its items stay out of the results
    result = _recommend([0, 1, 2, 1, 4], "generative")
    assert result.rows[0, : result.counts[0]].tolist() == [3, 5]
    with pytest.raises(ValueError, match="unknown mode 'dense'"):
        _recommend([0], "dense")


def test_near_ties_may_swap_and_real_differences_may_not() -> None:
    rows = np.array([5, 7, 9, 11])
    scores = np.array([-1.0, -1.5, -1.50004, -3.0])
    # identical
    assert rankings_agree(rows, scores, rows.copy(), scores.copy(), 1e-4) == (True, False)
    # items 7 and 9 scored within the tolerance: swapping them is a near tie
    swapped_rows, swapped_scores = np.array([5, 9, 7, 11]), np.array([-1.0, -1.50001, -1.50003, -3.0])
    assert rankings_agree(rows, scores, swapped_rows, swapped_scores, 1e-4) == (True, True)
    # the same swap with scores 0.1 apart is a real mismatch
    far = np.array([-1.0, -1.5, -1.6, -3.0])
    assert rankings_agree(rows, far, swapped_rows, np.array([-1.0, -1.5, -1.6, -3.0]), 1e-4)[0] is False
    # the last place may change hands only with a near tie at the cut
    assert rankings_agree(rows, scores, np.array([5, 7, 9, 12]), np.array([-1.0, -1.5, -1.50004, -3.00002]),
                          1e-4) == (True, True)
    assert rankings_agree(rows, scores, np.array([5, 7, 9, 12]), np.array([-1.0, -1.5, -1.50004, -2.9]),
                          1e-4)[0] is False


def test_near_tie_agreement_re_searches_only_what_differs_beyond_swapped_near_ties() -> None:
    from bundle import near_tie_agreement

    rows = np.array([[5, 7, 9], [1, 2, 3], [4, 6, 8]])
    scores = np.array([[-1.0, -1.5, -1.50004], [-0.5, -0.7, -0.9], [-0.2, -0.3, -0.4]])
    other_rows = np.array([[5, 9, 7], [2, 1, 3], [4, 6, 8]])
    other_scores = np.array([[-1.0, -1.50001, -1.50003], [-0.5, -0.7, -0.9], [-0.2, -0.3, -0.4]])
    asked: list[int] = []

    def recheck(i: int):  # type: ignore[no-untyped-def]
        asked.append(i)
        return rows[i], scores[i], rows[i], scores[i] + 1e-6  # the wider search agrees

    ties = near_tie_agreement(rows, scores, other_rows, other_scores, 1e-4, recheck=recheck)
    assert (ties.swapped, ties.beam_cut, ties.mismatched) == ((0,), (1,), ()) and asked == [1]
    # without a re-search, or when the re-search still differs, input 1 is a real mismatch
    assert near_tie_agreement(rows, scores, other_rows, other_scores, 1e-4).mismatched == (1,)
    ties = near_tie_agreement(rows, scores, other_rows, other_scores, 1e-4,
                              recheck=lambda i: (rows[i], scores[i], other_rows[i], other_scores[i]))
    assert ties.mismatched == (1,) and ties.beam_cut == ()
