"""The indexer's inputs: the tokenized corpus, and the encoder states of its frozen part, run once.

With `train_encoder_layers` = 0 (or n > 0 for a BERT-like encoder) the bottom of the encoder
never changes while indexing: its outputs are computed once over the corpus, kept in memory (one
(S_i, d) float32 tensor per document) and on disk under `$LMINDEXER_CACHE_DIR/encoder_states`
(a key covers the encoder, max_length, the frozen layers and every text), which is what makes
the CPU presets feasible. `EncoderStates.states` then runs only the trained top layers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.encoder import load_tokenizer, resolve_encoder_path
from training.errors import ConfigError
from training.indexing.embedding_cache import cache_dir
from training.indexing.lmindexer.config import LMIndexerConfig
from training.indexing.losses import IGNORE_INDEX
from training.indexing.network import SemanticIdNetwork
from training.progress import progress_bar

logger = logging.getLogger(__name__)


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


def pad_rows(rows: Sequence[torch.Tensor], value: float | int) -> torch.Tensor:
    """N rows (S_i, ...) -> (N, max S_i, ...) padded with `value` at the end."""
    return nn.utils.rnn.pad_sequence(list(rows), batch_first=True, padding_value=value)


def _bert_like(encoder: nn.Module) -> bool:
    return hasattr(encoder, "embeddings") and hasattr(getattr(encoder, "encoder", None), "layer")


def _extended_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) 0/1 -> additive (B, 1, 1, S) mask for a BERT layer called directly."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class EncoderStates:
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
        path = state_cache_path(key)
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
            ids = pad_rows([corpus.input_ids[i] for i in rows], corpus.pad_id).to(device)
            mask = (pad_rows([torch.ones_like(corpus.input_ids[i]) for i in rows], 0)).to(device)
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
        ids = pad_rows([corpus.input_ids[i] for i in rows], corpus.pad_id).to(device)
        mask = pad_rows([torch.ones_like(corpus.input_ids[i]) for i in rows], 0).to(device)
        if self.frozen_layers is None:
            return ids, mask, self.network.encode(ids, mask)
        assert self.cache is not None, "build_cache first"
        hidden = pad_rows([self.cache[i] for i in rows], 0.0).to(device=device, dtype=torch.float32)
        if self.top_layers:
            extended = _extended_mask(mask, hidden.dtype)
            for layer in self.top_layers:
                hidden = _layer_output(layer(hidden, attention_mask=extended))
        return ids, mask, hidden


def _layer_output(output: Any) -> torch.Tensor:
    """A transformers layer returns a tensor or a tuple whose first item is the states."""
    return output[0] if isinstance(output, tuple) else output


def state_cache_path(key: str | None) -> Path | None:
    """Where the encoder states of cache key `key` live ($LMINDEXER_CACHE_DIR/encoder_states), None when
    the key is None (ranks > 0 do not write) or the cache is off."""
    if key is None:
        return None
    folder = cache_dir()
    return None if folder is None else folder.parent / "encoder_states" / f"{key}.pt"


def state_cache_key(texts: Sequence[str], config: LMIndexerConfig, frozen_layers: int | None) -> str:
    """The cache key of the frozen encoder states: encoder folder, max_length, frozen layers, every text."""
    digest = hashlib.sha256()
    digest.update(str(resolve_encoder_path(config.encoder).resolve()).encode())
    digest.update(f"|{config.max_length}|{frozen_layers}|float32|{len(texts)}|".encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()[:32]
