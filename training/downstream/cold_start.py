"""Cold start: give documents that fine-tuning never saw an ID, the way the service's
POST /index-documents does (docs/bundle.md): the indexer's greedy argmax code per learned level, then
the next free collision counter under that prefix, falling back to the next most probable prefix when
it is full. Both rules are trie's (`trie.greedy_codes`, `trie.next_free_id`); this module only runs
the torch indexer through them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from trie import FALLBACK_PREFIXES, SemanticIdTrie, assign_ids
from trie import greedy_codes as greedy_codes_of

logger = logging.getLogger(__name__)


def greedy_codes(model: Any, texts: Sequence[str], alternatives: int = FALLBACK_PREFIXES,
                 batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(N, L) learned codes and (N, A) ranked last-level codes of `texts` (`trie.greedy_codes`), `batch_size`
    texts at a time. `model` has encode(texts) and step_fn(encoded) (TorchModel, or bundle.OnnxRunner)."""
    parts = [greedy_codes_of(model.step_fn(model.encode(texts[start:start + batch_size])),
                             len(texts[start:start + batch_size]), model.codebook_sizes, alternatives)
             for start in range(0, len(texts), batch_size)]
    if not parts:
        sizes = model.codebook_sizes
        return (np.zeros((0, len(sizes) - 1), dtype=np.int64),
                np.zeros((0, min(alternatives, sizes[-2])), dtype=np.int64))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def index_cold_documents(indexer: Any, texts: Sequence[str], warm_ids: np.ndarray, warm_rows: np.ndarray,
                         cold_rows: np.ndarray, codebook_sizes: Sequence[int]) -> tuple[SemanticIdTrie, np.ndarray]:
    """Build the trie of the warm IDs (at `warm_rows`), then index the cold documents' `texts` into it at
    `cold_rows`, in order. Returns (trie of all documents, (M, L + 1) cold IDs)."""
    order = np.argsort(warm_rows)
    # Row i of the built trie is warm_ids[order][i]; cold documents take the rows after the warm ones.
    trie = SemanticIdTrie.build(warm_ids[order], codebook_sizes=list(codebook_sizes))
    if not np.array_equal(warm_rows[order], np.arange(len(warm_rows))):
        raise ValueError("warm rows must be 0..N_warm-1 (cold documents come after the warm ones)")
    codes, ranked = greedy_codes(indexer, texts)
    ids = assign_ids(trie, codes, ranked)
    if len(ids):
        trie = trie.with_inserted(ids, np.asarray(cold_rows, dtype=np.int64))
    logger.info("indexed %d cold documents (%d distinct learned prefixes)", len(ids),
                len({tuple(c) for c in codes.tolist()}))
    return trie, ids
