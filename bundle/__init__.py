"""bundle: the contract between training and the service (docs/bundle.md). numpy, json, tokenizers and
onnxruntime only; never torch. Training writes bundles with it and checks its ONNX graphs through its
runner; the service reads bundles and serves through the same runner.
"""

from bundle.decoding import QueryStep, grouped_step_fn
from bundle.directory import MANIFEST_FILE, Bundle, write_manifest
from bundle.documents import DocumentTable, document_line, read_documents, write_documents
from bundle.errors import BundleError
from bundle.manifest import (
    FORMAT_VERSION,
    MODEL_KINDS,
    MODEL_ROLES,
    BundleManifest,
    HistorySpec,
    Int8Encoder,
    ModelEntry,
    ParityFigures,
    SemanticIdSpec,
    TextModelEntry,
    history_text,
)
from bundle.runner import Encoded, OnnxRunner, TextTokenizer, choose_providers

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "MODEL_KINDS",
    "MODEL_ROLES",
    "Bundle",
    "BundleError",
    "BundleManifest",
    "DocumentTable",
    "Encoded",
    "HistorySpec",
    "Int8Encoder",
    "ModelEntry",
    "OnnxRunner",
    "ParityFigures",
    "QueryStep",
    "SemanticIdSpec",
    "TextModelEntry",
    "TextTokenizer",
    "choose_providers",
    "document_line",
    "grouped_step_fn",
    "history_text",
    "read_documents",
    "write_documents",
    "write_manifest",
]
