"""The LMIndexer quantizer: argmax in the forward pass, softmax in the backward pass.

For a hidden state h (..., d) and a level's codebook E (K, d):

- code = argmax_j h . e_j (an unnormalised dot product, the same rule as the network's level
  logits, so the code a document gets while indexing is the code the decoder predicts later);
- forward output = the hard code vector E[code];
- backward = the gradient of the soft mixture softmax(h . E^T / tau) @ E.

This is the straight-through trick of the official `GBQuantize` (lmindexer-method.md, section 4):
``quantized = soft + (hard - soft).detach()``. No Gumbel noise is sampled; tau (1 in the official
code) is configurable. Both h and E receive gradients through the soft path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Quantized:
    """What `quantize` returns (shapes for h (..., d) and a codebook (K, d))."""

    vectors: torch.Tensor  # (..., d): E[code] in the forward pass, soft-mixture gradient backward
    codes: torch.Tensor  # (...,) int64: argmax_j h . e_j
    logits: torch.Tensor  # (..., K): h . E^T (not divided by tau)
    probs: torch.Tensor  # (..., K): softmax(logits / tau)


def quantize(hidden: torch.Tensor, codebook: torch.Tensor, tau: float = 1.0) -> Quantized:
    """Quantise `hidden` (..., d) with `codebook` (K, d); see the module docstring."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    logits = hidden @ codebook.T  # (..., K)
    probs = (logits / tau).softmax(dim=-1)  # (..., K)
    soft = probs @ codebook  # (..., d)
    codes = logits.argmax(dim=-1)  # (...,)
    hard = codebook[codes]  # (..., d)
    vectors = soft + (hard - soft).detach()
    return Quantized(vectors=vectors, codes=codes, logits=logits, probs=probs)


def code_perplexity(probs_or_codes: torch.Tensor, codebook_size: int) -> float:
    """exp(entropy) of the code histogram: K when all K codes are used equally, 1 at collapse.

    Accepts codes (N,) int64 (hard histogram) or probabilities (N, K) (their mean).
    """
    if probs_or_codes.dtype in (torch.int64, torch.int32):
        histogram = torch.bincount(probs_or_codes.reshape(-1), minlength=codebook_size).double()
    else:
        histogram = probs_or_codes.reshape(-1, codebook_size).double().sum(dim=0)
    p = histogram / histogram.sum().clamp(min=1e-12)
    entropy = -(p * p.clamp(min=1e-12).log()).sum()
    return float(entropy.exp())
