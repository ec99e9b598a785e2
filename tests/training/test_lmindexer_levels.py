"""LMIndexer's later levels: the residual k-means initialisation within prefixes, and the greedy
re-assignment of the table from the final network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.errors import ConfigError
from training.indexing.lmindexer import LMIndexer, LMIndexerConfig
from training.indexing.lmindexer.encoder_states import pad_rows
from training.indexing.lmindexer.schedule import distinct_within_prefix, prefix_residuals

D = 384  # all-MiniLM-L6-v2's width
CONFIG = LMIndexerConfig(
    num_levels=2, codebook_size=4, max_length=16, train_encoder_layers=0, decoder_layers=1, decoder_ff_size=32,
    reconstructor_ff_size=32, recon_vocab="corpus", dev_size=0, kmeans_n_init=3, kmeans_max_iter=100,
    progress=False, num_threads=1, seed=1)


def siblings(noise: float = 0.01, seed: int = 0, lean: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                            np.ndarray]:
    """60 hidden states h^1 (60, D): 3 prefixes (orthonormal directions p, weight 5) x 2 siblings (+u or -u,
    weight 1, u orthogonal to every p) x 10 documents. `lean`: sibling 0 of prefix q also leans towards the
    next prefix's direction (+lean p_{q+1}), sibling 1 away from it, as real siblings lean towards neighbouring
    categories. Returns (h, prefix (60,), sibling (60,), P (3, D))."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((D, 4)))[0].T  # (4, D) orthonormal rows
    directions, u = basis[:3], basis[3]
    prefix = np.repeat(np.arange(3), 20)
    sibling = np.tile(np.repeat([0, 1], 10), 3)
    sign = np.where(sibling[:, None] == 0, 1.0, -1.0)
    h = 5 * directions[prefix] + sign * (u + lean * directions[(prefix + 1) % 3])
    return (h + noise * rng.standard_normal(h.shape)).astype(np.float32), prefix, sibling, directions


def test_prefix_residuals_are_centred_per_prefix_and_off_the_earlier_codebooks():
    h, prefix, sibling, directions = siblings()
    earlier = np.concatenate([directions * 20, np.zeros((1, D))])  # E^0 rows (one unused, zero)
    residuals, basis = prefix_residuals(h, prefix[:, None], earlier)
    assert basis is not None and basis.shape == (D, 4)
    for p in range(3):
        np.testing.assert_allclose(residuals[prefix == p].mean(0), 0.0, atol=1e-9)
    np.testing.assert_allclose(residuals @ directions.T, 0.0, atol=1e-9)
    # what is left is the sibling offset: +u for one sibling, -u for the other, in every prefix
    u_part = residuals @ np.linalg.qr(np.random.default_rng(0).standard_normal((D, 4)))[0][:, 3]
    assert np.all((u_part > 0.5) == (sibling == 0))
    # a full-rank set of earlier codes leaves nothing to project off
    full, none = prefix_residuals(h[:, :3], prefix[:, None], np.eye(3))
    assert none is None and full.shape == (60, 3)


@pytest.fixture(scope="module")
def indexer(tmp_path_factory: pytest.TempPathFactory) -> LMIndexer:
    texts = [f"item {i}: {['red lipstick', 'face cream', 'hair shampoo'][i % 3]} number {i}" for i in range(60)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LMINDEXER_CACHE_DIR", "off")
        built = LMIndexer(texts, CONFIG, tmp_path_factory.mktemp("indexer"))
        built.encoder_states.build_cache(built.corpus, 16, built.device, None, False)
    return built


@pytest.mark.parametrize(("residual", "projection", "lean", "splits"), [
    (True, "codebooks", 0.0, True), (False, "codebooks", 0.0, False),
    (True, "prefix_means", 2.0, True), (True, "codebooks", 2.0, False)])
def test_level_two_kmeans_init_splits_every_prefix_only_with_residuals(indexer, monkeypatch, residual, projection,
                                                                       lean, splits):
    """init_codebook(1) on h^1 whose prefix part dominates: with residual k-means each of the 4 codes of
    E^1 holds one sibling kind, so argmax h . E^1 (the network's rule) separates the siblings of every
    prefix; plain k-means on h spends its codes on the prefixes and leaves siblings together.

    When siblings lean towards other prefixes (`lean`) and E^0 is not the span of h^1's prefix means (here:
    random, as E^0 is fitted to h^0, not h^1), the residual centroids carry a little of the prefix directions
    and the dominant prefix part of h picks the code: only projecting off the prefix means keeps them apart."""
    h, prefix, sibling, directions = siblings(lean=lean)
    monkeypatch.setattr(indexer, "hidden_states", lambda level: h)
    monkeypatch.setattr(indexer, "config", LMIndexerConfig(**{**CONFIG.__dict__, "residual_kmeans": residual,
                                                              "residual_projection": projection}))
    monkeypatch.setattr(indexer, "codes", np.stack([prefix, np.zeros(60, dtype=np.int64)], axis=1))
    with torch.no_grad():
        saved = indexer.network.codebooks.data.clone()
        if lean:
            generator = torch.Generator().manual_seed(9)
            indexer.network.codebooks.data[0] = torch.randn(4, D, generator=generator)
        else:
            indexer.network.codebooks.data[0, :3] = torch.from_numpy(directions * 20).float()
            indexer.network.codebooks.data[0, 3] = 0.0
    try:
        indexer.init_codebook(1)
        codebook = indexer.network.codebooks.data[1].double().numpy()  # (4, D)
        codes = (h @ codebook.T).argmax(1)
    finally:
        indexer.network.codebooks.data.copy_(saved)
    separated = [len(set(codes[(prefix == p) & (sibling == 0)]) & set(codes[(prefix == p) & (sibling == 1)])) == 0
                 for p in range(3)]
    if splits:
        # off the prefix span (prefix_means: off the prefix means of h, which noise moves off p by ~1e-3)
        tolerance = 1e-3 if projection == "codebooks" else 1e-2
        assert np.abs(codebook @ directions.T).max() < tolerance * np.abs(codebook).max()
        np.testing.assert_allclose(np.linalg.norm(codebook, axis=1), np.linalg.norm(h, axis=1).mean(), rtol=1e-5)
        assert all(separated)
    else:
        assert not all(separated)


def test_greedy_reassignment_is_the_network_greedy_decode(indexer):
    """greedy_reassignment (indexer path: cached encoder states, folded decoder, length-sorted batches) gives
    the codes the network's own decoder_step gives level by level (full encoder, one padded batch), and its
    teacher-forced codes are `assign` with the earlier codes fed in."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        indexer.network.codebooks.data.copy_(torch.randn(indexer.network.codebooks.shape, generator=generator) * 20)
    rng = np.random.default_rng(4)
    indexer.codes = rng.integers(0, 4, size=(60, 2))
    greedy, forced = indexer.greedy_reassignment()
    for level in range(2):
        assert np.array_equal(forced[:, level], indexer.assign(level))
    network = indexer.network.eval()
    ids = pad_rows(indexer.corpus.input_ids, indexer.corpus.pad_id)
    mask = pad_rows([torch.ones_like(r) for r in indexer.corpus.input_ids], 0)
    with torch.no_grad():
        states = network.encode(ids, mask)
        chosen = torch.zeros(60, 1, 2, dtype=torch.int64)
        for level in range(2):
            chosen[:, 0, level] = network.decoder_step(states, mask, chosen, torch.tensor(level))[:, 0].argmax(-1)
    assert np.array_equal(greedy, chosen[:, 0].numpy())
    assert np.array_equal(greedy[:, 0], forced[:, 0])  # level 0 has no prefix to disagree on
    # random assigned codes are not what the network decodes: the level-1 teacher-forced codes differ from greedy
    # somewhere, which is why the table is re-assigned
    assert not np.array_equal(greedy[:, 1], indexer.codes[:, 1])


def test_num_levels_one_to_four():
    for levels in (1, 4):
        assert LMIndexerConfig(num_levels=levels).num_levels == levels
    assert LMIndexerConfig().num_levels == 3
    for bad in (0, 5):
        with pytest.raises(ConfigError):
            LMIndexerConfig(num_levels=bad)


def test_logit_temperature_scales_with_the_encoder_width(indexer):
    assert indexer.model.logit_temperature == pytest.approx(CONFIG.tau * np.sqrt(D))




def test_distinct_within_prefix_gives_siblings_distinct_codes_by_an_optimal_assignment():
    prefixes = np.array([[0], [0], [0], [1], [1], [2]])
    logits = np.array([
        [5.0, 4.0, 0.0],  # prefix 0: every document's argmax is code 0
        [5.0, 0.0, 1.0],
        [4.0, 3.5, 0.0],
        [1.0, 2.0, 0.0],  # prefix 1: both documents' argmax is code 1
        [0.0, 3.0, 2.5],
        [0.0, 0.0, 9.0],  # alone under its prefix: keeps its argmax
    ])
    codes = distinct_within_prefix(prefixes, logits)
    # prefix 0: of the 6 permutations the best total is 5 + 1 + 3.5 = 9.5 (codes 0, 2, 1)
    assert codes[:3].tolist() == [0, 2, 1]
    # prefix 1: 2 + 2.5 = 4.5 beats 1 + 3 = 4 (codes 0, 1) and every other pair
    assert codes[3:5].tolist() == [1, 2]
    assert codes[5] == 2
    # a group larger than K: each code taken at most ceil(g / K) times
    many = distinct_within_prefix(np.zeros((7, 1), dtype=int), np.random.default_rng(0).normal(size=(7, 3)))
    assert np.bincount(many, minlength=3).max() <= 3
    with pytest.raises(ConfigError, match="consolidate_epochs"):
        LMIndexerConfig(last_level_assignment="distinct", consolidate_epochs=0)
