"""The three LMIndexer losses (lmindexer-method.md, section 6), each on plain tensors.

- `reconstruction_loss`: cross-entropy of the reconstructor's token logits, averaged over every
  labelled (real) token; labels equal to `IGNORE_INDEX` are skipped.
- `contrastive_loss`: InfoNCE of an anchor against candidate vectors under a candidate mask.
  * level 1 (in-batch SimCSE): anchors = first dropout view h, candidates = second view h', every
    candidate allowed, target = the diagonal;
  * level >= 2 (same-prefix negatives): the same, but anchor i may only be contrasted with
    candidates that share its earlier codes (plus its own positive); with `in_batch_negatives`
    every candidate is allowed. Anchors with no allowed negative (documents without a sibling)
    are masked out, as the official nocode stage does and its full stage forgets to.
  Vectors are L2-normalised (cosine) unless `normalize=False` (the official dot product), then
  divided by the temperature.
- `commitment_loss`: cross-entropy of the network's level logits for the earlier levels against
  the codes already assigned (teacher-forced), so learning a new level does not move old codes.
  It is the official code's "commitment" (not a VQ commitment term).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def reconstruction_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits (..., V), labels (...) with IGNORE_INDEX where there is no target -> scalar mean CE."""
    flat_labels = labels.reshape(-1)
    if not bool((flat_labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0  # keeps the graph; no target in this batch
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat_labels, ignore_index=IGNORE_INDEX)


def reconstruction_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, total) top-1 predictions over the labelled positions."""
    valid = labels != IGNORE_INDEX
    correct = (logits.argmax(dim=-1) == labels) & valid
    return int(correct.sum()), int(valid.sum())


def contrastive_loss(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    targets: torch.Tensor | None = None,
    candidate_mask: torch.Tensor | None = None,
    temperature: float = 0.05,
    normalize: bool = True,
) -> torch.Tensor:
    """InfoNCE: anchors (B, d) against candidates (N, d); targets (B,) the positive's column
    (default: the diagonal, B == N); candidate_mask (B, N) bool, True = may be used as a negative
    (the positive is always kept). Anchors whose row allows no negative are left out of the mean;
    a batch with none left returns 0 (with a graph)."""
    b = anchors.shape[0]
    if targets is None:
        targets = torch.arange(b, device=anchors.device)
    if normalize:
        anchors = F.normalize(anchors.float(), dim=-1)
        candidates = F.normalize(candidates.float(), dim=-1)
    scores = anchors.float() @ candidates.float().T / temperature  # (B, N)
    positive = F.one_hot(targets, scores.shape[1]).bool()  # (B, N)
    if candidate_mask is None:
        candidate_mask = torch.ones_like(scores, dtype=torch.bool)
    allowed = candidate_mask | positive
    has_negative = (allowed & ~positive).any(dim=1)  # (B,)
    if not bool(has_negative.any()):
        return scores.sum() * 0.0
    scores = scores.masked_fill(~allowed, float("-inf"))
    return F.cross_entropy(scores[has_negative], targets[has_negative])


def same_prefix_mask(prefixes: torch.Tensor, in_batch_negatives: bool = False) -> torch.Tensor:
    """(B, B) candidate mask for level >= 2: documents sharing every earlier code (prefixes (B, t)).

    With `in_batch_negatives`, every candidate is allowed (but the mask still needs a same-prefix
    partner for an anchor to count: see `contrastive_loss`, the caller drops rows with none).
    """
    same = (prefixes[:, None, :] == prefixes[None, :, :]).all(dim=-1)  # (B, B)
    if in_batch_negatives:
        has_sibling = (same & ~torch.eye(same.shape[0], dtype=torch.bool, device=same.device)).any(dim=1)
        return has_sibling[:, None].expand_as(same).clone()
    return same


def commitment_loss(level_logits: Sequence[torch.Tensor], codes: torch.Tensor) -> torch.Tensor:
    """Mean over the earlier levels of CE(level_logits[j] (B, K_j), codes[:, j]); codes (B, t)."""
    if not level_logits:
        raise ValueError("commitment_loss needs at least one earlier level")
    losses = [F.cross_entropy(logits.float(), codes[:, j]) for j, logits in enumerate(level_logits)]
    return torch.stack(losses).mean()
