"""The one grouping of live beams into (B, W, L) decoder batches (bundle.grouped_step_fn)."""

from __future__ import annotations

import numpy as np

from bundle import grouped_step_fn


def _recording_step(seen: list):  # type: ignore[no-untyped-def]
    def step(queries: np.ndarray, codes: np.ndarray, level: int) -> np.ndarray:
        seen.append((queries.tolist(), codes.shape, codes[:, :, :level].tolist()))
        # log-prob of code c for beam w of query q encodes (q, w's first code, c); one padded column
        out = np.zeros((len(queries), codes.shape[1], 6))
        out += queries[:, None, None] * 100 + codes[:, :, :1] * 10 + np.arange(6)[None, None, :]
        return out
    return step


def test_each_query_gets_its_own_beams_in_one_call() -> None:
    seen: list = []
    step_fn = grouped_step_fn(_recording_step(seen), codebook_sizes=[5, 5, 3])
    # As the beam search hands them: grouped by query, ascending.
    out = step_fn(1, np.array([0, 2, 2, 2]), np.array([[4], [1], [3], [0]]))
    assert seen == [([0, 2], (2, 3, 2), [[[4], [0], [0]], [[1], [3], [0]]])]  # query 0 padded with code 0
    np.testing.assert_array_equal(out[:, 0], [40, 210, 230, 200])
    assert out.shape == (4, 5)  # sliced to the level's codebook


def test_beams_in_any_order_come_back_in_their_order() -> None:
    seen: list = []
    step_fn = grouped_step_fn(_recording_step(seen), codebook_sizes=[5, 5, 3])
    out = step_fn(1, np.array([2, 0, 2, 2]), np.array([[1], [4], [3], [0]]))
    assert seen[0][:2] == ([0, 2], (2, 3, 2))
    np.testing.assert_array_equal(out[:, 0], [210, 40, 230, 200])


def test_level_zero_has_one_beam_per_query_and_no_codes() -> None:
    seen: list = []
    out = grouped_step_fn(_recording_step(seen), codebook_sizes=[5, 5, 3])(0, np.arange(3), np.zeros((3, 0)))
    assert seen == [([0, 1, 2], (3, 1, 2), [[[]], [[]], [[]]])]
    assert out.shape == (3, 5)
