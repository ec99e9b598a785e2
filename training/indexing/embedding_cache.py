"""Document embeddings from the pretrained encoder, cached on disk.

The rq-VAE and HC indexers (and the benchmark's plain k-means) all start from the same encoder
embeddings. Embedding 12,101 Beauty items takes minutes on a small CPU, so results are cached in
`$LMINDEXER_CACHE_DIR/embeddings` (default `~/.cache/lmindexer/embeddings`) under a key that
covers everything that changes them: the encoder folder, max_length, normalisation and every
text in order. Set `LMINDEXER_CACHE_DIR=off` to disable the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.encoder import DEFAULT_ENCODER, embed_texts, resolve_encoder_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddingSettings:
    """How the embedding-based indexers (rq-VAE, HC, RK-means) embed documents; their configs extend it."""

    encoder: str = field(
        default=DEFAULT_ENCODER, metadata={"help": "Encoder: the default or a local HF folder."}
    )
    max_length: int = field(default=256, metadata={"help": "Encoder input length in tokens."})
    embed_batch_size: int = field(default=64, metadata={"help": "Batch size for embedding documents."})

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, d) float32 normalised embeddings of `texts`, from the cache when present."""
        return document_embeddings(texts, encoder=self.encoder, max_length=self.max_length,
                                   batch_size=self.embed_batch_size)


def cache_dir() -> Path | None:
    """The embedding cache folder, or None when caching is off."""
    root = os.environ.get("LMINDEXER_CACHE_DIR", str(Path.home() / ".cache" / "lmindexer"))
    if root.lower() in ("off", "none", "0", ""):
        return None
    return Path(root) / "embeddings"


def embedding_key(texts: Sequence[str], encoder: str | Path, max_length: int, normalize: bool) -> str:
    """A hash of everything the embeddings depend on."""
    digest = hashlib.sha256()
    digest.update(str(resolve_encoder_path(encoder).resolve()).encode())
    digest.update(f"|{max_length}|{normalize}|{len(texts)}|".encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


def document_embeddings(
    texts: Sequence[str],
    encoder: str | Path = DEFAULT_ENCODER,
    max_length: int = 256,
    batch_size: int = 64,
    normalize: bool = True,
    show_progress: bool = True,
) -> np.ndarray:
    """(N, d) float32 embeddings of `texts`, from the cache when present."""
    folder = cache_dir()
    path = None
    if folder is not None:
        path = folder / f"{embedding_key(texts, encoder, max_length, normalize)}.npy"
        if path.is_file():
            embeddings = np.load(path)
            if embeddings.shape[0] == len(texts):
                logger.info("embeddings of %d texts from cache %s", len(texts), path)
                return embeddings
    embeddings = embed_texts(
        texts,
        encoder=encoder,
        batch_size=batch_size,
        max_length=max_length,
        normalize=normalize,
        show_progress=show_progress,
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, embeddings)
        tmp.replace(path)
    return embeddings
