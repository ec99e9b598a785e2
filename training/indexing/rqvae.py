"""The rq-VAE indexer (the baseline the official code never released), on encoder embeddings.

Model (TIGER-style residual-quantised autoencoder): an MLP encoder maps a document embedding x
(d) to a latent z (D); L codebooks E^l (K x D) quantise z residually,

    r_0 = z,   c_l = argmin_j ||r_l - e^l_j||^2,   r_{l+1} = r_l - e^l_{c_l},   z_q = sum_l e^l_{c_l}

and an MLP decoder reconstructs x from z_q. Gradients reach the encoder through the
straight-through estimator (z + (z_q - z).detach()). Loss (per document, summed over dimensions):

    ||x - dec(z_q)||^2 + sum_l ( ||sg(r_l) - e^l||^2 + beta ||r_l - sg(e^l)||^2 )

Training schedule: `warmup_epochs` of a plain autoencoder (z fed to the decoder unquantised) so
the latent space has structure; then each level's codebook is initialised by k-means on the
residuals of all documents, level after level; then full training with AdamW (linear warm-up,
cosine decay, gradient clipping); both phases run by training.loop. Every `restart_every` epochs,
codes no document uses are restarted at the residuals of random documents (dead-code restarts),
up to `restart_until` x epochs so the final codes settle. Deterministic on CPU for a fixed seed
and thread count.

Checkpoint: `model.safetensors` (the module's state dict) and `config.json` (settings, dims).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits
from torch import nn

from training.config import config_to_dict
from training.data.corpus import Document
from training.errors import ConfigError
from training.indexing.embedding_cache import EmbeddingSettings
from training.indexing.learning import LearnedCodes
from training.loop import LoopSettings, distributed_context, shard, train

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RQVAEConfig(EmbeddingSettings):
    """Settings of the rq-VAE indexer."""

    num_levels: int = field(default=3, metadata={"help": "Residual levels L (learned ID levels)."})
    codebook_size: int = field(default=256, metadata={"help": "Codes per level K."})
    hidden_dims: tuple[int, ...] = field(default=(512, 256, 128), metadata={"help": "Encoder MLP widths."})
    latent_dim: int = field(default=32, metadata={"help": "Latent (codebook) dimension D."})
    epochs: int = field(default=300, metadata={"help": "Epochs with quantisation."})
    warmup_epochs: int = field(default=20, metadata={"help": "Plain autoencoder epochs before k-means init."})
    batch_size: int = field(default=1024, metadata={"help": "Documents per step."})
    lr: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay."})
    lr_warmup_ratio: float = field(default=0.05, metadata={"help": "Fraction of steps of linear LR warm-up."})
    grad_clip: float = field(default=1.0, metadata={"help": "Gradient norm clip (0 = off)."})
    beta: float = field(default=0.25, metadata={"help": "Commitment loss weight."})
    kmeans_init: bool = field(
        default=True, metadata={"help": "Initialise codebooks by k-means on residuals."}
    )
    kmeans_n_init: int = field(default=1, metadata={"help": "k-means restarts for the codebook init."})
    kmeans_max_iter: int = field(default=100, metadata={"help": "k-means iterations for the codebook init."})
    restart_every: int = field(
        default=5, metadata={"help": "Dead-code restart period in epochs (0 = never)."}
    )
    restart_until: float = field(default=0.8, metadata={"help": "No restarts after this fraction of epochs."})
    seed: int = field(default=42, metadata={"help": "Seed of initialisation, shuffling and k-means."})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (the MLP is tiny: 1 is fastest)."})
    device: str = field(default="auto", metadata={"help": "'auto' (cuda when present), 'cpu' or 'cuda'."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self) -> None:
        if self.num_levels < 1 or self.codebook_size < 2 or self.latent_dim < 1:
            raise ConfigError("num_levels >= 1, codebook_size >= 2 and latent_dim >= 1 are required")
        if self.epochs < 1 or self.warmup_epochs < 0 or self.batch_size < 1:
            raise ConfigError("epochs >= 1, warmup_epochs >= 0 and batch_size >= 1 are required")
        if not 0 <= self.restart_until <= 1 or not 0 <= self.lr_warmup_ratio < 1:
            raise ConfigError("restart_until must be in [0, 1] and lr_warmup_ratio in [0, 1)")


def _mlp(dims: list[int]) -> nn.Sequential:
    """Linear layers with SiLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """Encoder MLP -> residual quantiser (L x K x D codebooks) -> decoder MLP."""

    def __init__(
        self,
        input_dim: int,
        hidden_dims: tuple[int, ...],
        latent_dim: int,
        num_levels: int,
        codebook_size: int,
    ) -> None:
        super().__init__()
        self.encoder = _mlp([input_dim, *hidden_dims, latent_dim])
        self.decoder = _mlp([latent_dim, *reversed(hidden_dims), input_dim])
        # (L, K, D); small random init, replaced by k-means in normal use.
        self.codebooks = nn.Parameter(torch.randn(num_levels, codebook_size, latent_dim) * 0.1)

    @property
    def num_levels(self) -> int:
        return self.codebooks.shape[0]

    @staticmethod
    def nearest(residual: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """(B,) index of the nearest codeword: residual (B, D), codebook (K, D)."""
        distances = (
            residual.pow(2).sum(-1, keepdim=True)
            - 2 * residual @ codebook.T
            + codebook.pow(2).sum(-1)[None, :]
        )  # (B, K)
        return distances.argmin(dim=-1)

    def quantize(
        self, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Residual quantisation of z (B, D).

        Returns z_q (B, D) with straight-through gradients to z, codes (B, L), the codebook +
        commitment loss (scalar, before beta weighting is applied inside), and the residuals r_l.
        """
        residual = z
        quantized = torch.zeros_like(z)
        codes = []
        residuals = []
        codebook_loss = z.new_zeros(())
        commitment_loss = z.new_zeros(())
        for level in range(self.num_levels):
            codebook = self.codebooks[level]  # (K, D)
            index = self.nearest(residual.detach(), codebook.detach())  # (B,)
            codeword = codebook[index]  # (B, D), differentiable w.r.t. the codebook
            codebook_loss = codebook_loss + (codeword - residual.detach()).pow(2).sum(-1).mean()
            commitment_loss = commitment_loss + (residual - codeword.detach()).pow(2).sum(-1).mean()
            residuals.append(residual)
            codes.append(index)
            quantized = quantized + codeword.detach()
            residual = residual - codeword.detach()
        z_q = z + (quantized - z).detach()  # forward: quantised; backward: identity to z
        return z_q, torch.stack(codes, dim=1), torch.stack([codebook_loss, commitment_loss]), residuals

    def forward(self, x: torch.Tensor, beta: float = 0.25, quantize: bool = True) -> dict[str, torch.Tensor]:
        """x (B, d) -> reconstruction (B, d), codes (B, L) and the losses."""
        z = self.encoder(x)  # (B, D)
        if quantize:
            z_q, codes, vq_losses, _ = self.quantize(z)
        else:
            z_q, codes, vq_losses = z, torch.zeros(len(x), self.num_levels, dtype=torch.long), z.new_zeros(2)
        x_hat = self.decoder(z_q)  # (B, d)
        recon = (x_hat - x).pow(2).sum(-1).mean()
        loss = recon + vq_losses[0] + beta * vq_losses[1]
        return {
            "loss": loss,
            "recon": recon,
            "codebook": vq_losses[0],
            "commitment": vq_losses[1],
            "x_hat": x_hat,
            "codes": codes,
        }

    @torch.no_grad()
    def encode_codes(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """(N, L) codes of x (N, d), in eval mode."""
        out = []
        for start in range(0, len(x), batch_size):
            _, codes, _, _ = self.quantize(self.encoder(x[start : start + batch_size]))
            out.append(codes)
        return torch.cat(out)

    @torch.no_grad()
    def residuals_at(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """(N, D) residuals entering `level` for all of x (N, d)."""
        residual = self.encoder(x)
        for lv in range(level):
            residual = residual - self.codebooks[lv][self.nearest(residual, self.codebooks[lv])]
        return residual


def _kmeans_centroids(points: np.ndarray, k: int, seed: int, n_init: int, max_iter: int) -> np.ndarray:
    """(k, D) k-means centroids; with fewer distinct points than k the rest are jittered copies."""
    rng = np.random.default_rng(seed)
    n_clusters = min(k, len(np.unique(points.round(6), axis=0)))
    centers = (
        KMeans(n_clusters=n_clusters, n_init=n_init, max_iter=max_iter, random_state=seed)
        .fit(points)
        .cluster_centers_
    )
    if n_clusters < k:
        extra = points[rng.integers(0, len(points), k - n_clusters)]
        centers = np.concatenate([centers, extra + 1e-3 * rng.standard_normal(extra.shape)])
    return centers.astype(np.float32)


@torch.no_grad()
def kmeans_init_codebooks(model: RQVAE, x: torch.Tensor, config: RQVAEConfig) -> None:
    """Set each level's codebook to k-means centroids of the residuals left by the levels above."""
    for level in range(model.num_levels):
        residual = model.residuals_at(x, level).cpu().numpy()  # (N, D)
        with threadpool_limits(limits=config.threads):
            centers = _kmeans_centroids(
                residual,
                config.codebook_size,
                config.seed + level,
                config.kmeans_n_init,
                config.kmeans_max_iter,
            )
        model.codebooks[level].copy_(torch.from_numpy(centers).to(model.codebooks.device))


@torch.no_grad()
def restart_dead_codes(model: RQVAE, x: torch.Tensor, generator: torch.Generator) -> list[int]:
    """Move codes that no document uses onto residuals of random documents; returns restarts per level."""
    restarted = []
    for level in range(model.num_levels):
        residual = model.residuals_at(x, level)  # (N, D)
        used = torch.bincount(
            model.nearest(residual, model.codebooks[level]), minlength=model.codebooks.shape[1]
        )
        dead = torch.nonzero(used == 0).flatten()
        if len(dead):
            picks = torch.randint(0, len(x), (len(dead),), generator=generator).to(x.device)
            noise = 1e-3 * torch.randn(len(dead), residual.shape[1], generator=generator).to(x.device)
            model.codebooks[level, dead] = residual[picks] + noise
        restarted.append(len(dead))
    return restarted


def train_rqvae(embeddings: np.ndarray, config: RQVAEConfig) -> tuple[RQVAE, dict[str, Any]]:
    """Train an rq-VAE on embeddings (N, d) with training.loop; returns the model (eval mode) and a log.

    Two runs of the loop, each with a fresh AdamW (linear warm-up over `lr_warmup_ratio` of its
    steps, cosine decay to 0.05 x lr): the autoencoder phase, then, after the k-means
    initialisation, the quantised phase with dead-code restarts at the end of every
    `restart_every`-th epoch. The data order and the restarts are seeded by (seed, phase, epoch).
    """
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    device = distributed_context(config.device).device
    x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)).to(device)  # (N, d)
    model = RQVAE(
        x.shape[1], config.hidden_dims, config.latent_dim, config.num_levels, config.codebook_size
    ).to(device)
    history: list[dict[str, Any]] = []

    def run_phase(epochs: int, quantize: bool, phase: str) -> None:
        phase_seed = 1 if quantize else 0

        def batches(epoch: int, rank: int, world_size: int) -> list[torch.Tensor]:
            order = np.random.default_rng([config.seed, phase_seed, epoch]).permutation(len(x))
            rows = [torch.from_numpy(order[start : start + config.batch_size]).to(device)
                    for start in range(0, len(x), config.batch_size)]
            return shard(rows, rank, world_size)

        def loss_fn(model: nn.Module, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            out = model(x[rows], beta=config.beta, quantize=quantize)  # x[rows]: (B, d)
            return out["loss"], {key: float(out[key].detach()) for key in ("recon", "codebook", "commitment")}

        def on_epoch_end(epoch: int) -> dict[str, Any]:
            figures: dict[str, Any] = {"phase": phase}
            if (quantize and config.restart_every and (epoch + 1) % config.restart_every == 0
                    and epoch + 1 <= config.restart_until * epochs):
                generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
                figures["restarts"] = restart_dead_codes(model, x, generator)
            return figures

        steps = epochs * len(batches(0, 0, 1))
        settings = LoopSettings(
            epochs=epochs, lr=config.lr, weight_decay=config.weight_decay, schedule="cosine",
            warmup_steps=max(1, int(config.lr_warmup_ratio * steps)), min_lr_ratio=0.05,
            grad_clip=config.grad_clip, seed=config.seed, amp=False, device=config.device,
            progress=config.progress)
        result = train(model, settings, batches, loss_fn, on_epoch_end=on_epoch_end, no_decay=("codebooks",),
                       name=f"rq-VAE {phase}")
        history.extend(result.history)

    if config.warmup_epochs:
        run_phase(config.warmup_epochs, quantize=False, phase="autoencoder")
    if config.kmeans_init:
        model.eval()
        kmeans_init_codebooks(model, x, config)
    run_phase(config.epochs, quantize=True, phase="rq")
    model.eval()
    return model, {"history": history}


def learn_rqvae_codes(documents: list[Document], config: RQVAEConfig, out_dir: Path) -> LearnedCodes:
    """Embed the documents, train the rq-VAE, write its checkpoint and return its codes (N, L)."""
    started = time.perf_counter()
    embeddings = config.embed([d.text for d in documents])
    embed_seconds = time.perf_counter() - started
    started = time.perf_counter()
    model, log = train_rqvae(embeddings, config)
    train_seconds = time.perf_counter() - started
    x = torch.from_numpy(embeddings).to(model.codebooks.device)
    with torch.no_grad():
        codes = model.encode_codes(x)
        out = model(x, beta=config.beta)
        # Relative reconstruction error of the embeddings and the share of z explained per level.
        rel_error = float((out["x_hat"] - x).norm(dim=-1).mean() / x.norm(dim=-1).mean())
        z = model.encoder(x)
        residual_norms = [
            float(model.residuals_at(x, lv).norm(dim=-1).mean()) for lv in range(config.num_levels)
        ]
        final_residual = float(
            (z - sum(model.codebooks[lv][codes[:, lv]] for lv in range(config.num_levels)))
            .norm(dim=-1)
            .mean()
        )
    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"))
    with open(out_dir / "config.json", "w", encoding="utf-8") as handle:
        json.dump(
            {
                "method": "rqvae",
                "settings": config_to_dict(config),
                "input_dim": int(embeddings.shape[1]),
                "codebook_sizes": [config.codebook_size] * config.num_levels,
            },
            handle,
            indent=2,
        )
    last = log["history"][-1]
    diagnostics = {
        "final_loss": {k: last[k] for k in ("loss", "recon", "codebook", "commitment")},
        "relative_reconstruction_error": rel_error,
        "residual_norm_per_level": [*residual_norms, final_residual],
        "history": log["history"],
        "wall_seconds": {"embed": round(embed_seconds, 3), "train": round(train_seconds, 3)},
    }
    logger.info("rq-VAE: loss %.4f, relative reconstruction error %.3f", last["loss"], rel_error)
    return LearnedCodes(
        codes=codes.cpu().numpy(),
        codebook_sizes=(config.codebook_size,) * config.num_levels,
        diagnostics=diagnostics,
        files={"checkpoint": "model.safetensors", "config": "config.json"},
    )
