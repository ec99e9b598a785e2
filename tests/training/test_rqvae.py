"""The rq-VAE indexer: shapes, straight-through quantiser, k-means init, training, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.indexing.rqvae import RQVAE, RQVAEConfig, kmeans_init_codebooks, restart_dead_codes, train_rqvae


def clustered(n: int = 400, d: int = 24, clusters: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm points around `clusters` random centres, and their cluster ids."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    ids = rng.integers(0, clusters, n)
    x = centres[ids] + 0.15 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), ids


def small_config(**changes) -> RQVAEConfig:
    values = {"num_levels": 2, "codebook_size": 16, "hidden_dims": (32,), "latent_dim": 8, "warmup_epochs": 5,
              "epochs": 25, "batch_size": 64, "lr": 3e-3, "restart_every": 5, "progress": False, "seed": 7,
              "device": "cpu"}
    return RQVAEConfig(**{**values, **changes})


def test_forward_shapes():
    torch.manual_seed(0)
    model = RQVAE(24, (32, 16), 8, num_levels=3, codebook_size=10)
    out = model(torch.randn(5, 24))
    assert out["x_hat"].shape == (5, 24)
    assert out["codes"].shape == (5, 3) and out["codes"].dtype == torch.long
    assert int(out["codes"].max()) < 10
    assert out["loss"].shape == ()
    assert model.encode_codes(torch.randn(7, 24)).shape == (7, 3)


def test_quantizer_is_residual_nearest_codeword_with_straight_through_gradient():
    torch.manual_seed(0)
    model = RQVAE(4, (8,), 3, num_levels=2, codebook_size=5)
    z = torch.randn(6, 3, requires_grad=True)
    z_q, codes, _, residuals = model.quantize(z)
    books = model.codebooks.detach()
    # Level 0: nearest codeword to z; level 1: nearest to what level 0 left.
    assert torch.equal(codes[:, 0], torch.cdist(z.detach(), books[0]).argmin(1))
    r1 = z.detach() - books[0][codes[:, 0]]
    assert torch.allclose(residuals[1].detach(), r1)
    assert torch.equal(codes[:, 1], torch.cdist(r1, books[1]).argmin(1))
    # Forward value: the sum of the chosen codewords; backward: identity to z.
    assert torch.allclose(z_q, books[0][codes[:, 0]] + books[1][codes[:, 1]], atol=1e-6)
    weights = torch.randn(6, 3)
    (z_q * weights).sum().backward()
    assert torch.allclose(z.grad, weights)


def test_vq_losses_by_hand():
    model = RQVAE(2, (4,), 2, num_levels=1, codebook_size=2)
    with torch.no_grad():
        model.codebooks.copy_(torch.tensor([[[0.0, 0.0], [1.0, 1.0]]]))
    z = torch.tensor([[0.2, 0.1], [0.8, 1.4]])
    _, codes, losses, _ = model.quantize(z)
    assert codes[:, 0].tolist() == [0, 1]
    expected = ((0.2**2 + 0.1**2) + (0.2**2 + 0.4**2)) / 2  # mean squared distance to the chosen codeword
    assert losses[0].item() == pytest.approx(expected) and losses[1].item() == pytest.approx(expected)


def test_kmeans_init_separates_clusters_at_the_first_level():
    x, ids = clustered()
    model = RQVAE(24, (32,), 8, num_levels=2, codebook_size=8)
    config = small_config(codebook_size=8)
    kmeans_init_codebooks(model, torch.from_numpy(x), config)
    codes = model.encode_codes(torch.from_numpy(x))[:, 0].numpy()
    # Even through a random encoder, k-means in latent space puts each true cluster in one code.
    purity = sum(np.bincount(codes[ids == c]).max() for c in range(8)) / len(ids)
    assert purity > 0.9


def test_dead_codes_are_restarted_onto_residuals():
    x = torch.from_numpy(clustered()[0])
    model = RQVAE(24, (32,), 8, num_levels=1, codebook_size=6)
    with torch.no_grad():
        model.codebooks[0, 1:] = 1e3  # far away: unused
    restarted = restart_dead_codes(model, x, torch.Generator().manual_seed(0))
    assert restarted == [5]
    used = torch.unique(model.encode_codes(x)[:, 0])
    assert len(used) > 1


def test_training_lowers_the_loss_and_is_deterministic():
    x, _ = clustered()
    model, log = train_rqvae(x, small_config())
    rq = [h["loss"] for h in log["history"] if h["phase"] == "rq"]
    assert rq[-1] < rq[0]
    again, _ = train_rqvae(x, small_config())
    codes = model.encode_codes(torch.from_numpy(x))
    assert torch.equal(codes, again.encode_codes(torch.from_numpy(x)))
    assert len(torch.unique(codes[:, 0])) >= 8  # no collapse onto a few codes
