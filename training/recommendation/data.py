"""P5-format data by path for the item-token recommender: the catalogue, the split, cold items, batches.

- items: a JSONL(.gz) file in the vendored Beauty format (`training.data.amazon.read_items`; an
  item may lack a title, the text template skips missing fields); sequences: `USER ITEM ITEM ...`
  lines. The split is P5 leave-one-out (`training.baselines.recommendation.RecData`): the last
  item is the test target, the one before it the validation target, the rest trains.
- Item i of the items file is catalogue row i - 1 and item index i (0 is padding in sequences).
- Cold start: a seeded `cold_start_fraction` of the items is never seen in training: such items
  are removed from every training sequence (so they are neither targets nor history there) and
  from the dense head's training softmax; they stay in the trie and in the validation and test
  histories, indexed afterwards with their text vector and ID (the counter given as the service gives
  one to a new document: `index_cold_items`).
- Training: each user's training items without the cold ones, the last max_history + 1 of them;
  the model reads items 1..m-1 and predicts the next item at every position (SASRec's arrays and
  length-bucketed batches, `training.baselines.sasrec`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.baselines.recommendation import RecData
from training.baselines.sasrec import length_bucketed_batches, training_arrays
from training.data.amazon import AmazonDataset, AmazonSettings, item_text, load_amazon
from training.downstream.tasks import IdSource, choose_cold_documents
from training.recommendation.items import ItemCatalogue, catalogue_ids, text_vectors
from trie import SemanticIdTrie, assign_ids

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecommendationData:
    """Everything a run reads: the catalogue, the leave-one-out arrays and the cold items.

    cold: (N + 1,) bool by item index, True for cold items (index 0, padding, False).
    train_inputs, train_targets: (U', max_history) left-padded item indices; 0 = padding.
    """

    catalogue: ItemCatalogue
    arrays: RecData
    cold: np.ndarray
    train_inputs: np.ndarray
    train_targets: np.ndarray
    encoder: dict

    @property
    def train_lengths(self) -> np.ndarray:
        """(U',) real items per training row."""
        return (self.train_inputs > 0).sum(1)

    def batches(self, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
        """One epoch of shuffled, length-bucketed batches of training-row indices."""
        return length_bucketed_batches(self.train_lengths, batch_size, rng)

    def cold_users(self, split: str) -> np.ndarray:
        """(U,) bool: users whose `split` ("valid" or "test") target is a cold item."""
        targets = self.arrays.valid_targets if split == "valid" else self.arrays.test_targets
        return self.cold[targets]


def load_dataset(items_path: Path, sequences_path: Path) -> AmazonDataset:
    """Read a P5-format items file and user-sequence file (DataFormatError names file and line)."""
    return load_amazon(AmazonSettings(items_path=Path(items_path), sequences_path=Path(sequences_path)))


def index_cold_items(semantic_ids: np.ndarray, codebook_sizes: Sequence[int], cold: np.ndarray) -> np.ndarray:
    """The catalogue's IDs (N, L + 1) with each cold item re-indexed as the service indexes a document added
    after training: its learned codes kept (the ID table's; for LMIndexer IDs the saved network's greedy codes,
    which the table is re-assigned from), its counter the next free one under that prefix among the warm
    items and the cold items before it (``trie.assign_ids``, the service's rule). cold: (N,) bool.
    A new array; the warm items' IDs are unchanged."""
    out = np.array(semantic_ids, dtype=np.int64, copy=True)
    if not cold.any():
        return out
    warm_trie = SemanticIdTrie.build(out[~cold], codebook_sizes=list(codebook_sizes))
    out[cold] = assign_ids(warm_trie, out[cold, :-1])
    return out


def build_data(dataset: AmazonDataset, source: IdSource, max_history: int, cold_start_fraction: float,
               seed: int) -> RecommendationData:
    """The catalogue (text vectors from the ID source's encoder, IDs from its table, the cold items'
    counters re-assigned by `index_cold_items`), the split and the training arrays of `dataset`."""
    doc_ids = tuple(dataset.items)
    semantic_ids, sizes = catalogue_ids(doc_ids, source)
    texts = [item_text(item) for item in dataset.items.values()]
    vectors, encoder = text_vectors(texts, source)
    arrays = RecData.from_dataset(dataset)
    cold_ids = choose_cold_documents(doc_ids, cold_start_fraction, seed)
    cold = np.zeros(len(doc_ids) + 1, dtype=bool)
    cold[[i + 1 for i, d in enumerate(doc_ids) if d in cold_ids]] = True
    semantic_ids = index_cold_items(semantic_ids, sizes, cold[1:])
    catalogue = ItemCatalogue(doc_ids, vectors, semantic_ids, sizes)
    warm_sequences = [seq[~cold[seq]] for seq in arrays.train_sequences]
    inputs, targets = training_arrays(warm_sequences, max_history)
    logger.info("%d items (%d cold), %d users, %d training rows, %d target positions; IDs %s, %d levels + counter",
                len(doc_ids), int(cold.sum()), arrays.num_users, len(inputs), int((targets > 0).sum()),
                source.method, catalogue.num_levels)
    return RecommendationData(catalogue, arrays, cold, inputs, targets, encoder)
