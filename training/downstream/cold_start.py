"""Cold start: give documents that fine-tuning never saw an ID, the way the service's
POST /index-documents will (docs/bundle.md): the indexer's greedy argmax code per learned level,
then the smallest free collision counter under that prefix in the trie of the IDs already taken.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def greedy_codes(model: Any, texts: Sequence[str], codebook_sizes: Sequence[int], batch_size: int = 64) -> np.ndarray:
    """(N, L) learned codes: argmax per level, each level conditioned on the codes chosen before it.

    `model` has tokenize / encode_ids / decoder_step (training.downstream.evaluate.TorchModel or the
    exported ONNX model); W = 1 beam per document.
    """
    num_levels = len(codebook_sizes) - 1
    out = np.zeros((len(texts), num_levels), dtype=np.int64)
    for start in range(0, len(texts), batch_size):
        ids, mask = model.tokenize(texts[start:start + batch_size])
        states = model.encode_ids(ids, mask)  # (B, S, d)
        codes = np.zeros((len(ids), 1, num_levels), dtype=np.int64)  # (B, W=1, L)
        for level in range(num_levels):
            log_probs = model.decoder_step(states, mask, codes, level)  # (B, 1, V)
            codes[:, 0, level] = log_probs[:, 0, : codebook_sizes[level]].argmax(-1)
        out[start:start + len(ids)] = codes[:, 0]
    return out


def assign_ids(trie: Any, codes: np.ndarray, rows: np.ndarray) -> tuple[Any, np.ndarray]:
    """Insert documents with learned `codes` (M, L) at trie `rows` (M,), one at a time, each taking the
    next free counter under its prefix (`SemanticIdTrie.next_counter`). Returns the new trie and the
    (M, L + 1) IDs. Raises trie's CounterExhaustedError when a prefix is full."""
    ids = np.zeros((len(codes), codes.shape[1] + 1), dtype=np.int64)
    for i, (prefix, row) in enumerate(zip(codes, rows, strict=True)):
        counter = trie.next_counter(tuple(int(c) for c in prefix))
        ids[i, :-1] = prefix
        ids[i, -1] = counter
        trie = trie.with_inserted(ids[i:i + 1], np.asarray([row], dtype=np.int64))
    return trie, ids


def index_cold_documents(indexer: Any, texts: Sequence[str], warm_ids: np.ndarray, warm_rows: np.ndarray,
                         cold_rows: np.ndarray, codebook_sizes: Sequence[int]) -> tuple[Any, np.ndarray]:
    """Build the trie of the warm IDs (at `warm_rows`), then index the cold documents' `texts` into it at
    `cold_rows`. Returns (trie of all documents, (M, L + 1) cold IDs)."""
    from trie import SemanticIdTrie

    order = np.argsort(warm_rows)
    # Row i of the built trie is warm_ids[order][i]; cold documents take the rows after the warm ones.
    trie = SemanticIdTrie.build(warm_ids[order], codebook_sizes=list(codebook_sizes))
    if not np.array_equal(warm_rows[order], np.arange(len(warm_rows))):
        raise ValueError("warm rows must be 0..N_warm-1 (cold documents come after the warm ones)")
    codes = greedy_codes(indexer, texts, codebook_sizes)
    trie, ids = assign_ids(trie, codes, cold_rows)
    logger.info("indexed %d cold documents (%d distinct learned prefixes)", len(ids),
                len({tuple(c) for c in codes.tolist()}))
    return trie, ids
