"""The shallow reconstructor: predict a document's tokens from its ID vectors plus a few hints.

Architecture (lmindexer-method.md, section 5, with our fix of the query stream). For a document
of S tokens and t + 1 ID vectors (the codes of levels 0..t):

- query stream, one row per target position j: q_j = sum of the ID vectors + P[j], where P is a
  learned position embedding. The official query is the bare ID vector repeated (the position
  reaches it only through T5's relative bias); ours says explicitly which token a row predicts;
- keys / values: [ID vectors (t + 1), token embeddings of the document + P (S)];
- the attention mask (B, S, t + 1 + S): every row sees every ID vector, and the token columns
  of its *hint mask*: a random subset of the other real tokens, each visible with probability
  1 - p, never the row's own token (the RetroMAE "enhanced decoder" masking, done through a 3-D
  mask and no [MASK] token);
- `num_layers` pre-LN blocks (1 by default). The query stream is the residual stream, keys and
  values stay the first layer's, so a deeper stack cannot leak a target through other rows (the
  official multi-layer quirk);
- output: LN, then logits = z . W^T + b over the vocabulary, where W is the encoder's token
  embedding matrix (tied), optionally restricted to the tokens the corpus uses (`vocab_ids`).

The loss is cross-entropy over every real token (losses.reconstruction_loss).
"""

from __future__ import annotations

import torch
from torch import nn

from training.indexing.attention import absorbed_attention, attention


def sample_hint_mask(attention_mask: torch.Tensor, p: float, generator: torch.Generator | None = None,
                     query_positions: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row hint masks (B, R, S) bool: [b, r, j] True = query row r may see token j.

    Row r predicts the token at query_positions[b, r] (default: every position, R = S). Token j is
    visible to it iff j is a real token (attention_mask), j is not the row's own position and a
    Bernoulli(1 - p) draw says so (independently per row). p = 0 shows every other real token.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"hint masking probability must be in [0, 1], got {p}")
    b, s = attention_mask.shape
    device = attention_mask.device
    if query_positions is None:
        query_positions = torch.arange(s, device=device).expand(b, s)
    r = query_positions.shape[1]
    # Drawn on the CPU generator so a seeded run gives the same masks on every device.
    keep = torch.rand((b, r, s), generator=generator).to(device) >= p
    not_self = query_positions.unsqueeze(-1) != torch.arange(s, device=device).view(1, 1, s)  # (B, R, S)
    return keep & not_self & attention_mask.bool().view(b, 1, s)


class ReconstructorLayer(nn.Module):
    """One pre-LN block: query-stream attention over [ID vectors, tokens], then a feed-forward."""

    def __init__(self, d: int, num_heads: int, ff_size: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query_norm = nn.LayerNorm(d)
        self.memory_norm = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)
        self.ff_norm = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff_size), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_size, d))
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """query (B, R, d); memory (B, M, d); mask (B, R, M) bool -> (B, R, d)."""
        q = self.q(self.query_norm(query))
        memory = self.memory_norm(memory)
        r, m, d = q.shape[1], memory.shape[1], q.shape[2]
        if r * (2 * d + 2 * self.num_heads * m) < (2 * m + r) * d:
            # Few query rows (a sample of the targets): fold the key / value projections into the
            # query side instead of projecting all M memory vectors (see absorbed_attention).
            attended = absorbed_attention(q, memory, self.kv.weight[:d], self.kv.weight[d:], self.kv.bias[d:],
                                          mask.unsqueeze(1), self.num_heads)
        else:
            k, v = self.kv(memory).chunk(2, dim=-1)
            attended = attention(q, k, v, mask.unsqueeze(1), self.num_heads)
        query = query + self.dropout(self.out(attended))
        return query + self.dropout(self.ff(self.ff_norm(query)))


class Reconstructor(nn.Module):
    """ID vectors + hint tokens -> token logits (shapes in the module docstring)."""

    def __init__(self, d: int, vocab_size: int, num_layers: int = 1, num_heads: int = 6, ff_size: int = 1024,
                 dropout: float = 0.1, max_positions: int = 512) -> None:
        super().__init__()
        if d % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide d={d}")
        self.position = nn.Embedding(max_positions, d)
        nn.init.normal_(self.position.weight, std=0.02)
        self.layers = nn.ModuleList(ReconstructorLayer(d, num_heads, ff_size, dropout) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(d)
        self.output_bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, id_vectors: torch.Tensor, token_embeddings: torch.Tensor, attention_mask: torch.Tensor,
                hint_mask: torch.Tensor, query_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Output states z (B, R, d), row r predicting the token at query_positions[:, r].

        id_vectors (B, T, d) the ID vectors of levels 0..T-1; token_embeddings (B, S, d) the document's
        (input) token embeddings; attention_mask (B, S); hint_mask (B, R, S) from `sample_hint_mask`;
        query_positions (B, R) the target positions (default every position, R = S). Rows are
        independent, so scoring a sample of the targets only computes those rows. `project` turns
        z into logits.
        """
        b, s, d = token_embeddings.shape
        t = id_vectors.shape[1]
        if query_positions is None:
            query_positions = torch.arange(s, device=token_embeddings.device).expand(b, s)
        r = query_positions.shape[1]
        positions = self.position.weight[:s]  # (S, d)
        query = id_vectors.sum(dim=1, keepdim=True) + positions[query_positions]  # (B, R, d)
        memory = torch.cat([id_vectors, token_embeddings + positions.view(1, s, d)], dim=1)  # (B, T+S, d)
        id_columns = torch.ones(b, r, t, dtype=torch.bool, device=hint_mask.device)
        mask = torch.cat([id_columns, hint_mask & attention_mask.bool().view(b, 1, s)], dim=2)  # (B, R, T+S)
        for layer in self.layers:
            query = layer(query, memory, mask)
        return self.final_norm(query)

    def project(self, z: torch.Tensor, output_embeddings: torch.Tensor) -> torch.Tensor:
        """z (..., d) -> logits (..., V) through the tied matrix output_embeddings (V, d) and a bias.

        Like BERT's MLM head (LN, tied matrix, per-token bias): the bias absorbs the unigram
        frequencies, so what the ID vectors must carry is what is specific to the document. Only
        the rows that are scored need projecting, which is where the reconstructor spends its time.
        """
        return z @ output_embeddings.T + self.output_bias

    def logits(self, id_vectors: torch.Tensor, token_embeddings: torch.Tensor, attention_mask: torch.Tensor,
               hint_mask: torch.Tensor, output_embeddings: torch.Tensor,
               query_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Token logits (B, R, V) (forward, then project)."""
        z = self.forward(id_vectors, token_embeddings, attention_mask, hint_mask, query_positions)
        return self.project(z, output_embeddings)
