"""The semantic-ID network shared by indexing, fine-tuning and export.

One architecture serves all three jobs (design.md, "Model"):

- encoder: a pretrained Hugging Face text encoder (default all-MiniLM-L6-v2, d = 384);
- ID decoder: a small pre-LayerNorm Transformer decoder that cross-attends to the encoder states.
  Its input is a learned start vector followed by the embeddings of the codes chosen so far; its
  output at position t is h^t, the state that predicts the code of level t;
- codebooks: one K x d matrix E^t per learned level, stored together as `codebooks` (L, K, d).
  E^t is both the output head of level t (logits = h^t . E^t) and the input embedding of the codes
  of level t (the official code copies each codebook into the token embeddings the same way);
- the counter level L has its own small head `counter_head` (C, d).

Beams are a first-class dimension: the decoder takes `codes` shaped (B, W, t) for W candidate
prefixes per query and attends to encoder states shaped (B, S, d), so a query's encoder states
are projected once, not once per beam. `decoder_step` is the function exported to ONNX
(docs/bundle.md); `forward` is the teacher-forced path used for training.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel

from training.config import build_config
from training.encoder import DEFAULT_ENCODER, resolve_encoder_path
from training.indexing.attention import absorbed_attention, attention
from training.progress import library_bars_on_terminal_only

CONFIG_FILE = "network.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class NetworkConfig:
    """Shape of the semantic-ID network."""

    encoder: str = field(default=DEFAULT_ENCODER, metadata={
        "help": "Pretrained encoder: the packaged default or a local Hugging Face model folder."})
    num_levels: int = field(default=2, metadata={
        "help": "L, learned levels. 2 suits ~10k documents, 3 suits 100k and more."})
    codebook_size: int = field(default=512, metadata={"help": "K, codes per learned level."})
    counter_size: int = field(default=64, metadata={
        "help": "Codes of the collision-counter level: the most documents one learned prefix can hold."})
    decoder_layers: int = field(default=2, metadata={"help": "Layers of the ID decoder."})
    decoder_heads: int = field(default=6, metadata={"help": "Attention heads of the ID decoder (divides d)."})
    decoder_ff_size: int = field(default=1024, metadata={"help": "Feed-forward width of the ID decoder."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout in the ID decoder."})

    def __post_init__(self) -> None:
        if not 1 <= self.num_levels <= 8:
            raise ValueError(f"num_levels must be in 1..8, got {self.num_levels}")
        if self.codebook_size < 2 or self.counter_size < 1:
            raise ValueError("codebook_size must be >= 2 and counter_size >= 1")

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """Codes per level, the counter level last: (K, ..., K, C)."""
        return (self.codebook_size,) * self.num_levels + (self.counter_size,)


class DecoderLayer(nn.Module):
    """Pre-LN block: causal self-attention within each beam, cross-attention to the encoder, FFN."""

    def __init__(self, d: int, num_heads: int, ff_size: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.self_norm = nn.LayerNorm(d)
        self.self_qkv = nn.Linear(d, 3 * d)
        self.self_out = nn.Linear(d, d)
        self.cross_norm = nn.LayerNorm(d)
        self.cross_q = nn.Linear(d, d)
        self.cross_kv = nn.Linear(d, 2 * d)
        self.cross_out = nn.Linear(d, d)
        self.ff_norm = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff_size), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_size, d))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
                folded: bool = False) -> torch.Tensor:
        """x (B, W, P, d) decoder states; memory (B, S, d); memory_mask (B, S) bool -> (B, W, P, d).

        folded: the same numbers with the cross-attention's key / value projections folded into the
        queries (attention.absorbed_attention), O(W P (d^2 + S d)) instead of O(S d^2) per query: far
        less when a few positions read many encoder states, as while indexing.
        """
        b, w, p, d = x.shape
        # Self-attention: each beam is its own causal sequence of P positions.
        flat = x.reshape(b * w, p, d)
        q, k, v = self.self_qkv(self.self_norm(flat)).chunk(3, dim=-1)
        causal = torch.ones(p, p, dtype=torch.bool, device=x.device).tril()  # (P, P)
        attended = attention(q, k, v, causal.view(1, 1, p, p), self.num_heads)
        flat = flat + self.dropout(self.self_out(attended))
        # Cross-attention: all W*P positions of a query attend to that query's S encoder states.
        x = flat.reshape(b, w * p, d)
        q = self.cross_q(self.cross_norm(x))  # (B, W*P, d)
        if folded:
            weight, bias = self.cross_kv.weight, self.cross_kv.bias  # (2d, d), (2d,): keys then values
            attended = absorbed_attention(q, memory, weight[:d], weight[d:], bias[d:], memory_mask.view(b, 1, 1, -1),
                                          self.num_heads)
        else:
            k, v = self.cross_kv(memory).chunk(2, dim=-1)  # (B, S, d) each, once per query
            attended = attention(q, k, v, memory_mask.view(b, 1, 1, -1), self.num_heads)
        x = x + self.dropout(self.cross_out(attended))
        x = x + self.dropout(self.ff(self.ff_norm(x)))
        return x.reshape(b, w, p, d)

    def forward_at(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
                   position: torch.Tensor) -> torch.Tensor:
        """The output of `forward` at one position only: x (B, W, P, d), position int64 () -> (B, W, d).

        Equal to `forward(...)[:, :, position]`, but the self-attention query, the cross-attention and
        the feed-forward run on one row per beam instead of P: the exported decoder step needs only
        the state of the level it predicts, and those are most of a layer's work.
        """
        b, w, p, d = x.shape
        flat = x.reshape(b * w, p, d)
        q, k, v = self.self_qkv(self.self_norm(flat)).chunk(3, dim=-1)  # (B*W, P, d) each
        index = position.reshape(1, 1, 1).expand(b * w, 1, d)
        row = flat.gather(1, index)  # (B*W, 1, d)
        visible = (torch.arange(p, device=x.device) <= position).view(1, 1, 1, p)  # causal, one row
        attended = attention(q.gather(1, index), k, v, visible, self.num_heads)  # (B*W, 1, d)
        row = (row + self.dropout(self.self_out(attended))).reshape(b, w, d)
        query = self.cross_q(self.cross_norm(row))  # (B, W, d)
        k, v = self.cross_kv(memory).chunk(2, dim=-1)  # (B, S, d) each
        attended = attention(query, k, v, memory_mask.view(b, 1, 1, -1), self.num_heads)
        row = row + self.dropout(self.cross_out(attended))
        return row + self.dropout(self.ff(self.ff_norm(row)))  # (B, W, d)


class SemanticIdNetwork(nn.Module):
    """Encoder + ID decoder + per-level codebooks + counter head (shapes in the module docstring)."""

    def __init__(self, config: NetworkConfig, encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        if encoder is None:
            library_bars_on_terminal_only()
            encoder = AutoModel.from_pretrained(resolve_encoder_path(config.encoder), local_files_only=True)
        if getattr(encoder.config, "is_encoder_decoder", False):
            encoder = encoder.get_encoder()
        self.encoder = encoder
        d = int(encoder.config.hidden_size if hasattr(encoder.config, "hidden_size") else encoder.config.d_model)
        if d % config.decoder_heads:
            raise ValueError(f"decoder_heads={config.decoder_heads} must divide the encoder width {d}")
        self.hidden_size = d
        self.start = nn.Parameter(torch.randn(d) * 0.02)
        self.position = nn.Embedding(config.num_levels + 1, d)
        nn.init.normal_(self.position.weight, std=0.02)
        self.layers = nn.ModuleList(
            DecoderLayer(d, config.decoder_heads, config.decoder_ff_size, config.dropout)
            for _ in range(config.decoder_layers)
        )
        if config.decoder_layers < 1:
            raise ValueError("decoder_layers must be >= 1")
        self.final_norm = nn.LayerNorm(d)
        # (L, K, d): E^t for every learned level. Replaced by k-means centroids during indexing.
        self.codebooks = nn.Parameter(torch.randn(config.num_levels, config.codebook_size, d) / math.sqrt(d))
        self.counter_head = nn.Parameter(torch.randn(config.counter_size, d) * 0.02)  # (C, d)

    # ----------------------------------------------------------------------------------------------
    # building blocks

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, S) token ids and mask -> encoder states (B, S, d)."""
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (..., t) with t <= L, column j a code of level j -> (..., t, d) code vectors E^j[c]."""
        t = codes.shape[-1]
        levels = torch.arange(t, device=codes.device).expand_as(codes)  # (..., t)
        return self.codebooks[levels, codes]

    def decode(self, encoder_states: torch.Tensor, attention_mask: torch.Tensor,
               code_vectors: torch.Tensor, folded: bool = False) -> torch.Tensor:
        """Decoder states for every position.

        encoder_states (B, S, d); attention_mask (B, S); code_vectors (B, W, t, d), the input vectors of
        the t codes chosen so far (embed_codes, or the quantised vectors while indexing).
        Returns (B, W, t + 1, d): position j holds h^j, the state that predicts level j. folded: the
        same, computed with folded cross-attention (DecoderLayer.forward): 20-40x less decoder work
        while indexing, where t + 1 <= L + 1 positions read S encoder states.
        """
        b, w, t, d = code_vectors.shape
        start = self.start.view(1, 1, 1, d).expand(b, w, 1, d)
        x = torch.cat([start, code_vectors], dim=2)  # (B, W, t+1, d)
        x = x + self.position.weight[: t + 1].view(1, 1, t + 1, d)
        memory_mask = attention_mask.bool()
        for layer in self.layers:
            x = layer(x, encoder_states, memory_mask, folded)
        return self.final_norm(x)

    def level_logits(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        """hidden (..., d) -> logits (..., codebook_sizes[level]): h . E^level, or the counter head."""
        head = self.codebooks[level] if level < self.config.num_levels else self.counter_head
        return hidden @ head.T

    # ----------------------------------------------------------------------------------------------
    # the two entry points: training (teacher forcing) and the exported decoder step

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                codes: torch.Tensor) -> list[torch.Tensor]:
        """Teacher-forced logits of every level.

        input_ids, attention_mask (B, S); codes (B, L + 1) the target semantic IDs (counter last).
        Returns L + 1 tensors: (B, K) for each learned level, then (B, C) for the counter.
        """
        encoder_states = self.encode(input_ids, attention_mask)
        learned = codes[:, None, : self.config.num_levels]  # (B, 1, L)
        hidden = self.decode(encoder_states, attention_mask, self.embed_codes(learned))[:, 0]  # (B, L+1, d)
        return [self.level_logits(hidden[:, level], level) for level in range(self.config.num_levels + 1)]

    def decoder_step(self, encoder_states: torch.Tensor, attention_mask: torch.Tensor,
                     codes: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the codes of `level` for W prefixes per query (docs/bundle.md).

        encoder_states (B, S, d); attention_mask (B, S); codes (B, W, L) with only [..., :level] read;
        level: int64 scalar tensor in 0..L. Returns (B, W, V), V = max(codebook_sizes); entries past
        codebook_sizes[level] are padding. Causal attention makes position `level` depend on
        codes[..., :level] only, so the unread columns may hold anything.
        """
        config = self.config
        code_vectors = self.embed_codes(codes)  # (B, W, L, d)
        b, w, t, d = code_vectors.shape
        start = self.start.view(1, 1, 1, d).expand(b, w, 1, d)
        x = torch.cat([start, code_vectors], dim=2) + self.position.weight[: t + 1].view(1, 1, t + 1, d)
        memory_mask = attention_mask.bool()
        # Every layer but the last runs on all positions (the last layer's keys need them); the last
        # layer runs at position `level` only. Same numbers as decode(...)[:, :, level].
        for layer in self.layers[:-1]:
            x = layer(x, encoder_states, memory_mask)
        state = self.final_norm(self.layers[-1].forward_at(x, encoder_states, memory_mask, level))  # (B, W, d)
        width = max(config.codebook_sizes)
        heads = torch.cat([
            nn.functional.pad(self.codebooks, (0, 0, 0, width - config.codebook_size)),
            nn.functional.pad(self.counter_head, (0, 0, 0, width - config.counter_size)).unsqueeze(0),
        ])  # (L+1, V, d)
        sizes = torch.tensor(config.codebook_sizes, device=state.device)  # (L+1,)
        valid = torch.arange(width, device=state.device).unsqueeze(0) < sizes.unsqueeze(1)  # (L+1, V)
        head = heads.index_select(0, level.reshape(1)).squeeze(0)  # (V, d)
        logits = state @ head.T  # (B, W, V)
        padding = valid.index_select(0, level.reshape(1)).view(1, 1, width)
        logits = logits.masked_fill(~padding, -1e9)
        return logits.log_softmax(dim=-1)

    # ----------------------------------------------------------------------------------------------
    # persistence: safetensors + the config, so a checkpoint describes itself

    def save(self, directory: str | Path) -> None:
        """Write network.json (config and encoder architecture) and model.safetensors into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"network": dataclasses.asdict(self.config), "encoder_config": self.encoder.config.to_dict()}
        tmp_config = directory / f".{CONFIG_FILE}.tmp"
        tmp_config.write_text(json.dumps(payload, indent=2))
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        tmp_weights = directory / f".{WEIGHTS_FILE}.tmp"
        save_file(state, str(tmp_weights))
        tmp_weights.replace(directory / WEIGHTS_FILE)
        tmp_config.replace(directory / CONFIG_FILE)

    @classmethod
    def load(cls, directory: str | Path, **overrides: object) -> SemanticIdNetwork:
        """Rebuild a saved network. `overrides` change NetworkConfig fields (e.g. a larger counter_size);
        tensors whose shape changed are kept where they overlap and freshly initialised elsewhere."""
        directory = Path(directory)
        payload = json.loads((directory / CONFIG_FILE).read_text())
        config = build_config(NetworkConfig, {**payload["network"], **overrides}, source=str(directory))
        encoder_config = AutoConfig.for_model(**payload["encoder_config"])
        encoder = AutoModel.from_config(encoder_config)
        network = cls(config, encoder=encoder)
        state = load_file(str(directory / WEIGHTS_FILE))
        own = network.state_dict()
        for name, tensor in state.items():
            if name in own and own[name].shape != tensor.shape:
                target = own[name].clone()
                overlap = tuple(slice(0, min(a, b)) for a, b in zip(target.shape, tensor.shape, strict=True))
                target[overlap] = tensor[overlap]
                state[name] = target
        network.load_state_dict(state)
        return network
