"""SASRec-style ID transformer trained with full-softmax cross-entropy (Kang & McAuley 2018,
with the CE loss over all items of "SASRec+" / gSASRec-style reproductions instead of sampled BCE).

Model: item embeddings (tied between input and output; index 0 is padding) scaled by sqrt(d),
plus learned position embeddings, dropout, `num_blocks` pre-LayerNorm causal self-attention
blocks (position-wise feed-forward of width `ffn_multiplier * d`, GELU), a final LayerNorm. The
score of item j after position t is h_t . e_j.

Training: each user's training interactions (all items but the last two), the last
`max_len + 1` of them; the model reads items 1..m-1 and predicts the next item at every
position (left-padded batches; padded positions are dropped before the output layer, so the
(positions x items) logits matrix holds real positions only). Loss: cross-entropy over all
items. The project's training loop (training.loop) runs it: AdamW at a constant learning rate,
batches of similar lengths seeded by (seed, epoch), validation NDCG@10 after every epoch;
training stops after `patience` epochs without improvement, `max_epochs`, or `time_budget_s`,
and the best epoch's weights are kept (and saved).

Evaluation: the validation history is the training interactions, the test history the same plus
the validation item (the standard protocol), both cut to the last `max_len` items; the whole
catalogue is ranked (history items not removed unless `exclude_history`). The rank of the
target is 1 + the number of items with a strictly higher score.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.baselines.recommendation import DEFAULT_KS, RecData, rank_metrics
from training.config import config_to_dict
from training.errors import ConfigError
from training.loop import LoopSettings, distributed_context, shard, train
from training.transformer import CausalBlock, init_weights

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SASRecSettings:
    """Settings of the SASRec baseline."""

    hidden_size: int = field(default=64, metadata={"help": "Embedding and hidden width d."})
    num_blocks: int = field(default=2, metadata={"help": "Self-attention blocks."})
    num_heads: int = field(default=2, metadata={"help": "Attention heads (must divide hidden_size)."})
    ffn_multiplier: int = field(default=4, metadata={"help": "Feed-forward width = ffn_multiplier * d."})
    max_len: int = field(default=50, metadata={"help": "Items of history the model reads."})
    dropout: float = field(default=0.5, metadata={"help": "Dropout on embeddings, attention and blocks."})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (constant)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    batch_size: int = field(default=128, metadata={"help": "Users per training batch."})
    max_epochs: int = field(default=200, metadata={"help": "Upper bound on training epochs."})
    patience: int = field(
        default=20, metadata={"help": "Stop after this many epochs without a better validation NDCG@10."}
    )
    time_budget_s: float = field(
        default=600.0, metadata={"help": "Stop training after this many seconds (0 = no limit)."}
    )
    eval_batch_size: int = field(default=1024, metadata={"help": "Users per evaluation batch."})
    exclude_history: bool = field(
        default=False, metadata={"help": "Remove history items from the ranking (P5/TIGER protocol: false)."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of initialisation, shuffling and dropout."})
    num_threads: int = field(
        default=1,
        metadata={"help": "torch CPU threads while training (0 = leave torch's setting). 1 by default: on "
                          "shared, oversubscribed CPUs extra OpenMP threads wait on each other (10x slower)."},
    )
    device: str = field(default="cpu", metadata={"help": "'cpu', 'cuda' or 'auto' (CUDA when present)."})
    progress: bool = field(default=True, metadata={"help": "Show tqdm progress bars."})

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"num_heads {self.num_heads} must divide hidden_size {self.hidden_size}")
        for name in ("hidden_size", "num_blocks", "num_heads", "ffn_multiplier", "max_len", "batch_size",
                     "max_epochs", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


class SASRec(nn.Module):
    """Causal transformer over item-id sequences; item 0 is padding."""

    def __init__(self, num_items: int, settings: SASRecSettings) -> None:
        super().__init__()
        d = settings.hidden_size
        self.num_items = num_items
        self.max_len = settings.max_len
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(settings.max_len, d)
        self.drop = nn.Dropout(settings.dropout)
        self.blocks = nn.ModuleList(
            CausalBlock(d, settings.num_heads, settings.ffn_multiplier * d, settings.dropout)
            for _ in range(settings.num_blocks)
        )
        self.ln = nn.LayerNorm(d)
        self.apply(init_weights)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items: (B, L) left-padded item indices, L <= max_len -> hidden states (B, L, d)."""
        length = items.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequences of {length} items; the model reads at most {self.max_len}")
        pad = items == 0  # (B, L)
        # Positions count from the right end (the last item is always max_len - 1), so a batch cut
        # to its longest history gives the same result as one padded to max_len.
        positions = torch.arange(self.max_len - length, self.max_len, device=items.device)
        x = self.item_emb(items) * math.sqrt(self.item_emb.embedding_dim) + self.pos_emb(positions)
        x = self.drop(x) * (~pad).unsqueeze(-1)
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
        # Keys that are padding are hidden; every query still sees itself, so no row is fully
        # masked (a fully masked softmax row would give NaN at padded positions).
        mask = causal & (~pad[:, None, :] | torch.eye(length, dtype=torch.bool, device=items.device))
        mask = mask.unsqueeze(1)  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln(x)

    def item_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (P, d) -> scores over items 1..N: (P, N); column j is item j + 1."""
        return hidden @ self.item_emb.weight[1:].T


def left_pad(sequences: Sequence[np.ndarray], length: int) -> np.ndarray:
    """Keep the last `length` items of each sequence, left-padded with 0: shape (len(sequences), length)."""
    out = np.zeros((len(sequences), length), dtype=np.int64)
    for row, seq in enumerate(sequences):
        tail = seq[-length:]
        if len(tail):
            out[row, length - len(tail):] = tail
    return out


def training_arrays(train_sequences: Sequence[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-item targets at every position: two (U', max_len) arrays, 0 = padding.

    Users with a single training interaction have nothing to predict and are left out.
    """
    usable = [s[-(max_len + 1):] for s in train_sequences if len(s) >= 2]
    return left_pad([s[:-1] for s in usable], max_len), left_pad([s[1:] for s in usable], max_len)


def _trim(rows: np.ndarray) -> np.ndarray:
    """Drop the all-padding columns at the left of a left-padded batch (at least one column kept)."""
    width = max(int((rows > 0).sum(1).max()), 1)
    return rows[:, -width:]


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of row indices, rows of similar length together.

    Rows are shuffled, cut into pools of 50 batches, sorted by length inside a pool and batched;
    the batch order is shuffled again. Batches are then cut to their longest row, which saves
    most of the work on padding (Beauty: mean 5.7 real items of 50).
    """
    order = rng.permutation(len(lengths))
    pool = 50 * batch_size
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start:start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


@torch.no_grad()
def sasrec_ranks(
    model: SASRec,
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    batch_size: int = 1024,
    exclude_history: bool = False,
    device: str = "cpu",
) -> np.ndarray:
    """1-based rank of each target among all items: shape (num_users,).

    The model reads the last `max_len` items of each history; `exclude_history` removes those
    items (never the target) from the ranking.
    """
    model.eval()
    inputs = left_pad(histories, model.max_len)
    ranks = np.empty(len(targets), dtype=np.int64)
    for start in range(0, len(targets), batch_size):
        rows = inputs[start:start + batch_size]
        batch = torch.from_numpy(_trim(rows)).to(device)  # (B, longest history in the batch)
        target = torch.from_numpy(targets[start:start + batch_size]).to(device)
        scores = model.item_scores(model(batch)[:, -1])  # (B, N)
        if exclude_history:
            seen = batch.clone()
            seen[seen == target[:, None]] = 0  # never remove the target itself
            scores = torch.cat([torch.zeros_like(scores[:, :1]), scores], dim=1)  # (B, N + 1)
            scores.scatter_(1, seen, float("-inf"))
            scores = scores[:, 1:]
        target_score = scores.gather(1, (target - 1)[:, None])  # (B, 1)
        ranks[start:start + len(target)] = ((scores > target_score).sum(1) + 1).cpu().numpy()
    return ranks


def train_sasrec(
    data: RecData,
    settings: SASRecSettings | None = None,
    out_dir: Path | None = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, Any]:
    """Train on the training interactions, early-stop on validation NDCG@10, score the best epoch.

    The best epoch's weights go to `out_dir/sasrec-best.pt` (with the settings and the item ids)
    when `out_dir` is given. Returns the metrics, the per-epoch history and the timings.
    """
    settings = settings or SASRecSettings()
    threads_before = torch.get_num_threads()
    if settings.num_threads > 0:
        torch.set_num_threads(settings.num_threads)
    try:
        return _train(data, settings, out_dir, ks)
    finally:
        torch.set_num_threads(threads_before)  # a process-wide setting: leave it as found


def _train(data: RecData, settings: SASRecSettings, out_dir: Path | None, ks: Sequence[int]) -> dict[str, Any]:
    torch.manual_seed(settings.seed)
    device = distributed_context(settings.device).device

    inputs, targets = training_arrays(data.train_sequences, settings.max_len)
    lengths = (inputs > 0).sum(1)  # (U',) real items per training sequence
    model = SASRec(data.num_items, settings).to(device)
    num_params = sum(p.numel() for p in model.parameters())
    logger.info("SASRec: %d parameters, %d training sequences, %d target positions",
                num_params, len(inputs), int((targets > 0).sum()))

    def evaluate(histories: Sequence[np.ndarray], gold: np.ndarray) -> dict[str, float]:
        ranks = sasrec_ranks(model, histories, gold, settings.eval_batch_size,
                             settings.exclude_history, str(device))
        return rank_metrics(ranks, ks)

    def batches(epoch: int, rank: int, world_size: int) -> list[np.ndarray]:
        rng = np.random.default_rng([settings.seed, epoch])
        return shard(length_bucketed_batches(lengths, settings.batch_size, rng), rank, world_size)

    def loss_fn(model: nn.Module, rows: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        width = int(lengths[rows].max())
        x = torch.from_numpy(inputs[rows, -width:]).to(device)  # (B, width)
        y = torch.from_numpy(targets[rows, -width:]).to(device)  # (B, width)
        real = y > 0
        hidden = model(x)[real]  # (P, d): real positions only
        return F.cross_entropy(model.item_scores(hidden), y[real] - 1), {}  # logits (P, N)

    loop = LoopSettings(
        epochs=settings.max_epochs, lr=settings.lr, weight_decay=settings.weight_decay, schedule="constant",
        grad_clip=0.0, seed=settings.seed, amp=False, device=settings.device,
        metric="ndcg@10" if 10 in ks else "", higher_is_better=True, patience=settings.patience,
        time_budget_s=settings.time_budget_s, progress=settings.progress)
    cpu_started = time.process_time()  # CPU seconds of this process: comparable across loaded machines
    result = train(model, loop, batches, loss_fn,
                   evaluate=lambda model: evaluate(data.valid_histories, data.valid_targets), name="sasrec")
    training_cpu_time = time.process_time() - cpu_started
    # the model now holds the weights of the best validation epoch
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": model.state_dict(), "settings": config_to_dict(settings),
                    "epoch": result.best_epoch, "item_ids": list(data.item_ids)}, Path(out_dir) / "sasrec-best.pt")
    metrics = {
        "valid": evaluate(data.valid_histories, data.valid_targets),
        "test": evaluate(data.test_histories, data.test_targets),
    }
    return {
        "metrics": metrics,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stop_reason": "max_epochs" if result.stop_reason == "epochs" else result.stop_reason,
        "training_time_s": round(result.seconds, 2),
        "training_cpu_time_s": round(training_cpu_time, 2),
        "seconds_per_epoch": round(result.seconds / len(result.history), 2),
        "num_parameters": num_params,
        "epochs": result.history,
        "checkpoint": str(Path(out_dir) / "sasrec-best.pt") if out_dir is not None else None,
    }
