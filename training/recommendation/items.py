"""The item catalogue the recommender reads: doc_ids, frozen text vectors and semantic IDs.

Text vectors come from the ID source's encoder and are computed once per item (and cached on
disk by `training.indexing.embedding_cache`):

- rq-VAE and HC IDs: the pretrained encoder those methods embedded the corpus with (`run.json`
  config `encoder`, `max_length`), mean-pooled and L2-normalised: the very vectors they clustered;
- LMIndexer IDs: the indexer network's own (trained) encoder, mean-pooled and L2-normalised, at
  the document length the indexer read. learn-ids keeps these vectors (`item_vectors.npy`,
  `training.indexing.item_vectors`) from its final pass over the corpus with that encoder; they are
  read from there when their record says they are of exactly these texts, in this order, from this
  network. Otherwise (IDs learnt before the vectors were kept, another items file) they are computed:
  the encoder is written once as a Hugging Face folder under the cache (keyed by a hash of the
  network's weights) so the same cached embedding path serves it.

An item added after training needs only its text (-> vector) and its semantic ID.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.downstream.tasks import IdSource
from training.encoder import DEFAULT_ENCODER, load_tokenizer
from training.errors import DataFormatError
from training.indexing.embedding_cache import cache_dir, document_embeddings
from training.indexing.item_vectors import network_digest, stored_item_vectors
from trie import SemanticIdTrie

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemCatalogue:
    """Items in a fixed order (row i of every array is item `doc_ids[i]`).

    vectors: (N, D) float32 text vectors; semantic_ids: (N, L + 1) int64 (counter last);
    codebook_sizes: (L + 1,) K of every learned level, then the counter's size.
    """

    doc_ids: tuple[str, ...]
    vectors: np.ndarray
    semantic_ids: np.ndarray
    codebook_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.doc_ids)
        if self.vectors.shape[0] != n or self.semantic_ids.shape != (n, len(self.codebook_sizes)):
            raise ValueError(f"catalogue of {n} items: vectors {self.vectors.shape}, semantic_ids "
                             f"{self.semantic_ids.shape}, {len(self.codebook_sizes)} levels")
        too_big = (self.semantic_ids >= np.asarray(self.codebook_sizes)).any(axis=0)
        if too_big.any() or (self.semantic_ids < 0).any():
            raise ValueError(f"semantic IDs outside the codebook sizes {self.codebook_sizes}")

    @property
    def num_items(self) -> int:
        return len(self.doc_ids)

    @property
    def num_levels(self) -> int:
        """L, learned levels (the counter not counted)."""
        return len(self.codebook_sizes) - 1

    @property
    def text_dim(self) -> int:
        return int(self.vectors.shape[1])

    def trie(self) -> SemanticIdTrie:
        """The prefix trie of every item's ID; trie row i is catalogue row i."""
        return SemanticIdTrie.build(self.semantic_ids, codebook_sizes=list(self.codebook_sizes))


def catalogue_ids(doc_ids: Sequence[str], source: IdSource) -> tuple[np.ndarray, tuple[int, ...]]:
    """(N, L + 1) semantic IDs of `doc_ids` in their order, and the codebook sizes (L + 1,).

    Raises DataFormatError naming the first item the ID table lacks.
    """
    id_of = source.id_of()
    missing = [d for d in doc_ids if d not in id_of]
    if missing:
        raise DataFormatError(source.directory / "ids.jsonl",
                              f"{len(missing)} item(s) have no semantic ID, e.g. {missing[0]!r}; "
                              "learn IDs for the same items file")
    ids = np.asarray([id_of[d] for d in doc_ids], dtype=np.int64)
    counter_size = max(source.table.counter_size, int(ids[:, -1].max()) + 1)
    return ids, (*source.codebook_sizes, counter_size)


def text_encoder_of(source: IdSource) -> tuple[str | Path, int, str]:
    """The encoder that makes the ID source's text vectors (module doc): (encoder name or folder, max_length
    in tokens, kind: "lmindexer network encoder" or "pretrained encoder")."""
    network_dir = source.network_dir
    if network_dir is not None:
        return network_encoder_folder(network_dir), source.document_length, "lmindexer network encoder"
    config = _run_config(source)
    return config.get("encoder", DEFAULT_ENCODER), int(config.get("max_length", 256)), "pretrained encoder"


def text_vectors(texts: Sequence[str], source: IdSource, batch_size: int = 64) -> tuple[np.ndarray, dict]:
    """(N, D) float32 L2-normalised text vectors of `texts` from the ID source's encoder (module doc),
    and a description of that encoder (for the model's record). The description's `vectors_from` says
    where they came from: the file learn-ids stored (LMIndexer IDs), or "computed". Queries of hybrid
    search are encoded the same way (the service makes them as it makes the vectors of new documents)."""
    network_dir = source.network_dir
    if network_dir is not None:
        max_length = source.document_length
        kind = "lmindexer network encoder"
        stored, where = stored_item_vectors(source.directory, texts, network_dir, max_length)
        if stored is not None:
            logger.info("text vectors of %d items: stored by learn-ids in %s", len(texts), where)
            # the encoder is named by the network folder; export resolves it (network_encoder_folder) if needed
            return stored, {"kind": kind, "encoder": str(network_dir.resolve()), "max_length": max_length,
                            "pooling": "mean", "normalized": True, "vectors_from": where}
        logger.info("text vectors of %d items: computing them with the indexer network's encoder (%s)",
                    len(texts), where)
    encoder, max_length, kind = text_encoder_of(source)
    if network_dir is None:
        logger.info("text vectors of %d items: computing them with the pretrained encoder %s", len(texts), encoder)
    vectors = document_embeddings(list(texts), encoder=encoder, max_length=max_length, batch_size=batch_size,
                                  normalize=True, show_progress=False)
    return vectors.astype(np.float32), {"kind": kind, "encoder": str(encoder), "max_length": max_length,
                                        "pooling": "mean", "normalized": True, "vectors_from": "computed"}


def _run_config(source: IdSource) -> Mapping:
    import json

    run = source.directory / "run.json"
    if not run.is_file():
        return {}
    return json.loads(run.read_text(encoding="utf-8")).get("config") or {}


def network_encoder_folder(network_dir: Path) -> Path:
    """The LMIndexer network's encoder as a Hugging Face folder (written once, keyed by the weights' hash)."""
    from training.indexing.network import SemanticIdNetwork

    root = cache_dir()
    if root is None:
        root = Path.home() / ".cache" / "lmindexer" / "embeddings"
    folder = root.parent / "encoders" / network_digest(network_dir)[:24]
    if (folder / "config.json").is_file():
        return folder
    network = SemanticIdNetwork.load(network_dir)
    tmp = folder.with_name(folder.name + ".tmp")
    network.encoder.save_pretrained(tmp)
    load_tokenizer(network.config.encoder).save_pretrained(tmp)
    tmp.replace(folder)
    logger.info("wrote the indexer network's encoder to %s", folder)
    return folder
