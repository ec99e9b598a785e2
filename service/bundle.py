"""Read a bundle directory (docs/bundle.md is the contract): manifest, documents, trie, model paths.

The service reads only what docs/bundle.md promises; anything missing or inconsistent raises
``BundleError`` with a message naming the file, before any model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import BundleError

logger = logging.getLogger(__name__)

SUPPORTED_FORMAT_VERSIONS = (1,)
MODEL_NAMES = ("indexer", "retriever", "recommender")


@dataclass(frozen=True)
class ModelFiles:
    """The two ONNX graphs of one model, and the optional int8 copy of its encoder (the indexer's)."""

    name: str
    encoder: Path
    decoder_step: Path
    encoder_int8: Path | None = None


@dataclass(frozen=True)
class Manifest:
    """The parts of manifest.json the service uses, validated; ``raw`` keeps the whole file."""

    directory: Path
    raw: dict[str, Any]
    fingerprint: str  # sha256 of manifest.json, shortened: names this bundle in Redis keys and the store
    num_levels: int
    codebook_sizes: tuple[int, ...]
    tokenizer: Path
    max_query_length: int
    max_document_length: int
    models: dict[str, ModelFiles]
    max_history: int
    history_separator: str
    trie: Path
    documents: Path
    num_documents: int
    index_version: int


@dataclass
class DocumentTable:
    """The bundle's documents, column-wise (row i = trie row i). Metadata stays JSON until asked for."""

    doc_ids: list[str]
    texts: list[str]
    metadata_json: list[str]
    semantic_ids: np.ndarray  # (N, L+1) int64
    row_of_doc_id: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.doc_ids)

    def metadata(self, row: int) -> dict[str, Any]:
        """The metadata of one row, parsed."""
        return json.loads(self.metadata_json[row])


def _require(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise BundleError(f"{where}: missing key {key!r}")
    return obj[key]


def load_manifest(directory: Path) -> Manifest:
    """Read and validate ``directory/manifest.json`` and check that every file it names exists."""
    directory = Path(directory)
    path = directory / "manifest.json"
    if not path.is_file():
        raise BundleError(f"{directory}: not a bundle (no manifest.json); build one with "
                          "`lmindexer build-demo --out DIR` or `lmindexer export`")
    data = path.read_bytes()
    try:
        raw = json.loads(data)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    where = str(path)
    version = _require(raw, "format_version", where)
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise BundleError(f"{path}: format_version {version!r} is not supported "
                          f"(this service reads {list(SUPPORTED_FORMAT_VERSIONS)})")
    ids = _require(raw, "semantic_ids", where)
    num_levels = int(_require(ids, "num_levels", where + " semantic_ids"))
    codebook_sizes = tuple(int(s) for s in _require(ids, "codebook_sizes", where + " semantic_ids"))
    if len(codebook_sizes) != num_levels + 1 or min(codebook_sizes) < 1:
        raise BundleError(f"{path}: codebook_sizes {list(codebook_sizes)} must hold num_levels + 1 "
                          f"= {num_levels + 1} positive sizes")
    models: dict[str, ModelFiles] = {}
    for name, spec in _require(raw, "models", where).items():
        if name not in MODEL_NAMES:
            raise BundleError(f"{path}: unknown model {name!r} (expected one of {list(MODEL_NAMES)})")
        int8 = spec.get("encoder_int8")  # optional (docs/bundle.md); bundles before it have none
        files = ModelFiles(name, directory / _require(spec, "encoder", f"{where} models.{name}"),
                           directory / _require(spec, "decoder_step", f"{where} models.{name}"),
                           directory / int8 if int8 else None)
        for graph in (files.encoder, files.decoder_step, files.encoder_int8):
            if graph is None:
                continue
            if not graph.is_file():
                raise BundleError(f"{path}: models.{name} names {graph}, which does not exist")
        models[name] = files
    if "indexer" not in models:
        raise BundleError(f"{path}: the indexer model is required (POST /index-documents uses it)")
    if not {"retriever", "recommender"} & models.keys():
        raise BundleError(f"{path}: a bundle needs a retriever or a recommender model")
    recommendation = raw.get("recommendation", {}) or {}
    order = recommendation.get("history_order", "most_recent_first")
    if order != "most_recent_first":
        raise BundleError(f"{path}: recommendation.history_order {order!r} is not supported")
    manifest = Manifest(
        directory=directory,
        raw=raw,
        fingerprint=hashlib.sha256(data).hexdigest()[:16],
        num_levels=num_levels,
        codebook_sizes=codebook_sizes,
        tokenizer=directory / raw.get("tokenizer", "tokenizer.json"),
        max_query_length=int(raw.get("max_query_length", 64)),
        max_document_length=int(raw.get("max_document_length", 128)),
        models=models,
        max_history=int(recommendation.get("max_history", 20)),
        history_separator=str(recommendation.get("history_separator", ". ")),
        trie=directory / raw.get("trie", "trie.bin"),
        documents=directory / raw.get("documents", "documents.jsonl"),
        num_documents=int(raw.get("num_documents", -1)),
        index_version=int(raw.get("index_version", 0)),
    )
    for required in (manifest.tokenizer, manifest.trie, manifest.documents):
        if not required.is_file():
            raise BundleError(f"{path}: {required} does not exist")
    return manifest


def indexer_files(manifest: Manifest, precision: str) -> tuple[ModelFiles, str]:
    """The indexer's graphs to load for the precision setting (auto, fp32, int8): ``encoder`` is the one to run.

    auto picks the int8 encoder when the bundle has one, else fp32; int8 on a bundle without one raises
    BundleError, saying why the export left it out when the manifest records it.
    """
    if precision not in ("auto", "fp32", "int8"):
        raise ValueError(f"unknown indexer precision {precision!r}")
    files = manifest.models["indexer"]
    if precision == "fp32" or (precision == "auto" and files.encoder_int8 is None):
        return ModelFiles(files.name, files.encoder, files.decoder_step), "fp32"
    if files.encoder_int8 is None:
        entry = manifest.raw["models"]["indexer"]
        why = entry.get("int8_skipped", "the bundle was exported without one")
        raise BundleError(f"indexer_precision is int8 (LMINDEXER_INDEXER_PRECISION) but {manifest.directory} has no "
                          f"int8 indexer encoder (manifest.json models.indexer.encoder_int8; {why}); use auto or "
                          "fp32, or re-export the bundle with indexer_int8 on")
    return ModelFiles(files.name, files.encoder_int8, files.decoder_step), "int8"


def load_documents(manifest: Manifest) -> DocumentTable:
    """Read documents.jsonl (line i = trie row i) into columns."""
    width = manifest.num_levels + 1
    doc_ids: list[str] = []
    texts: list[str] = []
    metadata_json: list[str] = []
    codes: list[list[int]] = []
    with open(manifest.documents, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                doc_ids.append(str(record["doc_id"]))
                texts.append(str(record["text"]))
                metadata_json.append(json.dumps(record.get("metadata") or {}, ensure_ascii=False))
                semantic_id = [int(c) for c in record["semantic_id"]]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise BundleError(f"{manifest.documents}:{number}: bad document line ({exc})") from None
            if len(semantic_id) != width:
                raise BundleError(f"{manifest.documents}:{number}: semantic_id has {len(semantic_id)} "
                                  f"codes, expected {width}")
            codes.append(semantic_id)
    if 0 <= manifest.num_documents != len(doc_ids):
        raise BundleError(f"{manifest.documents}: {len(doc_ids)} documents, manifest says "
                          f"{manifest.num_documents}")
    semantic_ids = np.asarray(codes, dtype=np.int64).reshape(len(codes), width)
    table = DocumentTable(doc_ids, texts, metadata_json, semantic_ids)
    table.row_of_doc_id = {doc_id: row for row, doc_id in enumerate(doc_ids)}
    if len(table.row_of_doc_id) != len(doc_ids):
        raise BundleError(f"{manifest.documents}: duplicate doc_id values")
    return table
