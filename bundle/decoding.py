"""The grouping of live beams into model batches: a trie StepFn from a decoder step over (B, W, L) codes.

``trie.constrained_beam_search`` calls ``step_fn(level, query_index (N,), prefixes (N, level))`` for
the live beams only; the bundle's decoder step (the ONNX graph, or the torch network it was exported
from) scores W prefixes per query against that query's encoder states, computed once:
``(encoder_states (B, S, d), attention_mask (B, S), codes (B, W, L), level) -> log_probs (B, W, V)``.
:func:`grouped_step_fn` turns the second into the first: the beams of each query still alive become
one row of a ``(B', W, L)`` block, ``W`` = the most beams any of them has, shorter rows padded with
code 0 (computed and dropped). Evaluation, the export's parity check and the service all decode
through it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from trie import StepFn

QueryStep = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
"""``step(queries (B',) int64, codes (B', W, L) int64, level) -> log_probs (B', W, >= codebook_sizes[level])``:
a decoder step over the queries ``queries`` (ascending, distinct indices into the search's batch) only."""


def grouped_step_fn(step: QueryStep, codebook_sizes: Sequence[int]) -> StepFn:
    """The trie StepFn of a query-grouped decoder step (module docstring). ``codebook_sizes``: ``L + 1`` sizes."""
    num_levels = len(codebook_sizes) - 1
    sizes = tuple(int(s) for s in codebook_sizes)

    def step_fn(level: int, query_index: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
        query_index = np.asarray(query_index, dtype=np.int64)  # (N,)
        count = len(query_index)
        if count == 0:
            return np.zeros((0, sizes[level]), dtype=np.float32)
        prefixes = np.asarray(prefixes, dtype=np.int64).reshape(count, level)  # (N, level)
        # The beam search hands the beams grouped by query, ascending; any other order is sorted first.
        order = None
        if count > 1 and (query_index[1:] < query_index[:-1]).any():
            order = np.argsort(query_index, kind="stable")
            query_index, prefixes = query_index[order], prefixes[order]
        starts = np.flatnonzero(np.r_[True, query_index[1:] != query_index[:-1]])  # (B',) first beam of each query
        counts = np.diff(np.r_[starts, count])  # (B',)
        queries = query_index[starts]
        batch_pos = np.repeat(np.arange(len(queries)), counts)  # (N,) row of each beam in the block
        beam_pos = np.arange(count) - np.repeat(starts, counts)  # (N,) slot of each beam in its row
        codes = np.zeros((len(queries), int(counts.max()), num_levels), dtype=np.int64)  # (B', W, L)
        if level:
            codes[batch_pos, beam_pos, :level] = prefixes
        log_probs = step(queries, codes, level)  # (B', W, V)
        out = log_probs[batch_pos, beam_pos, : sizes[level]]  # (N, K_level)
        if order is None:
            return out
        unsorted = np.empty_like(out)
        unsorted[order] = out
        return unsorted

    return step_fn
