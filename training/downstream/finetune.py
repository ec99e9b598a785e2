"""Fine-tuning the semantic-ID network: input text -> semantic ID, teacher forcing, CE per level.

The network (`training.indexing.network.SemanticIdNetwork`) is initialised from the indexer's
saved network when the IDs come from LMIndexer, and otherwise from the pretrained encoder with a
fresh decoder and codebooks sized to the ID table (`build_network`). The loss is the mean over
levels 0..L of the cross-entropy of the teacher-forced logits (the network's `forward`).

`train` runs the project's one training loop (training.loop): AdamW with linear warm-up and
linear decay over `steps`, encoder at `lr` and the rest at `head_lr`, gradient clipping, mixed
precision on CUDA, data parallelism under `torchrun`, and a checkpoint every `checkpoint_every`
steps under out_dir/checkpoint from which a re-run resumes. The data order is a function of
(seed, epoch) only (`example_batches`), so a resumed run sees the same batches.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from training.config import config_to_dict
from training.downstream.tasks import Example, IdSource
from training.encoder import DEFAULT_ENCODER, load_tokenizer
from training.errors import ConfigError
from training.indexing.network import NetworkConfig, SemanticIdNetwork
from training.loop import LoopSettings, shard
from training.loop import train as train_loop

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run (presets: training/configs/finetune-<preset>.toml)."""

    steps: int = field(default=2000, metadata={"help": "Optimiser steps."})
    batch_size: int = field(default=32, metadata={"help": "Examples per step (per process under DDP)."})
    lr: float = field(default=1e-4, metadata={"help": "Peak learning rate of the encoder."})
    head_lr: float = field(default=1e-3, metadata={
        "help": "Peak learning rate of the ID decoder, codebooks and counter head (fresh or small parts)."})
    warmup_steps: int = field(default=100, metadata={"help": "Linear warm-up steps, then linear decay to 0."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on norms and biases)."})
    grad_clip: float = field(default=1.0, metadata={"help": "Gradient-norm clipping (0 = off)."})
    max_input_length: int = field(default=64, metadata={"help": "Tokens of the input text (queries, histories)."})
    amp: bool = field(default=True, metadata={"help": "Mixed precision on CUDA (ignored on CPU)."})
    checkpoint_every: int = field(default=500, metadata={"help": "Steps between resumable checkpoints (0 = end)."})
    seed: int = field(default=42, metadata={"help": "Seed of initialisation and data order."})
    num_threads: int = field(default=2, metadata={
        "help": "torch CPU threads (the CPU machines are shared; 1 is faster when the cores are oversubscribed)."})
    train_word_embeddings: bool = field(default=False, metadata={
        "help": "Also train the encoder's word embeddings (a third of MiniLM's weights; frozen by default, "
                "which halves the optimiser's work and keeps unseen words where pre-training put them)."})
    # task data
    doc_as_query: Literal["auto", "on", "off"] = field(default="auto", metadata={
        "help": "Retrieval: add document-as-query (and title-as-query) pairs; 'auto' = when there are fewer "
                "training queries than documents."})
    doc_span_queries: int = field(default=0, metadata={
        "help": "Retrieval, with document-as-query: also this many random word spans of each document as "
                "pseudo-queries (NCI's DocAsQuery), drawn once from the seed. 0 = none."})
    doc_span_words: int = field(default=16, metadata={
        "help": "Words in a span pseudo-query: between half this and this many."})
    doc_sentence_queries: int = field(default=0, metadata={
        "help": "Retrieval, with document-as-query: also each document's this many most salient sentences (TF-IDF "
                "against the collection, training.downstream.tasks.PseudoQueries) as pseudo-queries. 0 = none."})
    doc_keyphrase_queries: int = field(default=0, metadata={
        "help": "Retrieval, with document-as-query: also this many key-phrase pseudo-queries per document (its "
                "highest TF-IDF terms and bigrams, keyphrase_terms each). 0 = none."})
    keyphrase_terms: int = field(default=6, metadata={"help": "Terms (unigrams or bigrams) in a key-phrase query."})
    pseudo_query_words: int = field(default=32, metadata={
        "help": "A salient-sentence or key-phrase pseudo-query is cut to this many words."})
    train_query_repeats: int = field(default=1, metadata={
        "help": "Retrieval: each (real training query, relevant document) pair appears this many times, to weigh "
                "the few real queries against the many pseudo-queries."})
    max_train_examples: int = field(default=0, metadata={
        "help": "Use at most this many training pairs (seeded sample; 0 = all). For reduced CPU presets."})
    cold_start_fraction: float = field(default=0.05, metadata={
        "help": "Fraction of documents held out of fine-tuning and indexed afterwards (cold start)."})
    # network (used when the IDs come without an indexer network)
    encoder: str = field(default=DEFAULT_ENCODER, metadata={"help": "Pretrained encoder for rq-VAE / HC IDs."})
    decoder_layers: int = field(default=2, metadata={"help": "ID decoder layers for a fresh network."})
    indexer_logit_temperature: float = field(default=10.0, metadata={
        "help": "Divide the indexer network's logits by this when fine-tuning starts from it (see soften_logits)."})
    min_counter_size: int = field(default=64, metadata={
        "help": "Counter-level size at least this (room for documents indexed after training)."})
    # evaluation
    beam_size: int = field(default=20, metadata={"help": "Beam width of the constrained beam search."})
    eval_batch_size: int = field(default=32, metadata={"help": "Queries per beam-search batch."})
    eval_max_queries: int = field(default=0, metadata={"help": "Evaluate at most this many queries (0 = all)."})
    eval_hybrid: bool = field(default=True, metadata={
        "help": "Retrieval: also evaluate the hybrid search mode (bundle.retrieval: the beam's candidates and the "
                "dense top-N by cosine of text vectors, (1 - w) * cosine + w * p); needs every document's text "
                "vector from the ID source's encoder (computed once, cached). The validation split chooses w and "
                "the default mode."})
    hybrid_weights: tuple[float, ...] = field(default=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
                                              metadata={
        "help": "Retrieval: candidate weights w of the hybrid rule (1 - w) * cosine + w * p; the one with the best "
                "validation NDCG@10 is kept (ties: the smaller w), never chosen on test."})
    dense_candidates: int = field(default=100, metadata={
        "help": "Retrieval, hybrid: N, the documents of highest cosine (over the whole collection) joined to the "
                "beam's candidates (max(N, 10) in evaluation; the bundle's default for POST /search)."})

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("steps and batch_size must be >= 1")
        if self.max_input_length < 4:
            raise ConfigError("max_input_length must be >= 4")
        if self.doc_span_queries < 0 or self.doc_span_words < 2:
            raise ConfigError("doc_span_queries must be >= 0 and doc_span_words >= 2")
        if self.doc_sentence_queries < 0 or self.doc_keyphrase_queries < 0:
            raise ConfigError("doc_sentence_queries and doc_keyphrase_queries must be >= 0")
        if self.keyphrase_terms < 1 or self.pseudo_query_words < 2 or self.train_query_repeats < 1:
            raise ConfigError("keyphrase_terms and train_query_repeats must be >= 1, pseudo_query_words >= 2")
        if not 0.0 <= self.cold_start_fraction < 1.0:
            raise ConfigError(f"cold_start_fraction must be in [0, 1), got {self.cold_start_fraction}")
        if not self.hybrid_weights or any(not 0.0 <= w <= 1.0 for w in self.hybrid_weights):
            raise ConfigError(f"hybrid_weights must be numbers in [0, 1] (at least one), got {self.hybrid_weights}")
        if self.dense_candidates < 1:
            raise ConfigError(f"dense_candidates must be >= 1, got {self.dense_candidates}")


def build_network(source: IdSource, config: FinetuneConfig) -> SemanticIdNetwork:
    """The network to fine-tune for the IDs of `source`.

    LMIndexer IDs: the indexer's saved network (counter head grown to the ID table if needed).
    Other IDs: the pretrained encoder with a fresh decoder, codebooks and counter head sized to them.
    """
    # Headroom above the largest collision group: documents indexed later (cold start, the service's
    # /index-documents) take the next free counter of their prefix, and a big group must not be full.
    table = source.table.counter_size
    counter_size = max(table + max(16, table // 2), config.min_counter_size)
    if source.network_dir is not None:
        saved = json.loads((source.network_dir / "network.json").read_text())["network"]
        if saved["num_levels"] != source.num_levels or saved["codebook_size"] < source.codebook_size:
            raise ConfigError(f"{source.network_dir}: network shape L={saved['num_levels']} "
                              f"K={saved['codebook_size']} does not fit the IDs (L={source.num_levels}, "
                              f"K={source.codebook_size})")
        network = SemanticIdNetwork.load(source.network_dir,
                                         counter_size=max(counter_size, int(saved["counter_size"])))
        logger.info("initialised from the indexer network %s (logits / %g)", source.network_dir,
                    config.indexer_logit_temperature)
        return soften_logits(network, config.indexer_logit_temperature)
    torch.manual_seed(config.seed)
    network_config = NetworkConfig(encoder=config.encoder, num_levels=source.num_levels,
                                   codebook_size=source.codebook_size, counter_size=counter_size,
                                   decoder_layers=config.decoder_layers)
    logger.info("fresh decoder for %s IDs: L=%d K=%d counter %d", source.method, source.num_levels,
                source.codebook_size, counter_size)
    return SemanticIdNetwork(network_config)


def soften_logits(network: SemanticIdNetwork, temperature: float) -> SemanticIdNetwork:
    """Divide every level's logits by `temperature`, in place, by scaling the final LayerNorm.

    The LMIndexer's codebooks are k-means centroids rescaled to |h| ~ sqrt(d), so its logits
    h . e are ~|h|^2 cos ~ 400 for MiniLM: a softmax saturated far beyond what fine-tuning can
    move (cross-entropies in the tens) and float32 log-probs whose rounding differs between torch
    and onnxruntime by ~5e-4. The final LayerNorm feeds only the output heads (codebooks as input
    embeddings are untouched), so scaling its weight and bias by 1/temperature divides the logits
    exactly and keeps every argmax, i.e. the indexer's greedy codes, unchanged.
    """
    if temperature != 1.0:
        with torch.no_grad():
            network.final_norm.weight.div_(temperature)
            network.final_norm.bias.div_(temperature)
    return network


def load_indexer_network(directory: Path, counter_size: int | None = None,
                         temperature: float = 10.0) -> SemanticIdNetwork:
    """The indexer network as the bundle serves it: counter head sized to `counter_size`, logits softened
    (argmax, i.e. its greedy codes, unchanged; see soften_logits), in eval mode."""
    overrides = {"counter_size": counter_size} if counter_size else {}
    return soften_logits(SemanticIdNetwork.load(directory, **overrides), temperature).eval()


def load_network_tokenizer(network: SemanticIdNetwork) -> Any:
    """The Hugging Face fast tokenizer of the network's encoder."""
    return load_tokenizer(network.config.encoder)


def level_losses(logits: Sequence[torch.Tensor], codes: torch.Tensor) -> torch.Tensor:
    """(L + 1,) cross-entropy of each level: logits[t] (B, size_t), codes (B, L + 1)."""
    return torch.stack([nn.functional.cross_entropy(x.float(), codes[:, t]) for t, x in enumerate(logits)])


def example_batches(num_examples: int, batch_size: int, seed: int, epoch: int, rank: int,
                    world_size: int) -> list[np.ndarray]:
    """This rank's batches of example indices in `epoch`: a permutation seeded by (seed, epoch) cut
    into batches of `batch_size` (the last, partial one dropped), every world_size-th for this rank
    (training.loop.shard), so a step of W ranks sees the W * batch_size examples of one process with
    W * batch_size. Fewer examples than that: W equal batches of what there is."""
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    size = batch_size if num_examples >= batch_size * world_size else max(1, num_examples // world_size)
    return shard([order[start:start + size] for start in range(0, num_examples - size + 1, size)], rank, world_size)


def loop_settings(config: FinetuneConfig, progress: bool = True) -> LoopSettings:
    """The training loop's settings of a fine-tuning run: `steps` steps, linear warm-up and decay."""
    return LoopSettings(epochs=0, max_steps=config.steps, lr=config.lr, weight_decay=config.weight_decay,
                        schedule="linear", warmup_steps=config.warmup_steps, grad_clip=config.grad_clip,
                        seed=config.seed, amp=config.amp, checkpoint_every=config.checkpoint_every,
                        checkpoint_epochs=False, progress=progress)


def train(network: SemanticIdNetwork, examples: Sequence[Example], config: FinetuneConfig,
          out_dir: Path, tokenizer: Any = None, progress: bool = True) -> dict[str, Any]:
    """Fine-tune `network` in place on `examples` with training.loop; checkpoints under out_dir/checkpoint.

    Resumes from out_dir/checkpoint when one exists. Returns the loss of every step and timings.
    """
    if not examples:
        raise ConfigError("no training examples (every target held out, or an empty task)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, config.num_threads))
    tokenizer = tokenizer or load_network_tokenizer(network)
    word_embeddings = getattr(getattr(network.encoder, "embeddings", None), "word_embeddings", None)
    if word_embeddings is None and hasattr(network.encoder, "embed_tokens"):  # T5 encoder stack
        word_embeddings = network.encoder.embed_tokens
    if word_embeddings is not None:
        word_embeddings.weight.requires_grad_(config.train_word_embeddings)
    texts = [e.text for e in examples]
    targets = torch.tensor([e.semantic_id for e in examples], dtype=torch.long)  # (N, L+1)

    def batches(epoch: int, rank: int, world_size: int) -> list[np.ndarray]:
        return example_batches(len(examples), config.batch_size, config.seed, epoch, rank, world_size)

    def loss_fn(model: nn.Module, rows: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        device = network.codebooks.device
        encoded = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                            max_length=config.max_input_length, return_tensors="pt")
        codes = targets[rows].to(device)  # (B, L+1)
        logits = model(encoded["input_ids"].to(device), encoded["attention_mask"].to(device), codes)
        per_level = level_losses(logits, codes)  # (L+1,)
        return per_level.mean(), {f"level{t}": value for t, value in enumerate(per_level.detach().tolist())}

    result = train_loop(network, loop_settings(config, progress), batches, loss_fn, out_dir / CHECKPOINT_DIR,
                        lr_of=lambda name: config.lr if name.startswith("encoder.") else config.head_lr,
                        no_decay=("codebooks", "counter_head"), name="finetune")
    losses = result.step_losses
    logger.info("fine-tuned %d steps (%d examples) in %.1f s, final loss %.4f", result.steps - result.resumed_from,
                len(examples), result.seconds, float(np.mean(losses[-20:])) if losses else math.nan)
    return {"steps": result.steps, "resumed_from": result.resumed_from, "examples": len(examples),
            "losses": losses, "train_seconds": round(result.seconds, 3), "device": result.device,
            "world_size": result.world_size, "config": config_to_dict(config)}


def finalize_checkpoint(out_dir: Path) -> None:
    """Remove the resumable checkpoint once the final network is saved."""
    shutil.rmtree(Path(out_dir) / CHECKPOINT_DIR, ignore_errors=True)
