"""manifest.json, typed: what a bundle holds and every setting its models were trained and checked with.

``BundleManifest.to_json`` writes it (the export); ``BundleManifest.from_json`` reads it (the service, the
contract tests) and refuses, with a message naming the key, a missing key, an unknown key, a value of the
wrong type and a format version other than ``FORMAT_VERSION``. Nothing has a default: a bundle says
everything, so a reader never guesses (docs/bundle.md is the format's page).

The documents' text vectors (``item_vectors``, one per document, row i = trie row i) belong to the bundle, not
to one model: the recommender reads them as item tokens and the retriever's hybrid search scores documents by
them; the service computes the vector of every document added later the same way, once.

One entry per model under ``models``, keyed by its role (indexer, retriever, recommender) and typed by
its ``kind``: ``MODEL_KINDS`` maps each kind to its entry class (``text_to_id`` for the indexer and the
retriever, ``item_token_recommender`` for the recommender; ``ROLE_KINDS``). A model of another shape is
one more frozen dataclass here, with ``kind: Literal["<its kind>"]``, its files and settings as typed
fields, and a ``files()`` method; add it to ``ModelEntry`` and ``MODEL_KINDS``.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Union

from bundle.errors import BundleError

FORMAT_VERSION = 5  # 5: the recommender's item_id_offsets
MODEL_ROLES = ("indexer", "retriever", "recommender")


@dataclass(frozen=True)
class SemanticIdSpec:
    """The shape of the semantic IDs: ``num_levels`` learned levels, then the collision counter.

    ``codebook_size_per_level``: K of each learned level (``num_levels`` sizes); ``counter_size``: values
    of the counter level, i.e. the most documents one learned prefix can hold.
    """

    num_levels: int
    codebook_size_per_level: tuple[int, ...]
    counter_size: int

    def __post_init__(self) -> None:
        if self.num_levels < 1 or len(self.codebook_size_per_level) != self.num_levels:
            raise BundleError(f"codebook_size_per_level {list(self.codebook_size_per_level)} must hold "
                              f"num_levels = {self.num_levels} sizes")
        if min(self.codebook_size_per_level) < 1 or self.counter_size < 1:
            raise BundleError("every size must be >= 1")

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """Codes per level, the counter level last: ``L + 1`` sizes (the trie's ``codebook_sizes``)."""
        return (*self.codebook_size_per_level, self.counter_size)


@dataclass(frozen=True)
class ParityFigures:
    """The export's check of the ONNX graphs against the torch model (training/downstream/export.py).

    Both decode ``inputs`` texts with constrained beam search (``beam_size``, ``top_k``) through the same
    beam grouping; ``max_abs_diff`` is the largest |difference| of the decoder's log-probabilities over
    the meaningful codes of every step, ``encoder_max_abs_diff`` that of the encoder states.
    ``top_k_identical``: the two top-k agree on every input up to near ties (two results whose scores differ
    by less than ``tolerance`` may swap places, and a near tie at a beam's cut-off is told apart by a wider
    re-search: ``bundle.recommendation.near_tie_agreement``, the recommender's rule too);
    ``mismatched_inputs`` counts the inputs that differ beyond that (0 in a written bundle).
    """

    inputs: int
    beam_size: int
    top_k: int
    tolerance: float
    max_abs_diff: float
    encoder_max_abs_diff: float
    tokens_identical: bool  # the bundle's tokenizer.json gives the token ids training's tokenizer gave
    top_k_identical: bool
    mismatched_inputs: int


@dataclass(frozen=True)
class Int8Encoder:
    """The indexer's optional int8 encoder (docs/bundle.md): its file, or why there is none."""

    file: str | None  # relative to the bundle; None when not written
    agreement: Mapping[str, Any] | None  # greedy-code agreement with the fp32 encoder, when measured
    skipped: str | None  # why it was not written

    def __post_init__(self) -> None:
        if (self.file is None) == (self.skipped is None):
            raise BundleError("exactly one of file and skipped must be set")


SEARCH_MODES = ("generative", "hybrid")


@dataclass(frozen=True)
class SearchSettings:
    """How the retriever ranks for POST /search (docs/bundle.md "Search modes").

    ``generative``: the constrained beam search's IDs in beam order (score: summed log-probability).
    ``hybrid``: the beam's candidates joined with the ``dense_candidates`` documents nearest to the query by
    cosine of text vectors (the bundle's ``item_vectors``), all scored by ``bundle.retrieval.hybrid_scores``:
    ``(1 - hybrid_weight) * cosine + hybrid_weight * p``, p the beam's probability of the document's ID (0 outside
    the beam). ``default_mode`` and ``hybrid_weight`` were chosen on a development split (``chosen_on`` names it,
    None when they are the export's defaults, chosen on no data), never on a test split.
    """

    default_mode: Literal["generative", "hybrid"]
    hybrid_weight: float
    dense_candidates: int  # N of the dense top-N joined to the beam's candidates (the service uses max(N, k))
    chosen_on: str | None

    def __post_init__(self) -> None:
        if not 0.0 <= self.hybrid_weight <= 1.0:
            raise BundleError(f"hybrid_weight must be in [0, 1], got {self.hybrid_weight}")
        if self.dense_candidates < 1:
            raise BundleError(f"dense_candidates must be >= 1, got {self.dense_candidates}")


@dataclass(frozen=True)
class TextModelEntry:
    """A text model: ``encoder.onnx`` (text -> states) and ``decoder_step.onnx`` (states, codes -> log-probs).

    The indexer (documents) and the retriever (queries). Inputs are cut at ``max_input_length`` tokens
    ([CLS] and [SEP] included); the ID decoder reads every encoder state by cross-attention (``pooling``).
    ``search``: the retriever's search modes (required for the retriever, None for the indexer).
    """

    KIND: ClassVar[str] = "text_to_id"

    kind: Literal["text_to_id"]
    encoder: str
    decoder_step: str
    hidden_size: int
    max_input_length: int
    pooling: Literal["cross_attention"]
    beam_size: int  # the beam width of its evaluation and parity check
    int8_encoder: Int8Encoder | None  # the indexer's; None for other roles
    search: SearchSettings | None  # the retriever's; None for the indexer
    parity: ParityFigures | None  # None only for bundles not made by the export (test bundles)
    evaluation: Mapping[str, Any]  # the evaluation figures (metrics JSON) of the model, {} when not evaluated

    def __post_init__(self) -> None:
        if self.max_input_length < 2 or self.beam_size < 1 or self.hidden_size < 1:
            raise BundleError("max_input_length must be >= 2, beam_size and hidden_size >= 1")

    def files(self) -> tuple[str, ...]:
        """Every file of the entry, relative to the bundle."""
        extra = (self.int8_encoder.file,) if self.int8_encoder and self.int8_encoder.file else ()
        return (self.encoder, self.decoder_step, *extra)


RECOMMEND_MODES = ("generative", "hybrid")


@dataclass(frozen=True)
class TextVectorSpec:
    """The documents' text vectors (manifest key ``item_vectors``; docs/bundle.md "Item vectors").

    ``file``: a .npy (N, ``dim``) float16 or float32 array, row i = trie row i = documents.jsonl line i. The
    recommender reads them as item tokens; the retriever's hybrid search scores documents by their cosine with
    the query's vector, made the same way. Training encoded every document's text once with ``encoder``
    (``max_input_length`` tokens, ``pooling`` over the token states, L2-normalised when ``normalized``). The
    service makes the vector of a document added later, of a ``history_texts`` item and of a query the same
    way: with ``source`` "indexer", the indexer's encoder.onnx (fp32), pooled (LMIndexer IDs: the indexer
    network's encoder made the vectors; then ``max_input_length`` is the indexer's); with "text_encoder", the
    graph ``text_encoder_file`` (text -> pooled vector, its own tokenizer ``tokenizer_file``), exported when the
    indexer's encoder is not the one (rq-VAE and HC IDs: a pretrained encoder made them). ``max_abs_diff``: the
    export's check of that path against training's vectors on ``checked_items`` documents.
    """

    file: str
    dim: int
    encoder: str  # what training encoded with (a description: a model name or the indexer network's folder)
    max_input_length: int
    pooling: Literal["mean"]
    normalized: bool
    source: Literal["indexer", "text_encoder"]
    text_encoder_file: str | None  # input_ids, attention_mask (B, S) int64 -> vectors (B, D); source text_encoder
    tokenizer_file: str | None  # its tokenizer.json
    checked_items: int
    max_abs_diff: float

    def __post_init__(self) -> None:
        if self.dim < 1 or self.max_input_length < 2:
            raise BundleError("dim must be >= 1 and max_input_length >= 2")
        if (self.source == "text_encoder") != (self.text_encoder_file is not None and self.tokenizer_file is not None):
            raise BundleError("text_encoder_file and tokenizer_file are set exactly when source is text_encoder")

    def files(self) -> tuple[str, ...]:
        """The vectors' file and the text encoder's files (none with source indexer)."""
        return (self.file, *(f for f in (self.text_encoder_file, self.tokenizer_file) if f is not None))


@dataclass(frozen=True)
class RecommenderParity:
    """The export's check of the item-token recommender's graphs against the torch model.

    Both rank ``inputs`` histories (beam ``beam_size``, top ``top_k``) in both modes through
    ``bundle.recommendation.recommend``: ``max_abs_diff`` is the largest |difference| over the hidden
    states, the decoder's log-probabilities (every step of the runner's search, meaningful codes) and
    the candidates' dense scores. Rankings must be identical, except that two results whose scores
    differ by less than ``tolerance`` may swap places (``near_tie_swaps`` counts such inputs;
    ``bundle.recommendation.rankings_agree``); ``mismatched_inputs`` counts real mismatches (0 in a
    written bundle).
    """

    inputs: int
    beam_size: int
    top_k: int
    tolerance: float
    max_abs_diff: float
    hidden_max_abs_diff: float
    dense_max_abs_diff: float
    top_k_identical: bool
    near_tie_swaps: int
    mismatched_inputs: int


@dataclass(frozen=True)
class ItemTokenRecommenderEntry:
    """The item-token recommender (training/recommendation): one token per history item, three graphs.

    An item is its text vector (the bundle's ``item_vectors``, row i = trie row i = documents.jsonl line i)
    and its semantic ID (documents.jsonl); the sequence model reads the ``max_history`` most recent items and
    gives one hidden state; the ID decoder step decodes the next item's ID over the trie (beam
    ``beam_size``); the dense head scores candidate items. ``default_mode``: the ranking better on
    validation NDCG@10; ``hybrid_weight``: w of the hybrid rule (``bundle.recommendation.fuse``),
    chosen on validation; ``exclude_history``: drop the history's own items (the default of /recommend).
    ``item_id_offsets``: a recommender trained with item ID embeddings (SASRec's per-item embedding,
    ``training.recommendation`` setting ``item_id_embedding``) carries them moved into the text vectors' space,
    a (N, D) float32 ``.npy`` whose row i is added to the item vector of trie row i before the graphs read it
    (``bundle.recommendation.recommender_item_vectors``); rows of documents added later add nothing. None: no
    item ID embeddings.
    """

    KIND: ClassVar[str] = "item_token_recommender"

    kind: Literal["item_token_recommender"]
    sequence_model: str
    decoder_step: str
    dense_head: str
    hidden_size: int
    max_history: int
    beam_size: int
    default_mode: Literal["generative", "hybrid"]
    hybrid_weight: float
    exclude_history: bool
    item_id_offsets: str | None
    parity: RecommenderParity | None  # None only for bundles not made by the export (test bundles)
    evaluation: Mapping[str, Any]

    def __post_init__(self) -> None:
        if self.max_history < 1 or self.beam_size < 1 or self.hidden_size < 1:
            raise BundleError("max_history, beam_size and hidden_size must be >= 1")
        if not 0.0 <= self.hybrid_weight <= 1.0:
            raise BundleError(f"hybrid_weight must be in [0, 1], got {self.hybrid_weight}")

    def files(self) -> tuple[str, ...]:
        """Every file of the entry, relative to the bundle."""
        offsets = (self.item_id_offsets,) if self.item_id_offsets is not None else ()
        return (self.sequence_model, self.decoder_step, self.dense_head, *offsets)


ModelEntry = Union[TextModelEntry, ItemTokenRecommenderEntry]  # noqa: UP007 (a runtime alias _value matches on)
MODEL_KINDS: dict[str, type] = {TextModelEntry.KIND: TextModelEntry,
                                ItemTokenRecommenderEntry.KIND: ItemTokenRecommenderEntry}
# The kind each role must have: the indexer and the retriever read text; the recommender reads items.
ROLE_KINDS: dict[str, type] = {"indexer": TextModelEntry, "retriever": TextModelEntry,
                               "recommender": ItemTokenRecommenderEntry}


@dataclass(frozen=True)
class BundleManifest:
    """manifest.json (format ``FORMAT_VERSION``). Paths are relative to the bundle directory."""

    format_version: int
    created_at: str  # UTC, ISO 8601
    semantic_ids: SemanticIdSpec
    tokenizer: str  # tokenizer.json (Hugging Face tokenizers)
    trie: str  # trie.SemanticIdTrie.save file
    documents: str  # documents.jsonl, line i = trie row i
    num_documents: int
    index_version: int
    item_vectors: TextVectorSpec | None  # the documents' text vectors; required by a recommender and hybrid search
    models: Mapping[str, ModelEntry]
    training_config: Mapping[str, Any]

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise BundleError(f"format_version {self.format_version!r} is not supported (this code reads "
                              f"{FORMAT_VERSION}); re-export the bundle with this version's `lmindexer export`")
        unknown = [role for role in self.models if role not in MODEL_ROLES]
        if unknown:
            raise BundleError(f"models: unknown model {unknown[0]!r} (expected one of {list(MODEL_ROLES)})")
        if "indexer" not in self.models:
            raise BundleError("models: the indexer model is required (POST /index-documents uses it)")
        if not {"retriever", "recommender"} & self.models.keys():
            raise BundleError("models: a bundle needs a retriever or a recommender model")
        for role, entry in self.models.items():
            if not isinstance(entry, ROLE_KINDS[role]):
                raise BundleError(f"models.{role}.kind: {entry.kind!r}; the {role} must be of kind "
                                  f"{ROLE_KINDS[role].KIND!r}")
            if isinstance(entry, TextModelEntry) and entry.int8_encoder is not None and role != "indexer":
                raise BundleError(f"models.{role}.int8_encoder: only the indexer may have one")
            if isinstance(entry, TextModelEntry) and (entry.search is None) != (role != "retriever"):
                raise BundleError(f"models.{role}.search: the retriever must have one, the indexer none")
        vectors = self.item_vectors
        if vectors is None and "recommender" in self.models:
            raise BundleError("item_vectors: the recommender reads the documents' text vectors; they are missing")
        retriever = self.models.get("retriever")
        if (vectors is None and isinstance(retriever, TextModelEntry) and retriever.search is not None
                and retriever.search.default_mode == "hybrid"):
            raise BundleError("models.retriever.search.default_mode: hybrid needs the documents' text vectors "
                              "(item_vectors), which are missing")
        indexer = self.models["indexer"]
        if (vectors is not None and vectors.source == "indexer" and isinstance(indexer, TextModelEntry)
                and vectors.max_input_length != indexer.max_input_length):
            raise BundleError(f"item_vectors.max_input_length: {vectors.max_input_length}, but vectors of source "
                              f"indexer are made by the indexer, which reads {indexer.max_input_length} tokens")
        if not isinstance(self.models, MappingProxyType):
            object.__setattr__(self, "models", MappingProxyType(dict(self.models)))

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """Codes per level, the counter level last (``L + 1`` sizes)."""
        return self.semantic_ids.codebook_sizes

    def files(self) -> tuple[str, ...]:
        """Every file the manifest names, relative to the bundle."""
        vectors = self.item_vectors.files() if self.item_vectors is not None else ()
        models = (f for entry in self.models.values() for f in entry.files())
        return (self.tokenizer, self.trie, self.documents, *vectors, *models)

    def to_dict(self) -> dict[str, Any]:
        """The manifest as plain JSON values (what ``to_json`` writes)."""
        return _plain(self)

    def to_json(self) -> str:
        """manifest.json's text (indented, UTF-8, a final newline)."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "manifest.json") -> BundleManifest:
        """Parse manifest.json; BundleError naming ``source`` and the key on anything but the exact format."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleError(f"{source}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise BundleError(f"{source}: expected a JSON object")
        # The version first: another version's keys would otherwise be reported as missing or unknown.
        if "format_version" not in data:
            raise BundleError(f"{source}: missing key 'format_version'")
        version = data["format_version"]
        if version != FORMAT_VERSION:
            raise BundleError(f"{source}: format_version {version!r} is not supported (this code reads "
                              f"{FORMAT_VERSION}); re-export the bundle with this version's `lmindexer export`")
        try:
            return _decode(cls, data, "")
        except BundleError as exc:
            raise BundleError(f"{source}: {exc}") from None


# ------------------------------------------------------------------------------ strict JSON <-> dataclasses

def _plain(value: Any) -> Any:
    """Dataclasses, mappings and tuples as JSON-ready dicts and lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _decode(cls: type, data: Any, where: str) -> Any:
    """An instance of the dataclass ``cls`` from a JSON object holding exactly its fields."""
    if not isinstance(data, dict):
        raise BundleError(f"{where or 'manifest'}: expected a JSON object, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    for name in names:
        if name not in data:
            raise BundleError(f"missing key {_key(where, name)!r}")
    for name in data:
        if name not in names:
            raise BundleError(f"unknown key {_key(where, name)!r}")
    hints = typing.get_type_hints(cls)
    values = {name: _value(hints[name], data[name], _key(where, name)) for name in names}
    try:
        return cls(**values)
    except BundleError as exc:  # a rule of the class itself (__post_init__): say where
        raise BundleError(f"{where}: {exc}" if where else str(exc)) from None


def _model_entry(data: Any, where: str) -> ModelEntry:
    if not isinstance(data, dict):
        raise BundleError(f"{where}: expected a JSON object")
    if "kind" not in data:
        raise BundleError(f"missing key {_key(where, 'kind')!r}")
    entry_class = MODEL_KINDS.get(data["kind"])
    if entry_class is None:
        raise BundleError(f"{_key(where, 'kind')}: unknown model kind {data['kind']!r} "
                          f"(expected one of {sorted(MODEL_KINDS)})")
    return _decode(entry_class, data, where)


def _value(kind: Any, value: Any, where: str) -> Any:
    """``value`` checked against the type ``kind`` (the types the manifest's dataclasses use)."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if kind is Any:
        return value
    # Before the union rule: ModelEntry is a union whose member is chosen by the entry's "kind".
    if kind == ModelEntry:
        return _model_entry(value, where)
    if origin is Mapping and args == (str, ModelEntry):
        if not isinstance(value, dict):
            raise BundleError(f"{where}: expected a JSON object")
        return {str(k): _model_entry(v, _key(where, str(k))) for k, v in value.items()}
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _value(inner, value, where)
    if origin is Literal:
        if value not in args:
            raise BundleError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(kind):
        return _decode(kind, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise BundleError(f"{where}: expected a JSON array")
        return tuple(_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is Mapping:
        if not isinstance(value, dict):
            raise BundleError(f"{where}: expected a JSON object")
        return MappingProxyType({str(k): _value(args[1], v, _key(where, str(k))) for k, v in value.items()})
    if kind is bool:
        if not isinstance(value, bool):
            raise BundleError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BundleError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BundleError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise BundleError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: no JSON rule for {kind!r}")  # a field type this module does not handle
