"""trie: the prefix trie of valid semantic IDs, model-agnostic constrained beam search, greedy ID assignment
and the next-free-counter rule (numpy only).

See docs/trie.md for the API contract.
"""

from trie.assign import FALLBACK_PREFIXES, assign_ids, greedy_codes, next_free_id
from trie.beam_search import BeamSearchResult, StepFn, constrained_beam_search
from trie.errors import (
    CounterExhaustedError,
    DuplicateRowError,
    DuplicateSemanticIdError,
    InvalidSemanticIdError,
    MissingSemanticIdError,
    TrieError,
    TrieFormatError,
)
from trie.semantic_id_trie import SemanticIdTrie, TrieState

__all__ = [
    "FALLBACK_PREFIXES",
    "BeamSearchResult",
    "CounterExhaustedError",
    "DuplicateRowError",
    "DuplicateSemanticIdError",
    "InvalidSemanticIdError",
    "MissingSemanticIdError",
    "SemanticIdTrie",
    "StepFn",
    "TrieError",
    "TrieFormatError",
    "TrieState",
    "assign_ids",
    "constrained_beam_search",
    "greedy_codes",
    "next_free_id",
]
