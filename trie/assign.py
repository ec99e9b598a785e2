"""How a new document gets its semantic ID: greedy learned codes, then the next free counter.

This is the one implementation of both rules (design.md, job 2); evaluation's cold start, the export,
the service's POST /index-documents and the tests all call it. Model-agnostic: the model is a trie
``StepFn`` (``step_fn(level, query_index (N,), prefixes (N, level)) -> (N, >= codebook_sizes[level])``
log-probabilities), the same function constrained beam search decodes with.

The counter rule (docs/bundle.md, "Indexing a new document"): the ID is the learned prefix plus the
smallest counter free under it. When every counter under that prefix is used, the last learned level's
next most probable codes are tried in order (up to ``FALLBACK_PREFIXES`` prefixes in all, the greedy one
first), each with its smallest free counter; when none has a free counter, CounterExhaustedError.

>>> trie = SemanticIdTrie.build(np.array([[1, 2, 0], [1, 2, 1]]), codebook_sizes=[4, 4, 2])
>>> next_free_id(trie, (1, 2), alternatives=(2, 0, 3))  # (1, 2) is full: the next most probable prefix
(1, 0, 0)
>>> assign_ids(trie, np.array([[3, 3], [3, 3]])).tolist()  # equal prefixes in one batch: successive counters
[[3, 3, 0], [3, 3, 1]]
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from trie.beam_search import StepFn
from trie.errors import CounterExhaustedError
from trie.semantic_id_trie import SemanticIdTrie

FALLBACK_PREFIXES = 16
"""Most learned prefixes tried for one document: the greedy one, then the next most probable last-level codes."""


def greedy_codes(step_fn: StepFn, num_documents: int, codebook_sizes: Sequence[int],
                 alternatives: int = FALLBACK_PREFIXES) -> tuple[np.ndarray, np.ndarray]:
    """The learned codes of ``num_documents`` documents: argmax per learned level, each level conditioned
    on the codes chosen before it (one beam per document; no trie constraint: a new document may open a
    new prefix).

    ``step_fn`` is called once per learned level ``0..L-1`` with ``query_index = arange(N)`` and the
    codes so far ``(N, level)``. ``codebook_sizes``: ``L + 1`` sizes, the counter level last.
    Returns ``codes`` ``(N, L)`` int64 and ``ranked`` ``(N, A)`` int64, the last learned level's codes by
    decreasing log-probability, ``A = min(alternatives, K_{L-1})``: the fallback prefixes of
    :func:`next_free_id`. Ties go to the lower code (argmax and a stable sort), the same on every replica.
    """
    num_levels = len(codebook_sizes) - 1
    count = min(max(alternatives, 1), codebook_sizes[num_levels - 1])
    codes = np.zeros((num_documents, num_levels), dtype=np.int64)
    ranked = np.zeros((num_documents, count), dtype=np.int64)
    if num_documents == 0:
        return codes, ranked
    query_index = np.arange(num_documents, dtype=np.int64)
    for level in range(num_levels):
        log_probs = np.asarray(step_fn(level, query_index, codes[:, :level]))[:, : codebook_sizes[level]]  # (N, K)
        codes[:, level] = np.argmax(log_probs, axis=1)
        if level == num_levels - 1:
            ranked = np.argsort(-log_probs, axis=1, kind="stable")[:, :count].astype(np.int64)
    return codes, ranked


def next_free_id(trie: SemanticIdTrie, learned: Sequence[int], alternatives: Sequence[int] = (),
                 taken: Collection[tuple[int, ...]] = ()) -> tuple[int, ...]:
    """The semantic ID (``L + 1`` codes) of a new document with learned codes ``learned`` (``L`` codes).

    The smallest counter under ``learned`` that neither ``trie`` nor ``taken`` holds (``taken``: IDs given
    to earlier documents of the same update, not yet in the trie). When there is none, the prefixes with
    the last code replaced by each of ``alternatives`` (decreasing probability, as :func:`greedy_codes`
    ranks them) are tried in order, ``FALLBACK_PREFIXES`` prefixes at most, the greedy one included.
    Raises CounterExhaustedError naming the prefixes tried when every counter under each is used.
    """
    learned = tuple(int(c) for c in learned)
    candidates = list(dict.fromkeys([learned[-1], *(int(c) for c in alternatives)]))[:FALLBACK_PREFIXES]
    prefixes = [(*learned[:-1], last) for last in candidates]
    for prefix in prefixes:  # one trie lookup per prefix tried: nearly always only the greedy one
        semantic_id = _first_free(prefix, trie.allowed_mask(np.asarray([prefix], dtype=np.int64))[0], taken)
        if semantic_id is not None:
            return semantic_id
    raise CounterExhaustedError(
        f"no free counter (counter_size {trie.codebook_sizes[-1]}) under the learned prefix {learned} nor under "
        f"its {len(prefixes) - 1} fallback prefix(es) {prefixes[1:]}")


def _first_free(prefix: tuple[int, ...], in_trie: np.ndarray,
                taken: Collection[tuple[int, ...]]) -> tuple[int, ...] | None:
    """``prefix`` + its smallest counter neither in the trie (``in_trie``: bool (counter_size,)) nor taken."""
    for counter in np.flatnonzero(~in_trie).tolist():
        if (*prefix, counter) not in taken:
            return (*prefix, counter)
    return None


def assign_ids(trie: SemanticIdTrie, learned: np.ndarray, alternatives: np.ndarray | None = None) -> np.ndarray:
    """IDs ``(M, L + 1)`` for ``M`` new documents with learned codes ``(M, L)``, in order, by
    :func:`next_free_id`: distinct from the trie's and from each other (equal prefixes get successive
    counters), ready to insert together. ``alternatives`` ``(M, A)``: each document's fallback codes.
    Raises CounterExhaustedError as next_free_id does.
    """
    learned = np.asarray(learned, dtype=np.int64).reshape(len(learned), trie.depth - 1)
    ids = np.zeros((len(learned), trie.depth), dtype=np.int64)
    taken: set[tuple[int, ...]] = set()
    # The greedy prefixes' counters in one vectorised lookup (M, counter_size); next_free_id only for the
    # documents whose greedy prefix is full (it then tries the fallback prefixes).
    used = trie.allowed_mask(learned) if len(learned) else np.zeros((0, trie.codebook_sizes[-1]), dtype=bool)
    for i, codes in enumerate(learned.tolist()):
        semantic_id = _first_free(tuple(codes), used[i], taken)
        if semantic_id is None:
            fallback = () if alternatives is None else alternatives[i].tolist()
            semantic_id = next_free_id(trie, codes, fallback, taken)
        taken.add(semantic_id)
        ids[i] = semantic_id
    return ids
