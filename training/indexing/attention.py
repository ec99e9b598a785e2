"""Multi-head attention on already-projected inputs, shared by the ID decoder and the reconstructor.

`attention` is the plain core (matmuls only, so the ONNX export is a stable, simple graph);
`absorbed_attention` computes the same for unprojected memory by folding the key / value
projections into the queries, which is far cheaper when a few queries read a long memory.
"""

from __future__ import annotations

import math

import torch


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               mask: torch.Tensor | None, num_heads: int) -> torch.Tensor:
    """Multi-head attention core on already-projected inputs.

    query (N, Q, d), key/value (N, S, d), mask broadcastable to (N, 1, Q, S) with True = may attend.
    Written with plain matmuls (no fused kernel) so the ONNX export is a stable, simple graph.
    """
    n, q_len, d = query.shape
    head = d // num_heads
    q = query.view(n, q_len, num_heads, head).transpose(1, 2)  # (N, h, Q, dh)
    k = key.view(n, -1, num_heads, head).transpose(1, 2)  # (N, h, S, dh)
    v = value.view(n, -1, num_heads, head).transpose(1, 2)  # (N, h, S, dh)
    scores = q @ k.transpose(-1, -2) / math.sqrt(head)  # (N, h, Q, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)
    return (weights @ v).transpose(1, 2).reshape(n, q_len, d)  # (N, Q, d)


def absorbed_attention(query: torch.Tensor, memory: torch.Tensor, key_weight: torch.Tensor, value_weight: torch.Tensor,
                       value_bias: torch.Tensor, mask: torch.Tensor | None, num_heads: int) -> torch.Tensor:
    """Multi-head attention of projected queries over *unprojected* memory, equal to projecting it.

    query (N, Q, d) already projected; memory (N, M, d); key_weight / value_weight (d, d) and
    value_bias (d,) the key / value projections (nn.Linear layout: out x in); mask broadcastable to
    (N, 1, Q, M), True = may attend. Per head h with q_h (dh,) and W_k,h (dh, d):
    q_h . (W_k,h m + b_k,h) = (W_k,h^T q_h) . m + const, and the constant (the key bias) cancels in
    the softmax; sum_s a_s (W_v,h m_s + b_v,h) = W_v,h (sum_s a_s m_s) + b_v,h. The cost is
    O(Q (d^2 + H M d)) instead of O(M d^2): far less when a few queries read a long memory.
    """
    n, q_len, d = query.shape
    head = d // num_heads
    qh = query.view(n, q_len, num_heads, head)
    folded = torch.einsum("nqhe,hed->nhqd", qh, key_weight.view(num_heads, head, d))  # (N, H, Q, d)
    scores = folded @ memory.unsqueeze(1).transpose(-1, -2) / math.sqrt(head)  # (N, H, Q, M)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    pooled = scores.softmax(dim=-1) @ memory.unsqueeze(1)  # (N, H, Q, d)
    out = torch.einsum("nhqd,hed->nqhe", pooled, value_weight.view(num_heads, head, d))  # (N, Q, H, dh)
    return out.reshape(n, q_len, d) + value_bias
