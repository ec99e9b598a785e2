"""The settings of the LMIndexer schedule (presets: training/configs/lmindexer-*.toml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from training.encoder import DEFAULT_ENCODER
from training.errors import ConfigError


@dataclass(frozen=True)
class LMIndexerConfig:
    """Every setting of the LMIndexer schedule (presets: training/configs/lmindexer-*.toml)."""

    # -- network
    encoder: str = field(default=DEFAULT_ENCODER, metadata={"help": "Pretrained encoder (packaged default or folder)."})
    num_levels: int = field(default=3, metadata={"help": "L, learned levels (1..4); the counter follows."})
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
    tau: float = field(default=1.0, metadata={
        "help": "Temperature of the quantizer's backward softmax and of L_commitment, on the scaled logits "
                "h . e / sqrt(d) (d = encoder width; see IndexerModel.logit_temperature). 1 = the official value."})
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
    consolidate_epochs: float = field(default=0.0, metadata={
        "help": "Epochs of a last 'consolidation' stage after the last level (0 = none): the ID decoder and all "
                "codebooks learn the whole ID table by teacher-forced CE on every level's codes (L_commitment on "
                "all levels; no reconstructor, cached encoder states), so the final network's greedy codes, which "
                "the table is re-assigned to, reproduce the codes each level chose."})
    last_level_assignment: Literal["argmax", "distinct"] = field(default="argmax", metadata={
        "help": "How the last learned level's codes are assigned before consolidation. 'argmax': each document's "
                "best code. 'distinct': within each prefix of the earlier levels, the documents get distinct codes "
                "maximising their summed logits (an optimal assignment, scipy's linear_sum_assignment; "
                "ceil(group / K) documents per code when a group outgrows K), so documents sharing a prefix are "
                "told apart by a learned code rather than the counter; consolidation then teaches the network this "
                "table, which greedy re-assignment reproduces. Needs consolidate_epochs > 0; with one learned level "
                "(no earlier prefix) it changes nothing."})
    consolidate_tau: float = field(default=1.0, metadata={
        "help": "Temperature of the consolidation CE on the scaled logits h . e / sqrt(d) (smaller: larger margins)."})
    consolidate_lr: float = field(default=0.0, metadata={
        "help": "LR of the consolidation stage (0 = lr)."})
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
    residual_projection: Literal["codebooks", "prefix_means"] = field(default="prefix_means", metadata={
        "help": "Levels >= 2 with residual_kmeans: the subspace the new codebook is kept off. 'codebooks': the span "
                "of the earlier codebooks; 'prefix_means': the span of the level's own prefix means of h (their top "
                "directions, at most d / 2), so argmax h . e ignores what all siblings share and follows the residual "
                "k-means partition (quick preset, 500 Beauty items, 3 x 32: collisions 66% -> 41%, largest "
                "group 22 -> 6)."})
    kmeans_normalize: bool = field(default=True, metadata={
        "help": "Cluster unit-length h and give all centroids the mean |h| (argmax-dot = cosine k-means)."})
    # -- run
    seed: int = field(default=42, metadata={"help": "Seed of everything (CPU runs are deterministic)."})
    agreement_documents: int = field(default=0, metadata={
        "help": "Documents (the first ones) whose greedy codes from the saved network are compared with the "
                "written IDs after training, for final_network_agreement (0 = all)."})
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
        if not 1 <= self.num_levels <= 4:
            raise ConfigError(f"num_levels must be in 1..4, got {self.num_levels}")
        if self.codebook_size < 2:
            raise ConfigError("codebook_size must be >= 2")
        if not self.hint_mask_probs or any(not 0.0 <= p <= 1.0 for p in self.hint_mask_probs):
            raise ConfigError("hint_mask_probs must be probabilities")
        if not self.nocode_epochs or not self.full_epochs:
            raise ConfigError("nocode_epochs and full_epochs need at least one value")
        if not 0.0 < self.recon_target_fraction <= 1.0 or not 0.0 < self.train_fraction <= 1.0:
            raise ConfigError("recon_target_fraction and train_fraction must be in (0, 1]")
        if self.tau <= 0 or self.contrastive_temperature <= 0 or self.consolidate_tau <= 0:
            raise ConfigError("tau, consolidate_tau and contrastive_temperature must be > 0")
        if self.consolidate_epochs < 0 or self.consolidate_lr < 0:
            raise ConfigError("consolidate_epochs and consolidate_lr must be >= 0")
        if self.last_level_assignment == "distinct" and not self.consolidate_epochs:
            raise ConfigError("last_level_assignment = 'distinct' needs consolidate_epochs > 0 (the network must "
                              "learn the table it did not choose by argmax)")
        if self.agreement_documents < 0:
            raise ConfigError("agreement_documents must be >= 0")
        if self.group_size < 1 or self.batch_size < 2:
            raise ConfigError("group_size must be >= 1 and batch_size >= 2")

    def per_level(self, values: tuple[Any, ...], level: int) -> Any:
        """values[level], or the last value for deeper levels."""
        return values[min(level, len(values) - 1)]
