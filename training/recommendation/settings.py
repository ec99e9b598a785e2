"""Settings of the item-token recommender: one frozen dataclass, filled from
`training/configs/recommender-<preset>.toml` and `--set key=value` (unknown keys are errors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from training.errors import ConfigError


@dataclass(frozen=True)
class RecommenderSettings:
    """Model, loss, training and evaluation settings of the item-token recommender."""

    # sequence model
    d_model: int = field(default=128, metadata={"help": "Width of item tokens and of the Transformer."})
    num_layers: int = field(default=2, metadata={"help": "Causal self-attention blocks over the history."})
    num_heads: int = field(default=2, metadata={"help": "Attention heads (must divide d_model)."})
    ffn_multiplier: int = field(default=4, metadata={"help": "Feed-forward width = ffn_multiplier * d_model."})
    max_history: int = field(default=50, metadata={
        "help": "Items of history the model reads; a longer history is cut to its most recent items."})
    dropout: float = field(default=0.2, metadata={"help": "Dropout on tokens, attention and blocks."})
    counter_in_token: bool = field(default=True, metadata={
        "help": "Add an embedding of the collision counter to the item token (as of every learned level)."})
    code_init: Literal["codebooks", "random"] = field(default="codebooks", metadata={
        "help": "Initialise the item tokens' code embeddings from the indexer's codebooks, projected by the "
                "text projection, where the ID source has codebooks in the text vectors' space (LMIndexer); "
                "'random' always starts them at random."})
    # ID decoder
    item_id_embedding: bool = field(default=False, metadata={
        "help": "Add a learned per-item embedding (SASRec's item ID embedding) to the tokens of the items seen in "
                "training. An item added later (or held out as cold) has none: its token is its text vector and "
                "codes alone, which item_id_dropout trains the model to read."})
    item_id_dropout: float = field(default=0.5, metadata={
        "help": "Probability that a training token (in a history, as a target or as a negative) is built without "
                "its item ID embedding, so that the model also ranks and reads items that have none."})
    decoder: Literal["transformer", "mlp"] = field(default="transformer", metadata={
        "help": "'transformer': a small causal Transformer over [hidden, code_0, ..., code_{l-1}] predicts "
                "level l; 'mlp': an MLP of hidden + the summed embeddings of the codes so far."})
    decoder_layers: int = field(default=1, metadata={"help": "Blocks of the transformer ID decoder."})
    # losses
    id_loss_weight: float = field(default=1.0, metadata={
        "help": "Weight of the ID decoder's loss (mean CE per level)."})
    dense_loss_weight: float = field(default=1.0, metadata={
        "help": "Weight of the dense head's loss (softmax over the whole catalogue)."})
    dense_temperature: float = field(default=1.0, metadata={
        "help": "Dense scores are (query . item token) / dense_temperature."})
    dense_negatives: int = field(default=2048, metadata={
        "help": "Dense loss: warm items drawn uniformly per batch as negatives (0 = softmax over all items)."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing of the ID decoder's CE."})
    # training (the optimiser and the stopping rule)
    batch_size: int = field(default=128, metadata={"help": "User sequences per step."})
    lr: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    warmup_steps: int = field(default=100, metadata={"help": "Linear warm-up steps."})
    grad_clip: float = field(default=1.0, metadata={"help": "Gradient-norm clipping (0 = off)."})
    max_epochs: int = field(default=40, metadata={"help": "Upper bound on epochs."})
    patience: int = field(default=3, metadata={
        "help": "Stop after this many epochs without a better validation NDCG@10 (0 = never; keep the last)."})
    eval_users: int = field(default=4000, metadata={
        "help": "Validation users scored for early stopping (seeded sample; 0 = all)."})
    eval_ranking: Literal["generative", "hybrid", "dense"] = field(default="generative", metadata={
        "help": "The ranking whose validation NDCG@10 drives early stopping."})
    time_budget_s: float = field(default=3300.0, metadata={"help": "Stop training after this many seconds (0 = none)."})
    seed: int = field(default=42, metadata={"help": "Seed of initialisation, data order and samples."})
    num_threads: int = field(default=2, metadata={"help": "torch CPU threads (0 = leave torch's setting)."})
    # evaluation
    beam_size: int = field(default=20, metadata={"help": "Beam width of constrained beam search (1..100)."})
    exclude_history: bool = field(default=True, metadata={
        "help": "Remove items of the user's history from the rankings (set false where repeat purchases count)."})
    hybrid_weights: tuple[float, ...] = field(default=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
                                              metadata={
        "help": "Candidate weights w of the hybrid rule (1 - w) * generative + w * dense log-probability; "
                "the one with the best validation NDCG@10 is kept."})
    eval_batch_size: int = field(default=1024, metadata={"help": "Users per evaluation batch."})
    # data
    cold_start_fraction: float = field(default=0.05, metadata={
        "help": "Fraction of items never seen in training (not as targets, not in histories), indexed afterwards."})

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ConfigError(f"num_heads {self.num_heads} must divide d_model {self.d_model}")
        for name in ("d_model", "num_layers", "num_heads", "ffn_multiplier", "max_history", "decoder_layers",
                     "batch_size", "max_epochs", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.patience < 0:
            raise ConfigError(f"patience must be >= 0, got {self.patience}")
        if not 1 <= self.beam_size <= 100:
            raise ConfigError(f"beam_size must be in 1..100, got {self.beam_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.item_id_dropout < 1.0:
            raise ConfigError(f"item_id_dropout must be in [0, 1), got {self.item_id_dropout}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.dense_negatives < 0:
            raise ConfigError(f"dense_negatives must be >= 0, got {self.dense_negatives}")
        if self.dense_temperature <= 0:
            raise ConfigError(f"dense_temperature must be > 0, got {self.dense_temperature}")
        if self.id_loss_weight < 0 or self.dense_loss_weight < 0 or self.id_loss_weight + self.dense_loss_weight == 0:
            raise ConfigError("id_loss_weight and dense_loss_weight must be >= 0 and not both 0")
        if not self.hybrid_weights or any(not 0.0 <= w <= 1.0 for w in self.hybrid_weights):
            raise ConfigError(f"hybrid_weights must be numbers in [0, 1] (at least one), got {self.hybrid_weights}")
        if not 0.0 <= self.cold_start_fraction < 1.0:
            raise ConfigError(f"cold_start_fraction must be in [0, 1), got {self.cold_start_fraction}")
