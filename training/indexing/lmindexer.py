"""LMIndexer: self-supervised semantic IDs, learned level by level (lmindexer-method.md).

The schedule, for every learned level t = 0 .. L-1 (earlier codes teacher-forced: their input
vectors are the codebook rows E^j[c_j] of the codes already assigned):

1. reconstructor warm-up (level 0 only): encoder, ID decoder and a random codebook frozen, the
   reconstructor alone learns to read ID vectors and hints (hint masking p = 0), so that it is
   not a random function when the indexer starts to learn (reconstructor collapse);
2. "nocode": the continuous h^t is the ID vector. L_recon (hint masking p_t) + L_contrastive
   (+ L_commitment from level 1 on). This is where most of the structure is learned;
3. k-means on h^t of all documents initialises E^t. Codes are argmax h . e (a dot product) while
   k-means is an L2 method; with `kmeans_normalize` (the default) k-means runs on unit-length h
   and the centroids are rescaled to one common norm (the mean |h|), so argmax h . e equals the
   nearest centroid in cosine: the assignment rule and the clustering agree;
4. full training: the straight-through quantised vector (quantizer.py) replaces h^t as the ID
   vector. L_recon + L_contrastive + L_commitment; E^t is trained, earlier codebooks are frozen;
5. assignment: c_t = argmax_j h^t . e^t_j for every document (eval mode, no dropout).

Losses (losses.py): L_recon = CE over the (sampled) real tokens through the reconstructor
(reconstructor.py); L_contrastive = in-batch SimCSE on two dropout views of h^t at level 0,
same-prefix negatives from level 1 on (batches are packed with groups of documents that share
the earlier codes; `in_batch_negatives` adds the rest of the batch); L_commitment = CE of the
network's level logits for the earlier levels against the assigned codes.

Compute. The encoder may be trained whole (`train_encoder_layers = -1`, the paper setting), not at
all (0) or only in its top n layers (n > 0, BERT-like encoders). Frozen layers are run once over
the corpus and their outputs cached in memory (and on disk, `$LMINDEXER_CACHE_DIR/encoder_states`),
which is what makes the CPU presets feasible. The reconstructor may score only a sampled fraction
of the target tokens (`recon_target_fraction`) over the tokens the corpus uses (`recon_vocab`).

Outputs under `out_dir`: `network/` (SemanticIdNetwork.save: fine-tuning starts from it),
`reconstructor.safetensors`, `lmindexer.json` (the config and per-level diagnostics) and
`checkpoints/` (one resumable checkpoint per stage; `checkpoint_dir` puts them elsewhere, e.g. to
resume a killed `learn-ids`, whose output directory is a fresh staging directory).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from training.config import config_to_dict
from training.encoder import DEFAULT_ENCODER, load_tokenizer, resolve_encoder_path
from training.errors import ConfigError
from training.indexing.losses import (
    IGNORE_INDEX,
    commitment_loss,
    contrastive_loss,
    reconstruction_accuracy,
    reconstruction_loss,
    same_prefix_mask,
)
from training.indexing.network import NetworkConfig, SemanticIdNetwork, _attention
from training.indexing.quantizer import quantize
from training.indexing.reconstructor import Reconstructor, absorbed_attention, sample_hint_mask
from training.indexing.trainer import DistContext, Trainer, TrainerSettings, distributed_context, seed_everything
from training.progress import progress_bar

if TYPE_CHECKING:
    from training.data.corpus import Document
    from training.indexing.learning import LearnedCodes

logger = logging.getLogger(__name__)

CONFIG_FILE = "lmindexer.json"
RECONSTRUCTOR_FILE = "reconstructor.safetensors"
NETWORK_DIR = "network"


@dataclass(frozen=True)
class LMIndexerConfig:
    """Every setting of the LMIndexer schedule (presets: training/configs/lmindexer-*.toml)."""

    # -- network
    encoder: str = field(default=DEFAULT_ENCODER, metadata={"help": "Pretrained encoder (packaged default or folder)."})
    num_levels: int = field(default=2, metadata={"help": "L, learned levels (1..4 are supported by the schedule)."})
    codebook_size: int = field(default=512, metadata={"help": "K, codes per learned level."})
    counter_size: int = field(default=64, metadata={"help": "Size of the network's counter head (fine-tuning)."})
    decoder_layers: int = field(default=2, metadata={"help": "Layers of the ID decoder."})
    decoder_heads: int = field(default=6, metadata={"help": "Attention heads of the ID decoder."})
    decoder_ff_size: int = field(default=1024, metadata={"help": "Feed-forward width of the ID decoder."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout of the ID decoder and reconstructor."})
    decoder_init: Literal["random", "mean_pool"] = field(default="mean_pool", metadata={
        "help": "'mean_pool': start the ID decoder as (layer-normalised) mean pooling of the encoder states, "
                "the sentence embedding the encoder was trained for; 'random': the network's own init."})
    max_length: int = field(default=128, metadata={"help": "Tokens per document (special tokens included)."})
    train_encoder_layers: int = field(default=-1, metadata={
        "help": "-1: train the whole encoder; 0: freeze it (its states are cached); n: train the top n layers."})
    # -- reconstructor
    reconstructor_layers: int = field(default=1, metadata={"help": "Layers of the reconstructor."})
    reconstructor_heads: int = field(default=6, metadata={"help": "Attention heads of the reconstructor."})
    reconstructor_ff_size: int = field(default=1024, metadata={"help": "Feed-forward width of the reconstructor."})
    recon_vocab: Literal["full", "corpus"] = field(default="full", metadata={
        "help": "Output vocabulary: the tokenizer's ('full') or only the tokens the corpus uses ('corpus')."})
    recon_target_fraction: float = field(default=1.0, metadata={
        "help": "Fraction of the real tokens scored by L_recon per step (1 = all, as in the paper)."})
    hint_mask_probs: tuple[float, ...] = field(default=(0.5, 0.7), metadata={
        "help": "Per level, the probability that a hint token is hidden (the last value serves deeper levels)."})
    # -- losses
    tau: float = field(default=1.0, metadata={"help": "Temperature of the quantizer's backward softmax."})
    recon_weight: float = field(default=1.0, metadata={"help": "Weight of L_recon."})
    contrastive_weight: float = field(default=1.0, metadata={"help": "Weight of L_contrastive."})
    commitment_weight: float = field(default=1.0, metadata={"help": "Weight of L_commitment (levels >= 1)."})
    contrastive_temperature: float = field(default=0.05, metadata={"help": "Temperature of L_contrastive."})
    contrastive_normalize: bool = field(default=True, metadata={
        "help": "Cosine similarity in L_contrastive (false: the official raw dot product)."})
    in_batch_negatives: bool = field(default=False, metadata={
        "help": "Levels >= 1: also use the other documents of the batch as negatives."})
    group_size: int = field(default=5, metadata={
        "help": "Levels >= 1: documents sharing a prefix packed together (anchor + 4 negatives officially)."})
    # -- schedule
    warmup_epochs: float = field(default=30, metadata={
        "help": "Reconstructor warm-up epochs (level 0). Fractions are allowed: 2.5 = 3 passes over 5/6 "
                "of the documents each (a fresh sample every pass)."})
    nocode_epochs: tuple[float, ...] = field(default=(30, 30), metadata={
        "help": "Per level, epochs of continuous training (last value serves deeper levels)."})
    full_epochs: tuple[float, ...] = field(default=(30, 30), metadata={
        "help": "Per level, epochs of quantised training (last value serves deeper levels)."})
    train_fraction: float = field(default=1.0, metadata={
        "help": "Fraction of the documents (a fresh sample each epoch) seen per training epoch."})
    batch_size: int = field(default=128, metadata={"help": "Documents per step."})
    lr: float = field(default=1e-3, metadata={"help": "LR of the ID decoder, codebooks and reconstructor."})
    encoder_lr: float = field(default=5e-5, metadata={"help": "LR of the trained encoder layers."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (never on codebooks)."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of each stage's steps in LR warm-up."})
    grad_clip: float = field(default=1.0, metadata={"help": "Max gradient norm."})
    # -- k-means
    kmeans: Literal["kmeans", "minibatch"] = field(default="kmeans", metadata={
        "help": "scikit-learn KMeans or MiniBatchKMeans for the codebook initialisation."})
    kmeans_n_init: int = field(default=3, metadata={"help": "k-means restarts."})
    kmeans_max_iter: int = field(default=300, metadata={"help": "k-means iterations."})
    residual_kmeans: bool = field(default=True, metadata={
        "help": "Levels >= 2: k-means on the within-prefix residuals of h, codebook orthogonal to the "
                "earlier codebooks (else k-means on h itself, as the official code)."})
    kmeans_normalize: bool = field(default=True, metadata={
        "help": "Cluster unit-length h and give all centroids the mean |h| (argmax-dot = cosine k-means)."})
    # -- run
    seed: int = field(default=42, metadata={"help": "Seed of everything (CPU runs are deterministic)."})
    eval_batch_size: int = field(default=256, metadata={"help": "Documents per batch when encoding / assigning."})
    dev_size: int = field(default=256, metadata={
        "help": "Documents whose reconstruction is measured after each epoch (dev criterion; 0 = none)."})
    patience: int = field(default=0, metadata={"help": "Early stopping patience in epochs (0 = off)."})
    checkpoint_every: int = field(default=0, metadata={"help": "Also checkpoint every N steps (0 = per epoch)."})
    checkpoint_dir: str = field(default="", metadata={
        "help": "Where stage checkpoints go ('' = OUT/checkpoints); reuse it to resume a killed run."})
    amp: bool = field(default=True, metadata={"help": "Mixed precision on CUDA."})
    progress: bool = field(default=True, metadata={"help": "Progress bars."})
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = leave torch's default)."})
    device: str = field(default="auto", metadata={"help": "'auto', 'cpu' or 'cuda'."})

    def __post_init__(self) -> None:
        if not 1 <= self.num_levels <= 8:
            raise ConfigError(f"num_levels must be in 1..8, got {self.num_levels}")
        if self.codebook_size < 2:
            raise ConfigError("codebook_size must be >= 2")
        if not self.hint_mask_probs or any(not 0.0 <= p <= 1.0 for p in self.hint_mask_probs):
            raise ConfigError("hint_mask_probs must be probabilities")
        if not self.nocode_epochs or not self.full_epochs:
            raise ConfigError("nocode_epochs and full_epochs need at least one value")
        if not 0.0 < self.recon_target_fraction <= 1.0 or not 0.0 < self.train_fraction <= 1.0:
            raise ConfigError("recon_target_fraction and train_fraction must be in (0, 1]")
        if self.tau <= 0 or self.contrastive_temperature <= 0:
            raise ConfigError("tau and contrastive_temperature must be > 0")
        if self.group_size < 1 or self.batch_size < 2:
            raise ConfigError("group_size must be >= 1 and batch_size >= 2")

    def per_level(self, values: tuple[Any, ...], level: int) -> Any:
        """values[level], or the last value for deeper levels."""
        return values[min(level, len(values) - 1)]


# --------------------------------------------------------------------------------------------------
# corpus tensors


@dataclass
class CorpusTensors:
    """The tokenized corpus: per document its token ids and reconstruction targets."""

    input_ids: list[torch.Tensor]  # N x (S_i,) int64, special tokens included
    targets: list[torch.Tensor]  # N x (S_i,) int64 index into the output vocabulary, IGNORE_INDEX elsewhere
    vocab_ids: torch.Tensor  # (V,) tokenizer ids of the output vocabulary
    pad_id: int

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize_corpus(texts: Sequence[str], config: LMIndexerConfig) -> CorpusTensors:
    """Token ids (truncated to max_length) and reconstruction targets (every non-special token)."""
    tokenizer = load_tokenizer(config.encoder)
    encoded = tokenizer(list(texts), truncation=True, max_length=config.max_length, return_special_tokens_mask=True)
    ids = [torch.tensor(row, dtype=torch.int64) for row in encoded["input_ids"]]
    special = [torch.tensor(row, dtype=torch.bool) for row in encoded["special_tokens_mask"]]
    if config.recon_vocab == "corpus":
        used = torch.unique(torch.cat([row[~mask] for row, mask in zip(ids, special, strict=True)]))
        vocab_ids = used
    else:
        vocab_ids = torch.arange(len(tokenizer), dtype=torch.int64)
    lookup = torch.full((int(max(len(tokenizer), int(vocab_ids.max()) + 1)),), IGNORE_INDEX, dtype=torch.int64)
    lookup[vocab_ids] = torch.arange(len(vocab_ids))
    targets = [torch.where(mask, torch.full_like(row, IGNORE_INDEX), lookup[row]) for row, mask in
               zip(ids, special, strict=True)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return CorpusTensors(ids, targets, vocab_ids, int(pad_id))


def _pad(rows: Sequence[torch.Tensor], value: float | int) -> torch.Tensor:
    return nn.utils.rnn.pad_sequence(list(rows), batch_first=True, padding_value=value)


# --------------------------------------------------------------------------------------------------
# the frozen part of the encoder, run once


def _bert_like(encoder: nn.Module) -> bool:
    return hasattr(encoder, "embeddings") and hasattr(getattr(encoder, "encoder", None), "layer")


def _extended_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) 0/1 -> additive (B, 1, 1, S) mask for a BERT layer called directly."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class EncoderRunner:
    """Runs the encoder, splitting it into a cached frozen bottom and a trained top.

    frozen_layers = None: the whole encoder is trained (nothing cached). Otherwise the outputs of
    the bottom `frozen_layers` layers (all of them when the whole encoder is frozen) are computed
    once in eval mode and kept in memory in float32 (exactly what the network computes at
    inference, so assigned codes and greedy decoding of the saved network agree), one (S_i, d)
    tensor per document.
    """

    def __init__(self, network: SemanticIdNetwork, config: LMIndexerConfig) -> None:
        self.network = network
        encoder = network.encoder
        total = len(encoder.encoder.layer) if _bert_like(encoder) else None
        want = config.train_encoder_layers
        if want < 0 or (total is not None and want >= total):
            self.frozen_layers: int | None = None  # train everything
            self.top_layers: list[nn.Module] = []
        elif want == 0:
            self.frozen_layers = total if total is not None else -1  # -1: whole (any architecture)
            self.top_layers = []
        else:
            if total is None:
                raise ConfigError("train_encoder_layers > 0 needs a BERT-like encoder; use -1 or 0")
            self.frozen_layers = total - want
            self.top_layers = list(encoder.encoder.layer[total - want :])
        self.cache: list[torch.Tensor] | None = None
        top = {id(p) for layer in self.top_layers for p in layer.parameters()}
        for parameter in encoder.parameters():
            parameter.requires_grad_(self.frozen_layers is None or id(parameter) in top)

    @property
    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.network.encoder.parameters() if p.requires_grad]

    def _bottom(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        encoder = self.network.encoder
        if self.frozen_layers == -1 or not _bert_like(encoder):
            return self.network.encode(input_ids, mask)
        hidden = encoder.embeddings(input_ids=input_ids)
        extended = _extended_mask(mask, hidden.dtype)
        for layer in encoder.encoder.layer[: self.frozen_layers]:
            hidden = _layer_output(layer(hidden, attention_mask=extended))
        return hidden

    @torch.no_grad()
    def build_cache(self, corpus: CorpusTensors, batch_size: int, device: torch.device, key: str | None,
                    show_progress: bool) -> None:
        """Run the frozen bottom over the corpus once (from the disk cache when `key` is found there)."""
        if self.frozen_layers is None or self.cache is not None:
            return
        path = _state_cache_path(key)
        if path is not None and path.is_file():
            stored = torch.load(path, weights_only=True)
            flat, lengths = stored["states"], stored["lengths"].tolist()
            if len(lengths) == len(corpus) and lengths == [len(r) for r in corpus.input_ids]:
                self.cache = list(torch.split(flat, lengths))
                logger.info("encoder states of %d documents from %s", len(lengths), path)
                return
        was_training = self.network.training
        self.network.eval()
        order = np.argsort([-len(r) for r in corpus.input_ids], kind="stable")
        cache: list[torch.Tensor | None] = [None] * len(corpus)
        started = time.perf_counter()
        for start in progress_bar(range(0, len(order), batch_size), desc="encoder states", unit="batch",
                          disable=not show_progress, mininterval=2.0):
            rows = order[start : start + batch_size]
            ids = _pad([corpus.input_ids[i] for i in rows], corpus.pad_id).to(device)
            mask = (_pad([torch.ones_like(corpus.input_ids[i]) for i in rows], 0)).to(device)
            states = self._bottom(ids, mask).float().cpu()
            for j, i in enumerate(rows):
                cache[i] = states[j, : len(corpus.input_ids[i])].clone()
        self.cache = [c for c in cache if c is not None]
        logger.info("encoded %d documents (frozen encoder part) in %.1f s", len(corpus), time.perf_counter() - started)
        self.network.train(was_training)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torch.save({"states": torch.cat(self.cache), "lengths": torch.tensor([len(c) for c in self.cache])}, tmp)
            tmp.replace(path)

    def states(self, rows: Sequence[int], corpus: CorpusTensors, device: torch.device) -> tuple[torch.Tensor, ...]:
        """(input_ids (B, S), attention_mask (B, S), encoder states (B, S, d)) of documents `rows`."""
        ids = _pad([corpus.input_ids[i] for i in rows], corpus.pad_id).to(device)
        mask = _pad([torch.ones_like(corpus.input_ids[i]) for i in rows], 0).to(device)
        if self.frozen_layers is None:
            return ids, mask, self.network.encode(ids, mask)
        assert self.cache is not None, "build_cache first"
        hidden = _pad([self.cache[i] for i in rows], 0.0).to(device=device, dtype=torch.float32)
        if self.top_layers:
            extended = _extended_mask(mask, hidden.dtype)
            for layer in self.top_layers:
                hidden = _layer_output(layer(hidden, attention_mask=extended))
        return ids, mask, hidden


def _layer_output(output: Any) -> torch.Tensor:
    """A transformers layer returns a tensor or a tuple whose first item is the states."""
    return output[0] if isinstance(output, tuple) else output


def _state_cache_path(key: str | None) -> Path | None:
    if key is None:
        return None
    from training.indexing.embedding_cache import cache_dir

    folder = cache_dir()
    return None if folder is None else folder.parent / "encoder_states" / f"{key}.pt"


def _state_cache_key(texts: Sequence[str], config: LMIndexerConfig, frozen_layers: int | None) -> str:
    digest = hashlib.sha256()
    digest.update(str(resolve_encoder_path(config.encoder).resolve()).encode())
    digest.update(f"|{config.max_length}|{frozen_layers}|float32|{len(texts)}|".encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


# --------------------------------------------------------------------------------------------------
# the ID decoder with folded cross-attention


def fast_decode(network: SemanticIdNetwork, encoder_states: torch.Tensor, attention_mask: torch.Tensor,
                code_vectors: torch.Tensor) -> torch.Tensor:
    """Exactly `network.decode` (same weights, same dropout draws), computed for few query positions.

    The ID decoder has t + 1 <= L + 1 query positions per document and S encoder states to read.
    `network.decode` projects all S states to keys and values in every layer (O(S d^2)); here the
    projections are folded into the queries (reconstructor.absorbed_attention, O(t d^2 + t S d)),
    which is 20-40x less work for the decoder while indexing. Shapes as in `network.decode`.
    """
    b, w, t, d = code_vectors.shape
    start = network.start.view(1, 1, 1, d).expand(b, w, 1, d)
    x = torch.cat([start, code_vectors], dim=2) + network.position.weight[: t + 1].view(1, 1, t + 1, d)
    memory_mask = attention_mask.bool().view(b, 1, 1, -1)
    for layer in network.layers:
        p = t + 1
        flat = x.reshape(b * w, p, d)
        q, k, v = layer.self_qkv(layer.self_norm(flat)).chunk(3, dim=-1)
        causal = torch.ones(p, p, dtype=torch.bool, device=x.device).tril()
        flat = flat + layer.dropout(layer.self_out(_attention(q, k, v, causal.view(1, 1, p, p), layer.num_heads)))
        x = flat.reshape(b, w * p, d)
        q = layer.cross_q(layer.cross_norm(x))  # (B, W*P, d)
        weight, bias = layer.cross_kv.weight, layer.cross_kv.bias  # (2d, d), (2d,): keys then values
        attended = absorbed_attention(q, encoder_states, weight[:d], weight[d:], bias[d:], memory_mask,
                                      layer.num_heads)
        x = x + layer.dropout(layer.cross_out(attended))
        x = x + layer.dropout(layer.ff(layer.ff_norm(x)))
        x = x.reshape(b, w, p, d)
    return network.final_norm(x)


@torch.no_grad()
def init_decoder_as_mean_pool(network: SemanticIdNetwork) -> None:
    """Make the untrained ID decoder compute LN(mean of the encoder states) at every position.

    A random decoder turns the encoder's states into a random pooling, and the first stages then
    start from a representation worse than the encoder's own sentence embedding (mean pooling for
    all-MiniLM-L6-v2). With zero queries every cross-attention weight is uniform over the real
    tokens; identity value / output projections pass the mean through; the self-attention and
    feed-forward outputs start at zero (their residual branches are off until training opens them),
    and the start / position vectors start at zero. Training moves away from this point.
    """
    d = network.hidden_size
    eye = torch.eye(d)
    network.start.zero_()
    network.position.weight.zero_()
    for layer in network.layers:
        layer.cross_q.weight.zero_()
        layer.cross_q.bias.zero_()
        layer.cross_kv.weight[d:].copy_(eye)
        layer.cross_kv.bias[d:].zero_()
        layer.cross_out.weight.copy_(eye)
        layer.cross_out.bias.zero_()
        layer.self_out.weight.zero_()
        layer.self_out.bias.zero_()
        layer.ff[-1].weight.zero_()
        layer.ff[-1].bias.zero_()


# --------------------------------------------------------------------------------------------------
# the model trained by every stage


class IndexerModel(nn.Module):
    """The shared network plus the reconstructor (one module, so one checkpoint per stage)."""

    def __init__(self, network: SemanticIdNetwork, reconstructor: Reconstructor) -> None:
        super().__init__()
        self.network = network
        self.reconstructor = reconstructor


@dataclass
class StageSpec:
    """How one stage computes its loss."""

    level: int
    kind: Literal["warmup", "nocode", "full"]
    hint_p: float
    contrastive: bool
    commitment: bool


class LMIndexer:
    """Holds the corpus, the model and the codes, and runs the schedule (see the module docstring)."""

    def __init__(self, texts: Sequence[str], config: LMIndexerConfig, out_dir: Path,
                 context: DistContext | None = None) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.context = context or DistContext()
        self.device = self.context.device
        self.texts = list(texts)
        seed_everything(config.seed)
        self.corpus = tokenize_corpus(self.texts, config)
        network = SemanticIdNetwork(NetworkConfig(
            encoder=config.encoder, num_levels=config.num_levels, codebook_size=config.codebook_size,
            counter_size=config.counter_size, decoder_layers=config.decoder_layers,
            decoder_heads=config.decoder_heads, decoder_ff_size=config.decoder_ff_size, dropout=config.dropout))
        if config.decoder_init == "mean_pool":
            init_decoder_as_mean_pool(network)
        self.runner = EncoderRunner(network, config)
        d = network.hidden_size
        reconstructor = Reconstructor(d, len(self.corpus.vocab_ids), num_layers=config.reconstructor_layers,
                                      num_heads=config.reconstructor_heads, ff_size=config.reconstructor_ff_size,
                                      dropout=config.dropout, max_positions=max(config.max_length, 8))
        self.model = IndexerModel(network, reconstructor).to(self.device)
        self.network = network
        self.vocab_ids = self.corpus.vocab_ids.to(self.device)
        self.codes = np.zeros((len(self.corpus), config.num_levels), dtype=np.int64)
        n = len(self.corpus)
        dev_rng = np.random.default_rng(config.seed + 7)
        self.dev_rows = np.sort(dev_rng.choice(n, size=min(config.dev_size, n), replace=False)).tolist()
        self.labels: list[str | None] | None = None
        self._warmup_codebook = torch.zeros(0)
        self.diagnostics: dict[str, Any] = {"levels": [], "stages": []}
        ckpt = Path(config.checkpoint_dir) if config.checkpoint_dir else self.out_dir / "checkpoints"
        self.checkpoint_dir = ckpt

    # ----------------------------------------------------------------------------------------------
    # forward pieces

    def _output_embeddings(self) -> torch.Tensor:
        """(V, d) rows of the encoder's (tied) token-embedding matrix for the output vocabulary."""
        return self.network.encoder.get_input_embeddings().weight[self.vocab_ids]

    def _hidden(self, rows: Sequence[int], level: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids (B,S), mask (B,S), decoder states (B, level+1, d)) with earlier codes teacher-forced."""
        ids, mask, states = self.runner.states(rows, self.corpus, self.device)
        earlier = torch.as_tensor(self.codes[list(rows), :level], device=self.device)  # (B, level)
        vectors = self.network.embed_codes(earlier)[:, None]  # (B, 1, level, d)
        hidden = fast_decode(self.network, states, mask, vectors)[:, 0]  # (B, level+1, d)
        return ids, mask, hidden

    def _recon(self, rows: Sequence[int], ids: torch.Tensor, mask: torch.Tensor, id_vectors: torch.Tensor,
               hint_p: float, generator: torch.Generator | None, sample_targets: bool) -> tuple[torch.Tensor, ...]:
        """(loss, logits (T, V), labels (T,)) of the reconstruction of documents `rows`."""
        targets = _pad([self.corpus.targets[i] for i in rows], IGNORE_INDEX).to(self.device)  # (B, S)
        selected = targets != IGNORE_INDEX  # (B, S) real, non-special tokens: the targets and the hints
        hint_tokens = selected.long()
        if sample_targets and self.config.recon_target_fraction < 1.0:
            draw = torch.rand(selected.shape, generator=generator).to(self.device)
            selected = selected & (draw < self.config.recon_target_fraction)
        # Target rows first in each document: positions (B, R) with R the largest count; valid (B, R).
        counts = selected.sum(dim=1)  # (B,)
        r = max(1, int(counts.max()))
        positions = torch.argsort((~selected).to(torch.int8), dim=1, stable=True)[:, :r]  # (B, R)
        valid = torch.arange(r, device=self.device).view(1, r) < counts.view(-1, 1)  # (B, R)
        hint_mask = sample_hint_mask(hint_tokens, hint_p, generator, positions)  # (B, R, S)
        token_embeddings = self.network.encoder.get_input_embeddings()(ids)  # (B, S, d)
        z = self.model.reconstructor(id_vectors, token_embeddings, mask, hint_mask, positions)  # (B, R, d)
        labels = targets.gather(1, positions)[valid]  # (T,)
        logits = self.model.reconstructor.project(z[valid], self._output_embeddings())  # (T, V)
        return reconstruction_loss(logits, labels), logits, labels

    def _id_vectors(self, rows: Sequence[int], hidden: torch.Tensor, level: int, quantized: bool,
                    codebook: torch.Tensor | None = None) -> torch.Tensor:
        """(B, level+1, d): earlier code vectors, then h^level or its quantised vector."""
        earlier = torch.as_tensor(self.codes[list(rows), :level], device=self.device)
        current = hidden[:, level]
        if quantized:
            current = quantize(current, self.network.codebooks[level] if codebook is None else codebook,
                               self.config.tau).vectors
        return torch.cat([self.network.embed_codes(earlier), current[:, None]], dim=1)

    def step(self, rows: Sequence[int], spec: StageSpec) -> dict[str, torch.Tensor]:
        """Loss of one training batch under `spec`."""
        config = self.config
        level = spec.level
        if spec.kind == "warmup":  # only the reconstructor learns: no graph through encoder and decoder
            with torch.no_grad():
                ids, mask, hidden = self._hidden(rows, level)
        else:
            ids, mask, hidden = self._hidden(rows, level)
        id_vectors = self._id_vectors(rows, hidden, level, quantized=spec.kind != "nocode",
                                      codebook=self._warmup_codebook if spec.kind == "warmup" else None)
        recon, logits, labels = self._recon(rows, ids, mask, id_vectors, spec.hint_p, None, True)
        figures: dict[str, torch.Tensor] = {"recon": recon.detach()}
        loss = config.recon_weight * recon
        correct, total = reconstruction_accuracy(logits.detach(), labels)
        figures["acc"] = torch.tensor(correct / max(1, total))
        if spec.contrastive:
            _, _, second = self._hidden(rows, level)  # second dropout view
            if level == 0:
                contrast = contrastive_loss(hidden[:, 0], second[:, 0], temperature=config.contrastive_temperature,
                                            normalize=config.contrastive_normalize)
            else:
                prefixes = torch.as_tensor(self.codes[list(rows), :level], device=self.device)
                candidate_mask = same_prefix_mask(prefixes, config.in_batch_negatives)
                contrast = contrastive_loss(hidden[:, level], second[:, level], candidate_mask=candidate_mask,
                                            temperature=config.contrastive_temperature,
                                            normalize=config.contrastive_normalize)
            loss = loss + config.contrastive_weight * contrast
            figures["contrast"] = contrast.detach()
        if spec.commitment and level > 0:
            earlier = torch.as_tensor(self.codes[list(rows), :level], device=self.device)
            # h . e / tau: the logits are ~|h||e| cos ~ 400 cos, so an unscaled CE is a cliff whose
            # gradient swamps the other losses after clipping (the official code scales T5's logits
            # by d^-0.5 for the same reason). The argmax, which is what must not move, is unchanged.
            logits_list = [self.network.level_logits(hidden[:, j], j) / config.tau for j in range(level)]
            commit = commitment_loss(logits_list, earlier)
            loss = loss + config.commitment_weight * commit
            figures["commit"] = commit.detach()
        figures["loss"] = loss
        return figures

    # ----------------------------------------------------------------------------------------------
    # batches

    def batches(self, epoch: int, level: int, stage_seed: int, fraction: float = 1.0) -> list[list[int]]:
        """Document rows per step for `epoch`: shuffled; from level 1 on, packed by shared prefix.

        A random `fraction * train_fraction` of the documents takes part (fresh each epoch)."""
        config = self.config
        rng = np.random.default_rng([config.seed, stage_seed, epoch])
        n = len(self.corpus)
        rows = rng.permutation(n)
        keep = fraction * config.train_fraction
        if keep < 1.0:
            rows = rows[: min(n, max(config.batch_size, round(n * keep)))]
        if level == 0:
            return [rows[i : i + config.batch_size].tolist() for i in range(0, len(rows), config.batch_size)]
        # Same-prefix packing: sort the shuffled rows by prefix (stable, so the order inside a prefix
        # stays random), cut each prefix into groups of group_size, shuffle the groups, fill batches.
        prefix_keys = self.codes[rows, :level]
        order = np.lexsort(prefix_keys.T[::-1])
        rows = rows[order]
        prefix_keys = prefix_keys[order]
        groups: list[list[int]] = []
        start = 0
        while start < len(rows):
            end = start + 1
            same = (prefix_keys[start:] == prefix_keys[start]).all(axis=1)
            run = int(np.argmin(same)) if not same.all() else len(same)  # length of this prefix's run
            end = start + min(run, config.group_size)
            groups.append(rows[start:end].tolist())
            start = end
        group_order = rng.permutation(len(groups))
        batches: list[list[int]] = []
        current: list[int] = []
        for g in group_order:
            if current and len(current) + len(groups[g]) > config.batch_size:
                batches.append(current)
                current = []
            current.extend(groups[g])
        if current:
            batches.append(current)
        return batches

    # ----------------------------------------------------------------------------------------------
    # evaluation passes

    @torch.no_grad()
    def hidden_states(self, level: int) -> np.ndarray:
        """(N, d) float32 h^level of every document (eval mode, earlier codes teacher-forced)."""
        self.model.eval()
        order = np.argsort([-len(r) for r in self.corpus.input_ids], kind="stable")
        out = np.zeros((len(self.corpus), self.network.hidden_size), dtype=np.float32)
        for start in range(0, len(order), self.config.eval_batch_size):
            rows = order[start : start + self.config.eval_batch_size].tolist()
            _, _, hidden = self._hidden(rows, level)
            out[rows] = hidden[:, level].float().cpu().numpy()
        return out

    @torch.no_grad()
    def dev_reconstruction(self, spec: StageSpec) -> dict[str, float]:
        """Reconstruction loss and accuracy on the dev documents, fixed hint masks, all targets."""
        if not self.dev_rows:
            return {}
        self.model.eval()
        generator = torch.Generator().manual_seed(self.config.seed + 11)
        total_loss, correct, count = 0.0, 0, 0
        for start in range(0, len(self.dev_rows), self.config.eval_batch_size):
            rows = self.dev_rows[start : start + self.config.eval_batch_size]
            ids, mask, hidden = self._hidden(rows, spec.level)
            id_vectors = self._id_vectors(rows, hidden, spec.level, quantized=spec.kind != "nocode",
                                          codebook=self._warmup_codebook if spec.kind == "warmup" else None)
            loss, logits, labels = self._recon(rows, ids, mask, id_vectors, spec.hint_p, generator, False)
            ok, n = reconstruction_accuracy(logits, labels)
            total_loss += float(loss) * n
            correct += ok
            count += n
        return {"dev_recon_loss": total_loss / max(1, count), "dev_recon_accuracy": correct / max(1, count)}

    # ----------------------------------------------------------------------------------------------
    # stages

    def _trainer(self, name: str, parameters: list[tuple[list[nn.Parameter], float]], epochs: int) -> Trainer:
        config = self.config
        settings = TrainerSettings(epochs=epochs, lr=config.lr, weight_decay=config.weight_decay,
                                   warmup_ratio=config.warmup_ratio, grad_clip=config.grad_clip, seed=config.seed,
                                   amp=config.amp, patience=config.patience, checkpoint_every=config.checkpoint_every,
                                   progress=config.progress)
        flat = [p for group, _ in parameters for p in group]
        frozen = {f"network.encoder.{k}" for k, v in self.network.encoder.named_parameters() if not v.requires_grad}
        frozen |= {f"network.encoder.{k}" for k, _ in self.network.encoder.named_buffers()}
        trainer = Trainer(self.model, flat, settings, self.checkpoint_dir, name, self.context,
                          skip_in_checkpoint=frozen.__contains__)
        # one parameter group per learning rate; codebooks never decay
        groups = []
        for group, lr in parameters:
            if group:
                decay = 0.0 if any(p is self.network.codebooks for p in group) else config.weight_decay
                groups.append({"params": group, "lr": lr, "weight_decay": decay})
        trainer.optimizer = torch.optim.AdamW(groups, lr=config.lr)
        return trainer

    def _decoder_parameters(self) -> list[nn.Parameter]:
        skip = {id(self.network.codebooks), id(self.network.counter_head)}
        encoder = {id(p) for p in self.network.encoder.parameters()}
        return [p for p in self.network.parameters() if id(p) not in skip and id(p) not in encoder]

    def run_stage(self, spec: StageSpec, epochs: float) -> dict[str, Any]:
        """Train one stage for `epochs` (possibly fractional) epochs; returns its record."""
        name = f"level{spec.level}-{spec.kind}"
        if epochs <= 0:
            return {"stage": name, "epochs": 0}
        passes = math.ceil(epochs)
        fraction = epochs / passes
        config = self.config
        reconstructor = list(self.model.reconstructor.parameters())
        if spec.kind == "warmup":
            groups = [(reconstructor, config.lr)]
        else:
            groups = [(self._decoder_parameters() + reconstructor, config.lr),
                      (self.runner.trainable, config.encoder_lr)]
            if spec.kind == "full":
                groups.append(([self.network.codebooks], config.lr))
        hook = None
        if spec.kind == "full":
            keep = torch.zeros(config.num_levels, 1, 1, device=self.device)
            keep[spec.level] = 1.0  # only E^level learns; earlier codebooks stay what the codes were
            hook = self.network.codebooks.register_hook(lambda grad: grad * keep)
        trainer = self._trainer(name, groups, passes)
        stage_seed = {"warmup": 1, "nocode": 2, "full": 3}[spec.kind] + 10 * spec.level
        evaluate = None
        if self.dev_rows:
            def evaluate() -> float:
                return self.dev_reconstruction(spec)["dev_recon_loss"]
        started = time.perf_counter()
        result = trainer.fit(lambda epoch: self.batches(epoch, spec.level, stage_seed, fraction),
                             lambda rows: self.step(rows, spec), evaluate, batch_size_of=len)
        if hook is not None:
            hook.remove()
        record: dict[str, Any] = {"stage": name, "epochs": result.epochs, "steps": result.steps,
                                  "seconds": round(time.perf_counter() - started, 2), "history": result.history,
                                  "stopped_early": result.stopped_early, "resumed": result.resumed}
        record.update(self.dev_reconstruction(spec))
        logger.info("%s done: %s", name, {k: v for k, v in record.items() if k != "history"})
        return record

    def _stage_finished(self, name: str) -> bool:
        """True when the stage's checkpoint exists and is marked done (a resumed run skips it)."""
        path = self.checkpoint_dir / f"{name}.pt"
        if not path.is_file():
            return False
        return bool(torch.load(path, map_location="cpu", weights_only=False).get("done"))

    def init_codebook(self, level: int) -> dict[str, Any]:
        """k-means on h^level of all documents -> E^level (see the module docstring, step 3)."""
        from sklearn.cluster import KMeans, MiniBatchKMeans

        config = self.config
        started = time.perf_counter()
        hidden = self.hidden_states(level)
        norms = np.linalg.norm(hidden, axis=1)
        data = hidden / np.maximum(norms[:, None], 1e-12) if config.kmeans_normalize else hidden
        basis = None
        if level > 0 and config.residual_kmeans:
            # Within-prefix residuals: what tells siblings apart. h^t starts close to h^{t-1} (the
            # prefix code dominates it), so k-means on h^t itself re-finds the previous partition.
            groups = np.unique(self.codes[:, :level], axis=0, return_inverse=True)[1].reshape(-1)
            means = np.zeros((groups.max() + 1, data.shape[1]))
            np.add.at(means, groups, data)
            means /= np.bincount(groups)[:, None]
            data = data - means[groups]
            # Codes are argmax h . e: keep e orthogonal to the earlier codebooks (when they do not
            # span the space) so the part of h^t shared by the whole prefix does not pick the code.
            earlier = self.network.codebooks.data[:level].reshape(-1, data.shape[1]).double().cpu().numpy()
            if earlier.shape[0] < data.shape[1]:
                basis = np.linalg.qr(earlier.T)[0]  # (d, r) orthonormal
                data = data - (data @ basis) @ basis.T
        k = min(config.codebook_size, len(data))
        if config.kmeans == "minibatch":
            km = MiniBatchKMeans(n_clusters=k, n_init=config.kmeans_n_init, max_iter=config.kmeans_max_iter,
                                 random_state=config.seed, batch_size=max(1024, 3 * k))
        else:
            km = KMeans(n_clusters=k, n_init=config.kmeans_n_init, max_iter=config.kmeans_max_iter,
                        random_state=config.seed)
        km.fit(data.astype(np.float64))
        centroids = km.cluster_centers_
        if basis is not None:
            centroids = centroids - (centroids @ basis) @ basis.T
        centroids = centroids.astype(np.float32)
        if config.kmeans_normalize:
            centroids = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
            centroids = centroids * float(norms.mean())
        codebook = self.network.codebooks.data[level]
        if k < config.codebook_size:  # fewer documents than codes: keep the random rows for the rest
            codebook[:k] = torch.from_numpy(centroids).to(codebook)
        else:
            codebook.copy_(torch.from_numpy(centroids))
        kmeans_codes = km.labels_.astype(np.int64)
        record = {"kmeans_seconds": round(time.perf_counter() - started, 2), "kmeans_inertia": float(km.inertia_),
                  "mean_hidden_norm": float(norms.mean())}
        if self.labels is not None:
            record["kmeans_init_category_ami"] = _ami(self.codes[:, :level], kmeans_codes, self.labels)
        return record

    @torch.no_grad()
    def assign(self, level: int) -> np.ndarray:
        """c_level = argmax h^level . E^level for every document."""
        hidden = torch.from_numpy(self.hidden_states(level)).to(self.device)
        logits = self.network.level_logits(hidden, level)
        return logits.argmax(dim=-1).cpu().numpy().astype(np.int64)

    def run(self) -> dict[str, Any]:
        """The whole schedule; fills self.codes and self.diagnostics."""
        config = self.config
        started = time.perf_counter()
        key = _state_cache_key(self.texts, config, self.runner.frozen_layers)
        self.runner.build_cache(self.corpus, config.eval_batch_size, self.device,
                                key if self.context.is_main else None, config.progress and self.context.is_main)
        self.diagnostics["encoder_states_seconds"] = round(time.perf_counter() - started, 2)
        # A fixed random codebook for the warm-up (official: the frozen xavier-initialised K-codebook).
        generator = torch.Generator().manual_seed(config.seed + 3)
        d = self.network.hidden_size
        self._warmup_codebook = (torch.randn(config.codebook_size, d, generator=generator)).to(self.device)
        self.diagnostics["stages"].append(self.run_stage(StageSpec(0, "warmup", 0.0, False, False),
                                                         config.warmup_epochs))
        for level in range(config.num_levels):
            p = config.per_level(config.hint_mask_probs, level)
            level_record: dict[str, Any] = {"level": level, "hint_mask_prob": p}
            nocode = StageSpec(level, "nocode", p, True, level > 0)
            self.diagnostics["stages"].append(self.run_stage(nocode, config.per_level(config.nocode_epochs, level)))
            full = StageSpec(level, "full", p, True, level > 0)
            if self._stage_finished(f"level{level}-full"):
                level_record["kmeans"] = "skipped: the full stage's checkpoint is complete and holds the codebook"
            else:
                level_record.update(self.init_codebook(level))
            self.diagnostics["stages"].append(self.run_stage(full, config.per_level(config.full_epochs, level)))
            self.codes[:, level] = self.assign(level)
            level_record.update(self._level_figures(level, full))
            self.diagnostics["levels"].append(level_record)
            logger.info("level %d: %s", level, level_record)
        # Does the final network still predict every level's assigned codes (teacher-forced)? It is what
        # assigns IDs to new documents and what fine-tuning starts from.
        for level, record in enumerate(self.diagnostics["levels"]):
            record["final_network_agreement"] = float((self.assign(level) == self.codes[:, level]).mean())
        self.diagnostics["seconds"] = round(time.perf_counter() - started, 2)
        return self.diagnostics

    def _level_figures(self, level: int, spec: StageSpec) -> dict[str, Any]:
        from training.indexing.diagnostics import code_perplexity, same_prefix_diff_ratio

        codes = self.codes[:, level]
        used = len(np.unique(codes))
        figures: dict[str, Any] = {
            "perplexity": code_perplexity(codes),
            "codes_used": used,
            "usage": used / self.config.codebook_size,
            "diff_ratio": same_prefix_diff_ratio(self.codes[:, : level + 1], level),
        }
        dev = self.dev_reconstruction(spec)
        figures["reconstruction_accuracy"] = dev.get("dev_recon_accuracy")
        figures["reconstruction_loss"] = dev.get("dev_recon_loss")
        if self.labels is not None:
            figures["category_ami"] = _ami(self.codes[:, :level], codes, self.labels)
        return figures

    def save(self, out_dir: Path) -> dict[str, str]:
        """network/ (SemanticIdNetwork.save), reconstructor.safetensors, lmindexer.json."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        self.network.save(out_dir / NETWORK_DIR)
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.reconstructor.state_dict().items()}
        save_file(state, str(out_dir / RECONSTRUCTOR_FILE))
        payload = {"config": config_to_dict(self.config), "output_vocabulary_size": len(self.corpus.vocab_ids),
                   "diagnostics": self.diagnostics}
        (out_dir / CONFIG_FILE).write_text(json.dumps(payload, indent=2, default=_json_default))
        return {"network": f"{NETWORK_DIR}/model.safetensors", "network_config": f"{NETWORK_DIR}/network.json",
                "reconstructor": RECONSTRUCTOR_FILE, "config": CONFIG_FILE}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _ami(prefix: np.ndarray, codes: np.ndarray, labels: Sequence[str | None]) -> float | None:
    """AMI between (prefix, code) clusters and the labels, over labelled documents (a monitor only:
    the labels never reach training)."""
    from sklearn.metrics import adjusted_mutual_info_score

    keep = [i for i, label in enumerate(labels) if label is not None]
    if len(keep) < 2:
        return None
    clusters = [",".join(map(str, prefix[i])) + f"|{codes[i]}" for i in keep]
    return float(adjusted_mutual_info_score([labels[i] for i in keep], clusters))


def learn_lmindexer_codes(documents: list[Document], config: LMIndexerConfig, out_dir: Path) -> LearnedCodes:
    """Learn L levels of codes for `documents` with the LMIndexer schedule (the method contract of
    training.indexing.learning); writes the network, reconstructor and config under `out_dir`."""
    from training.indexing.learning import LearnedCodes

    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    context = distributed_context(prefer_cuda=config.device != "cpu")
    if config.device == "cuda" and context.device.type != "cuda":
        raise ConfigError("device = 'cuda' but no CUDA device is available")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    indexer = LMIndexer([doc.text for doc in documents], config, out_dir, context)
    categories = [doc.category for doc in documents]
    if any(c is not None for c in categories):
        indexer.labels = categories  # monitoring only (category AMI in the diagnostics)
    diagnostics = indexer.run()
    diagnostics["wall_seconds"] = round(time.perf_counter() - started, 2)
    files = indexer.save(out_dir) if context.is_main else {}
    return LearnedCodes(codes=indexer.codes.copy(), codebook_sizes=(config.codebook_size,) * config.num_levels,
                        diagnostics=diagnostics, files=files)
