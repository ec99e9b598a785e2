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
    RECOMMEND_MODES,
    BundleManifest,
    Int8Encoder,
    ItemTokenRecommenderEntry,
    ModelEntry,
    ParityFigures,
    RecommenderParity,
    SemanticIdSpec,
    TextModelEntry,
    TextVectorSpec,
)
from bundle.recommendation import (
    RECHECK_BEAM,
    History,
    HistoryExclusion,
    NearTies,
    Recommendations,
    RecommenderRunner,
    fuse,
    mean_pooled,
    near_tie_agreement,
    rankings_agree,
    read_item_vectors,
    recommend,
)
from bundle.runner import Encoded, OnnxRunner, TextTokenizer, TextVectorRunner, choose_providers

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "MODEL_KINDS",
    "MODEL_ROLES",
    "RECHECK_BEAM",
    "RECOMMEND_MODES",
    "Bundle",
    "BundleError",
    "BundleManifest",
    "DocumentTable",
    "Encoded",
    "History",
    "HistoryExclusion",
    "Int8Encoder",
    "ItemTokenRecommenderEntry",
    "ModelEntry",
    "NearTies",
    "OnnxRunner",
    "ParityFigures",
    "QueryStep",
    "Recommendations",
    "RecommenderParity",
    "RecommenderRunner",
    "SemanticIdSpec",
    "TextModelEntry",
    "TextTokenizer",
    "TextVectorRunner",
    "TextVectorSpec",
    "choose_providers",
    "document_line",
    "fuse",
    "grouped_step_fn",
    "mean_pooled",
    "near_tie_agreement",
    "rankings_agree",
    "read_documents",
    "read_item_vectors",
    "recommend",
    "write_documents",
    "write_manifest",
]
