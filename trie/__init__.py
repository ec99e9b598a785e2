"""trie: the prefix trie of valid semantic IDs and model-agnostic constrained beam search (numpy only).

See docs/trie.md for the API contract.
"""

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
from trie.live import LiveTrie
from trie.semantic_id_trie import SemanticIdTrie, TrieState

__all__ = [
    "BeamSearchResult",
    "CounterExhaustedError",
    "DuplicateRowError",
    "DuplicateSemanticIdError",
    "InvalidSemanticIdError",
    "LiveTrie",
    "MissingSemanticIdError",
    "SemanticIdTrie",
    "StepFn",
    "TrieError",
    "TrieFormatError",
    "TrieState",
    "constrained_beam_search",
]
