"""The training objective: loss at every position of every user's training sequence.

For the P real target positions of a batch, with h (P, d) the hidden states and t the next items:

    loss = id_loss_weight * mean_l CE(decoder logits_l, c_l(t))          (l = 0..L, the counter last)
         + dense_loss_weight * CE(dense_query(h) . tokens^T, t)          (softmax over warm items)

The ID loss is the teacher-forced cross-entropy per level over that level's K_l codes (label
smoothing optional); the dense loss is a softmax over the catalogue's warm item tokens: the full
catalogue (`dense_negatives = 0`) or the positive and a uniform sample of warm items.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from training.recommendation.items import ItemCatalogue
from training.recommendation.model import Recommender
from training.recommendation.settings import RecommenderSettings


class CatalogueTensors:
    """The catalogue as tensors indexed by item index (row 0 is padding, zeros).

    vectors (N + 1, D) float32; codes (N + 1, L + 1) int64; warm (N,) bool over rows 0..N-1;
    items (N + 1,) int64: each item's row of the item ID embedding, 0 (none) for padding and cold items.
    """

    def __init__(self, catalogue: ItemCatalogue, cold: np.ndarray | None = None, device: str = "cpu") -> None:
        n, dim = catalogue.vectors.shape
        vectors = np.zeros((n + 1, dim), dtype=np.float32)
        vectors[1:] = catalogue.vectors
        codes = np.zeros((n + 1, catalogue.semantic_ids.shape[1]), dtype=np.int64)
        codes[1:] = catalogue.semantic_ids
        self.vectors = torch.from_numpy(vectors).to(device)
        self.codes = torch.from_numpy(codes).to(device)
        warm = np.ones(n, dtype=bool) if cold is None else ~cold[1:]
        self.warm = torch.from_numpy(warm).to(device)
        items = np.arange(n + 1, dtype=np.int64)
        items[1:][~warm] = 0  # a cold item stands for one added after training: it has no item ID embedding
        self.items = torch.from_numpy(items).to(device)

    def tokens(self, model: Recommender) -> torch.Tensor:
        """Every item's token, padding row first: (N + 1, d)."""
        return model.item_tokens(self.vectors, self.codes, self.items)


def history_hidden(model: Recommender, tables: CatalogueTensors, items: torch.Tensor,
                   tokens: torch.Tensor | None = None) -> torch.Tensor:
    """items (B, W) left-padded item indices (0 = padding) -> hidden states (B, W, d)."""
    if tokens is None:
        tokens = tables.tokens(model)
    return model.encode(tokens[items], items == 0)


def make_loss_fn(tables: CatalogueTensors, settings: RecommenderSettings, generator: torch.Generator | None = None
                 ) -> Callable[[Recommender, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]:
    """The loss of a batch {"items": (B, W), "targets": (B, W)} (0 = padding): (loss, logs).

    With `dense_negatives` S > 0 the dense softmax runs over the positive and S warm items drawn
    uniformly per batch (shared by its positions; a drawn item equal to a position's target is
    masked for that position), and only the tokens of the items the batch touches are computed.
    Uniform draws need no log-Q correction: every item has the same inclusion probability.
    """
    warm_rows = torch.nonzero(tables.warm).squeeze(1) + 1  # (N_warm,) item indices

    def loss_fn(model: Recommender, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        items, targets = batch["items"], batch["targets"]
        real = targets > 0
        target = targets[real]  # (P,) item indices
        if settings.dense_negatives > 0:
            draw = torch.randint(len(warm_rows), (settings.dense_negatives,), generator=generator,
                                 device=warm_rows.device)
            negatives = warm_rows[draw]  # (S,)
            used, inverse = torch.unique(torch.cat([items.flatten(), target, negatives]), return_inverse=True)
            tokens = model.item_tokens(tables.vectors[used], tables.codes[used], tables.items[used])  # (U, d)
            local_items = inverse[: items.numel()].view_as(items)
            hidden = model.encode(tokens[local_items], items == 0)
            local_target = inverse[items.numel(): items.numel() + len(target)]
            local_negatives = inverse[items.numel() + len(target):]
        else:
            tokens = tables.tokens(model)  # (N + 1, d)
            hidden = history_hidden(model, tables, items, tokens)
        h = hidden[real]  # (P, d)
        logs: dict[str, float] = {"positions": float(len(target))}
        loss = hidden.new_zeros(())
        if settings.id_loss_weight > 0:
            logits = model.decoder_logits(h, tables.codes[target])
            per_level = [F.cross_entropy(lg, tables.codes[target, level], label_smoothing=settings.label_smoothing)
                         for level, lg in enumerate(logits)]
            id_loss = torch.stack(per_level).mean()
            loss = loss + settings.id_loss_weight * id_loss
            logs["id_loss"] = float(id_loss.detach())
        if settings.dense_loss_weight > 0:
            query = model.dense_query(h)  # (P, d)
            if settings.dense_negatives > 0:
                positive = (query * tokens[local_target]).sum(-1, keepdim=True)  # (P, 1)
                negative = query @ tokens[local_negatives].T  # (P, S)
                negative = negative.masked_fill(local_negatives[None, :] == local_target[:, None], float("-inf"))
                scores = torch.cat([positive, negative], dim=1)
                dense_loss = F.cross_entropy(scores, torch.zeros_like(target))
            else:
                scores = (query @ tokens[1:].T).masked_fill(~tables.warm, float("-inf"))  # (P, N)
                dense_loss = F.cross_entropy(scores, target - 1)
            loss = loss + settings.dense_loss_weight * dense_loss
            logs["dense_loss"] = float(dense_loss.detach())
        return loss, logs

    return loss_fn
