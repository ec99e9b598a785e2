"""The LMIndexer losses and the reconstructor's hint masks, checked against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from training.indexing.losses import (
    IGNORE_INDEX,
    commitment_loss,
    contrastive_loss,
    reconstruction_accuracy,
    reconstruction_loss,
    same_prefix_mask,
)
from training.indexing.reconstructor import Reconstructor, sample_hint_mask


def _log_softmax(row: list[float], index: int) -> float:
    return row[index] - math.log(sum(math.exp(v) for v in row))


def test_reconstruction_loss_is_mean_ce_over_labelled_tokens() -> None:
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]], [[0.0, 1.0, 0.0], [3.0, 0.0, 0.0]]])
    labels = torch.tensor([[0, IGNORE_INDEX], [2, 1]])
    expected = -(_log_softmax([2.0, 0.0, -1.0], 0) + _log_softmax([0.0, 1.0, 0.0], 2)
                 + _log_softmax([3.0, 0.0, 0.0], 1)) / 3
    assert float(reconstruction_loss(logits, labels)) == pytest.approx(expected, rel=1e-6)
    assert reconstruction_accuracy(logits, labels) == (1, 3)


def test_reconstruction_loss_without_targets_is_zero() -> None:
    logits = torch.randn(2, 3, requires_grad=True)
    loss = reconstruction_loss(logits, torch.full((2,), IGNORE_INDEX))
    assert float(loss.detach()) == 0.0
    loss.backward()  # still differentiable


def test_in_batch_contrastive_matches_hand_computation() -> None:
    anchors = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    positives = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    # raw dot products / temperature 0.5: row 0 -> [2, 0], row 1 -> [4, 4]
    expected = -(_log_softmax([2.0, 0.0], 0) + _log_softmax([4.0, 4.0], 1)) / 2
    got = contrastive_loss(anchors, positives, temperature=0.5, normalize=False)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # cosine: row 0 -> [1/sqrt2, 0], row 1 -> [1/sqrt2, 1] (temperature 1)
    s = 1 / math.sqrt(2)
    expected = -(_log_softmax([s, 0.0], 0) + _log_softmax([s, 1.0], 1)) / 2
    assert float(contrastive_loss(anchors, positives, temperature=1.0)) == pytest.approx(expected, rel=1e-6)


def test_same_prefix_contrastive_masks_other_prefixes_and_lonely_documents() -> None:
    prefixes = torch.tensor([[3], [3], [5], [3]])
    mask = same_prefix_mask(prefixes)
    assert mask.tolist() == [[True, True, False, True], [True, True, False, True],
                             [False, False, True, False], [True, True, False, True]]
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
    positives = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, 0.0], [1.0, 0.0]])
    got = contrastive_loss(anchors, positives, candidate_mask=mask, temperature=1.0, normalize=False)
    # document 2 has no sibling: left out. Rows 0, 1, 3 see columns 0, 1, 3 only.
    rows = [[2.0, 0.0, 1.0], [0.0, 1.0, 0.0], [2.0, -1.0, 1.0]]
    expected = -(_log_softmax(rows[0], 0) + _log_softmax(rows[1], 1) + _log_softmax(rows[2], 2)) / 3
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # in-batch negatives: siblings still decide who counts, but every column is a negative
    wide = same_prefix_mask(prefixes, in_batch_negatives=True)
    assert wide[0].all() and not wide[2].any()
    got = contrastive_loss(anchors, positives, candidate_mask=wide, temperature=1.0, normalize=False)
    full = [[2.0, 0.0, 5.0, 1.0], [0.0, 1.0, 0.0, 0.0], [2.0, -1.0, 5.0, 1.0]]
    expected = -(_log_softmax(full[0], 0) + _log_softmax(full[1], 1) + _log_softmax(full[2], 3)) / 3
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_contrastive_without_any_negative_is_zero() -> None:
    anchors = torch.randn(2, 4, requires_grad=True)
    got = contrastive_loss(anchors, anchors.detach(), candidate_mask=torch.zeros(2, 2, dtype=torch.bool))
    assert float(got.detach()) == 0.0
    got.backward()


def test_commitment_loss_matches_hand_computation() -> None:
    level0 = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    level1 = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    codes = torch.tensor([[1, 0], [2, 1]])
    ce0 = -(_log_softmax([1.0, 2.0, 0.0], 1) + _log_softmax([0.0, 0.0, 3.0], 2)) / 2
    ce1 = -(_log_softmax([0.0, 1.0], 0) + _log_softmax([2.0, 2.0], 1)) / 2
    got = commitment_loss([level0, level1], codes)
    assert float(got) == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    with pytest.raises(ValueError):
        commitment_loss([], codes)


def test_hint_masks() -> None:
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    everything = sample_hint_mask(mask, 0.0)
    for b in range(2):
        for i in range(5):
            for j in range(5):
                assert bool(everything[b, i, j]) == (bool(mask[b, j]) and i != j)
    assert not sample_hint_mask(mask, 1.0).any()
    generator = torch.Generator().manual_seed(0)
    big = torch.ones(8, 64, dtype=torch.long)
    half = sample_hint_mask(big, 0.7, generator)
    assert not half.diagonal(dim1=1, dim2=2).any()
    assert half.float().mean().item() == pytest.approx(0.3 * 63 / 64, abs=0.02)
    rows = torch.tensor([[2, 0], [1, 1]])
    some = sample_hint_mask(mask, 0.0, query_positions=rows)
    assert some.shape == (2, 2, 5)
    assert not some[0, 0, 2] and some[0, 0, 0] and not some[0, 1, 0] and not some[1, 0, 1]


def test_reconstructor_rows_are_independent_and_hidden_tokens_do_not_leak() -> None:
    torch.manual_seed(0)
    rec = Reconstructor(d=12, vocab_size=7, num_layers=2, num_heads=3, ff_size=16, max_positions=8).eval()
    ids = torch.randn(2, 2, 12)
    tokens = torch.randn(2, 5, 12)
    mask = torch.ones(2, 5, dtype=torch.long)
    hints = sample_hint_mask(mask, 0.5, torch.Generator().manual_seed(3))
    out = torch.randn(7, 12)
    full = rec.logits(ids, tokens, mask, hints, out)  # (2, 5, 7)
    positions = torch.tensor([[4, 1], [0, 3]])
    part = rec.logits(ids, tokens, mask, hints.gather(1, positions[..., None].expand(2, 2, 5)), out, positions)
    torch.testing.assert_close(part, full.gather(1, positions[..., None].expand(2, 2, 7)))
    # changing a token that row (0, 2) may not see leaves that row's output unchanged
    hidden = [j for j in range(5) if not hints[0, 2, j]]
    assert 2 in hidden
    changed = tokens.clone()
    changed[0, hidden] += 10.0
    torch.testing.assert_close(rec.logits(ids, changed, mask, hints, out)[0, 2], full[0, 2])
