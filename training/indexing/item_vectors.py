"""Text vectors of the indexed documents, stored by `learn-ids --method lmindexer` beside the IDs.

The item-token recommender reads one text vector per item (`training.recommendation.items.text_vectors`).
For LMIndexer IDs that vector is the indexer network's own encoder output, mean-pooled over the
attention mask and L2-normalised, at the document length the indexer read. learn-ids runs that very
encoder over every document when it checks the saved network (`final_network_pass` in
`training.indexing.lmindexer.schedule`), so it keeps the vectors instead of leaving the recommender to
run the encoder over the whole catalogue a second time (4 minutes on all of Beauty on 2 cores).

Written to the learn-ids output directory:

- `item_vectors.npy`: (N, D) float32, row i = document i of the corpus, i.e. row i of `ids.jsonl`;
- a record, key `item_vectors` of `lmindexer.json` (and the file under `files` in run.json)::

    {"file": "item_vectors.npy", "shape": [N, D], "dtype": "float32", "order": "ids.jsonl",
     "encoder": "network", "base_encoder": "all-MiniLM-L6-v2", "max_length": 64,
     "pooling": "mean", "normalized": true, "normalization": "l2",
     "texts_sha256": "...", "network_sha256": "...", "seconds": 12.3}

  `texts_sha256` is `texts_digest` of the documents' texts in order; `network_sha256` is
  `network_digest` of the saved network (`network/network.json` and `network/model.safetensors`).

`stored_item_vectors` hands the vectors back only when the record says they are what the reader would
compute: the same texts in the same order, the same network, the same document length, mean pooling
and L2 normalisation; otherwise it says why not, and the reader computes them (older ID directories
have no file). This module needs numpy only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

VECTORS_FILE = "item_vectors.npy"
RECORD_FILE = "lmindexer.json"  # the LMIndexer's record (training.indexing.lmindexer.schedule.CONFIG_FILE)
RECORD_KEY = "item_vectors"
NETWORK_FILES = ("network.json", "model.safetensors")  # training.indexing.network's CONFIG_FILE, WEIGHTS_FILE


def texts_digest(texts: Sequence[str]) -> str:
    """SHA-256 (hex) of the texts in order: their count, then each text in UTF-8 followed by a NUL byte."""
    digest = hashlib.sha256(f"{len(texts)}|".encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def network_digest(network_dir: Path) -> str:
    """SHA-256 (hex) of a saved SemanticIdNetwork: network.json then model.safetensors, byte for byte."""
    digest = hashlib.sha256()
    for name in NETWORK_FILES:
        with open(Path(network_dir) / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def item_vectors_record(vectors: np.ndarray, texts: Sequence[str], network_dir: Path, base_encoder: str,
                        max_length: int, seconds: float | None = None) -> dict[str, Any]:
    """The record of `vectors` (N, D), the network encoder's vectors of `texts` (module docstring)."""
    record: dict[str, Any] = {
        "file": VECTORS_FILE, "shape": [int(s) for s in vectors.shape], "dtype": "float32", "order": "ids.jsonl",
        "encoder": Path(network_dir).name, "base_encoder": str(base_encoder), "max_length": int(max_length),
        "pooling": "mean", "normalized": True, "normalization": "l2",
        "texts_sha256": texts_digest(texts), "network_sha256": network_digest(network_dir),
    }
    if seconds is not None:
        record["seconds"] = round(float(seconds), 2)
    return record


def write_item_vectors(directory: Path, vectors: np.ndarray) -> str:
    """Write directory/item_vectors.npy (float32, C order); returns its path relative to `directory`."""
    path = Path(directory) / VECTORS_FILE
    tmp = path.with_name(f".{path.stem}.tmp.npy")
    np.save(tmp, np.ascontiguousarray(vectors, dtype=np.float32))
    tmp.replace(path)
    return VECTORS_FILE


def read_record(directory: Path) -> Mapping[str, Any] | None:
    """The `item_vectors` record of a learn-ids directory, or None when it has none."""
    path = Path(directory) / RECORD_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8")).get(RECORD_KEY)
    return record if isinstance(record, Mapping) else None


def stored_item_vectors(directory: Path, texts: Sequence[str], network_dir: Path | None,
                        max_length: int) -> tuple[np.ndarray | None, str]:
    """(vectors (N, D) float32, path) when `directory` stores the network encoder's vectors of exactly `texts`
    (same order) at `max_length`, from the network in `network_dir` (None: not checked); else (None, why not)."""
    directory = Path(directory)
    record = read_record(directory)
    if record is None:
        return None, f"{directory / RECORD_FILE} has no {RECORD_KEY!r} record (IDs learnt before vectors were kept)"
    path = directory / str(record.get("file", VECTORS_FILE))
    if not path.is_file():
        return None, f"{path} is missing"
    if record.get("pooling") != "mean" or record.get("normalized") is not True:
        return None, f"stored vectors are pooled {record.get('pooling')!r}, normalized {record.get('normalized')!r}"
    if record.get("max_length") != max_length:
        return None, f"stored vectors read {record.get('max_length')} tokens per document, not {max_length}"
    if record.get("texts_sha256") != texts_digest(texts):
        return None, f"the stored vectors are of other texts (or another order) than these {len(texts)}"
    if network_dir is not None and record.get("network_sha256") != network_digest(network_dir):
        return None, f"the stored vectors were made by another network than {network_dir}"
    vectors = np.load(path)
    if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[0] != len(texts):
        return None, f"{path} holds {vectors.dtype} {vectors.shape}, not ({len(texts)}, D) float32"
    return vectors, str(path)
