"""The item-token recommender: item tokens, a causal Transformer, an ID decoder and a dense head.

Shapes (B users, W history positions, D text width, d = d_model, L learned levels):

- item token (`item_tokens`): ``W_text v + sum_l E_l[c_l] (+ E_item[i])`` for the item's text
  vector v (D,) and semantic ID c (L + 1,) (the counter's embedding only with `counter_in_token`);
  with `item_id_embedding`, plus a learned embedding of the item itself for items seen in training
  (row 0 = none: padding, cold and later items), left out of a training token with probability
  `item_id_dropout`; position is added by the sequence model. The same token is the item's output
  embedding for the dense head (tied, as SASRec ties its item embeddings), so an item added after
  training scores and reads like any other: it has a text vector and an ID (and no item embedding,
  which item_id_dropout trains the model to do without).
- sequence model (`encode`): tokens (B, W, d) and padding (B, W) -> hidden (B, W, d); pre-LN
  causal blocks; positions count from the right (the most recent item is always position
  max_history - 1), so a batch cut to its longest history equals one padded to max_history.
- ID decoder (`decoder_logits` for teacher forcing, `decoder_step` for beam search): hidden (n, d)
  and the codes chosen so far (n, l) -> logits over level l's K_l codes (the counter at l = L).
- dense head (`dense_query`): hidden (..., d) -> query (..., d); score of item j = query . token_j /
  dense_temperature.

The three entry points `encode`, `decoder_step` and `dense_query` (plus `item_tokens` for items
added later) take and return plain tensors so each can be exported as its own ONNX graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from training.recommendation.settings import RecommenderSettings
from training.transformer import CausalBlock, init_weights


class IdDecoder(nn.Module):
    """The next item's semantic ID, level by level, from the sequence model's hidden state.

    'transformer': the sequence [hidden, e_0(c_0), ..., e_{L-1}(c_{L-1})] plus a level embedding
    runs through causal blocks; the state at position l predicts level l. 'mlp': level l reads
    hidden + e_0(c_0) + ... + e_{l-1}(c_{l-1}) + the level embedding through a two-layer MLP.
    Level l's logits are a linear map to its K_l codes (the counter's C at l = L).
    """

    def __init__(self, d: int, codebook_sizes: Sequence[int], settings: RecommenderSettings) -> None:
        super().__init__()
        self.kind = settings.decoder
        self.num_levels = len(codebook_sizes) - 1
        self.code_embeddings = nn.ModuleList(nn.Embedding(k, d) for k in codebook_sizes[:-1])
        self.level = nn.Embedding(len(codebook_sizes), d)
        if self.kind == "transformer":
            self.blocks = nn.ModuleList(
                CausalBlock(d, settings.num_heads, settings.ffn_multiplier * d, settings.dropout)
                for _ in range(settings.decoder_layers))
        else:
            self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, settings.ffn_multiplier * d), nn.GELU(),
                                     nn.Dropout(settings.dropout), nn.Linear(settings.ffn_multiplier * d, d))
        self.norm = nn.LayerNorm(d)
        self.heads = nn.ModuleList(nn.Linear(d, k) for k in codebook_sizes)

    def states(self, hidden: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """hidden (n, d), codes (n, t) with t <= L -> the states that predict levels 0..t: (n, t + 1, d)."""
        t = codes.shape[1]
        inputs = [hidden] + [self.code_embeddings[j](codes[:, j]) for j in range(t)]
        if self.kind == "transformer":
            x = torch.stack(inputs, dim=1) + self.level.weight[: t + 1]  # (n, t + 1, d)
            mask = torch.ones(t + 1, t + 1, dtype=torch.bool, device=hidden.device).tril()[None, None]
            for block in self.blocks:
                x = block(x, mask)
        else:
            x = torch.cumsum(torch.stack(inputs, dim=1), dim=1) + self.level.weight[: t + 1]  # (n, t + 1, d)
            x = x + self.mlp(x)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor, codes: torch.Tensor) -> list[torch.Tensor]:
        """Teacher forcing: hidden (n, d), target IDs (n, L + 1) -> L + 1 logits (n, K_l)."""
        states = self.states(hidden, codes[:, : self.num_levels])  # (n, L + 1, d)
        return [head(states[:, level]) for level, head in enumerate(self.heads)]

    def step(self, hidden: torch.Tensor, prefix: torch.Tensor, level: int) -> torch.Tensor:
        """hidden (n, d), prefix (n, level) -> log-probabilities over level's codes (n, K_level)."""
        states = self.states(hidden, prefix[:, :level])
        return self.heads[level](states[:, level]).log_softmax(dim=-1)


class Recommender(nn.Module):
    """Item tokens -> causal Transformer -> ID decoder and dense head (module docstring)."""

    def __init__(self, text_dim: int, codebook_sizes: Sequence[int], settings: RecommenderSettings,
                 num_items: int = 0) -> None:
        """num_items: catalogue size N, the rows of the item ID embedding (N + 1 with row 0 = none); used only
        with `settings.item_id_embedding`. Raises ValueError when that setting is on and num_items < 1."""
        super().__init__()
        d = settings.d_model
        self.settings = settings
        self.codebook_sizes = tuple(int(k) for k in codebook_sizes)
        self.num_levels = len(self.codebook_sizes) - 1
        self.max_history = settings.max_history
        self.text_projection = nn.Linear(text_dim, d)
        token_levels = self.codebook_sizes if settings.counter_in_token else self.codebook_sizes[:-1]
        self.code_embeddings = nn.ModuleList(nn.Embedding(k, d) for k in token_levels)
        self.item_embedding: nn.Embedding | None = None
        if settings.item_id_embedding:
            if num_items < 1:
                raise ValueError("item_id_embedding needs the catalogue size (num_items >= 1)")
            self.item_embedding = nn.Embedding(num_items + 1, d, padding_idx=0)
        self.position = nn.Embedding(settings.max_history, d)
        self.token_dropout = nn.Dropout(settings.dropout)
        self.blocks = nn.ModuleList(
            CausalBlock(d, settings.num_heads, settings.ffn_multiplier * d, settings.dropout)
            for _ in range(settings.num_layers))
        self.final_norm = nn.LayerNorm(d)
        self.id_decoder = IdDecoder(d, self.codebook_sizes, settings)
        self.query_projection = nn.Linear(d, d)
        self.apply(init_weights)  # zeroes the item ID embedding's row 0 (its padding_idx: "no embedding")

    @torch.no_grad()
    def init_code_embeddings(self, codebooks: torch.Tensor) -> None:
        """Start each learned level's token embeddings at its codebook projected like a text vector:
        codebooks (L, K, D) in the text vectors' space -> E_l = codebook_l W_text^T (the projection's
        bias is left out: it is added once per token by the text vector's term)."""
        for level in range(min(self.num_levels, codebooks.shape[0])):
            k = self.code_embeddings[level].weight.shape[0]
            self.code_embeddings[level].weight.copy_(codebooks[level, :k] @ self.text_projection.weight.T)

    # --------------------------------------------------------------------------------- item tokens

    def item_tokens(self, vectors: torch.Tensor, codes: torch.Tensor, items: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """vectors (..., D) float, codes (..., L + 1) int64, items (...) int64 item ID embedding rows (0 = none;
        ignored without `item_id_embedding`) -> item tokens (..., d). In training mode each token leaves its
        item ID embedding out with probability `item_id_dropout`."""
        token = self.text_projection(vectors)
        for level, embedding in enumerate(self.code_embeddings):
            token = token + embedding(codes[..., level])
        if self.item_embedding is not None and items is not None:
            if self.training and self.settings.item_id_dropout > 0:
                keep = torch.rand(items.shape, device=items.device) >= self.settings.item_id_dropout
                items = items * keep
            token = token + self.item_embedding(items)
        return token

    def item_id_offsets(self) -> torch.Tensor:
        """The item ID embeddings moved into the text vectors' space: (N + 1, D) with W_text o_i = E_item[i]
        (minimum-norm solution by the pseudo-inverse; exact while W_text (d, D) has rank d <= D, which a trained
        projection has). Adding o_i to item i's text vector gives the token with its embedding, so the exported
        graphs, which read text vectors, need no item input. Raises ValueError without `item_id_embedding`."""
        if self.item_embedding is None:
            raise ValueError("the model has no item ID embedding")
        weight = self.text_projection.weight.double()  # (d, D)
        if weight.shape[0] > weight.shape[1]:
            raise ValueError(f"text vectors of {weight.shape[1]} dimensions cannot carry item ID embeddings of "
                             f"{weight.shape[0]}: d_model must be <= the text vectors' width")
        return (self.item_embedding.weight.double() @ torch.linalg.pinv(weight).T).float()  # (N + 1, D)

    # ------------------------------------------------------------------------------ sequence model

    def encode(self, tokens: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """tokens (B, W, d) with W <= max_history, padding (B, W) bool (True = no item) -> hidden (B, W, d).

        Padded positions' outputs are meaningless; every position attends to itself and the real
        items before it.
        """
        width = tokens.shape[1]
        if width > self.max_history:
            raise ValueError(f"{width} history items; the model reads at most {self.max_history}")
        positions = torch.arange(self.max_history - width, self.max_history, device=tokens.device)
        x = self.token_dropout(tokens + self.position(positions)) * (~padding).unsqueeze(-1)
        # float eye, then bool: onnxruntime has no EyeLike for bool (the exported sequence model)
        eye = torch.eye(width, device=tokens.device).bool()
        causal = torch.ones(width, width, dtype=torch.bool, device=tokens.device).tril()
        # Padding keys are hidden; a query always sees itself, so no softmax row is empty (NaN).
        mask = (causal & (~padding[:, None, :] | eye)).unsqueeze(1)  # (B, 1, W, W)
        for block in self.blocks:
            x = block(x, mask)
        return self.final_norm(x)

    # ----------------------------------------------------------------------------------- the heads

    def decoder_logits(self, hidden: torch.Tensor, codes: torch.Tensor) -> list[torch.Tensor]:
        """Teacher forcing: hidden (n, d), the target items' IDs (n, L + 1) -> L + 1 logits (n, K_l)."""
        return self.id_decoder.logits(hidden, codes)

    def decoder_step(self, hidden: torch.Tensor, prefix: torch.Tensor, level: int) -> torch.Tensor:
        """hidden (n, d), the codes chosen so far (n, >= level) -> log-probs over level's codes (n, K_level)."""
        return self.id_decoder.step(hidden, prefix, level)

    def dense_query(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., d) -> the dense head's query (..., d), already divided by the temperature."""
        return self.query_projection(hidden) / self.settings.dense_temperature

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

