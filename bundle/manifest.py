"""manifest.json, typed: what a bundle holds and every setting its models were trained and checked with.

``BundleManifest.to_json`` writes it (the export); ``BundleManifest.from_json`` reads it (the service, the
contract tests) and refuses, with a message naming the key, a missing key, an unknown key, a value of the
wrong type and a format version other than ``FORMAT_VERSION``. Nothing has a default: a bundle says
everything, so a reader never guesses (docs/bundle.md is the format's page).

One entry per model under ``models``, keyed by its role (indexer, retriever, recommender) and typed by
its ``kind``: ``MODEL_KINDS`` maps each kind to its entry class. A model of another shape (say, a
sequence model over item vectors) is one more frozen dataclass here, with ``kind: Literal["<its kind>"]``,
its files and settings as typed fields, and a ``files()`` method; add it to ``ModelEntry`` and
``MODEL_KINDS``, and from_json / to_json handle it with no other change.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Union

from bundle.errors import BundleError

FORMAT_VERSION = 2
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


def history_text(texts: Sequence[str], max_items: int, separator: str) -> str:
    """The history-text recommender's input: the last ``max_items`` texts of a history given oldest
    first (all of them when ``max_items`` is 0), most recent first, joined by ``separator``."""
    kept = list(texts[-max_items:]) if max_items > 0 else list(texts)
    return separator.join(reversed(kept))


@dataclass(frozen=True)
class HistorySpec:
    """How a user's history becomes the recommender's input text (``history_text``)."""

    max_items: int  # the most recent items read; the rest are dropped
    separator: str
    order: Literal["most_recent_first"]

    def __post_init__(self) -> None:
        if self.max_items < 1:
            raise BundleError(f"max_items must be >= 1, got {self.max_items}")

    def text(self, texts: Sequence[str]) -> str:
        """The input text of a history given oldest first."""
        return history_text(texts, self.max_items, self.separator)


@dataclass(frozen=True)
class ParityFigures:
    """The export's check of the ONNX graphs against the torch model (training/downstream/export.py).

    Both decode ``inputs`` texts with constrained beam search (``beam_size``, ``top_k``) through the same
    beam grouping; ``max_abs_diff`` is the largest |difference| of the decoder's log-probabilities over
    the meaningful codes of every step, ``encoder_max_abs_diff`` that of the encoder states.
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


@dataclass(frozen=True)
class TextModelEntry:
    """A text model: ``encoder.onnx`` (text -> states) and ``decoder_step.onnx`` (states, codes -> log-probs).

    The indexer (documents), the retriever (queries) and the history-text recommender (the history's
    texts joined as ``history`` says). Inputs are cut at ``max_input_length`` tokens ([CLS] and [SEP]
    included); the ID decoder reads every encoder state by cross-attention (``pooling``).
    """

    KIND: ClassVar[str] = "text_to_id"

    kind: Literal["text_to_id"]
    encoder: str
    decoder_step: str
    hidden_size: int
    max_input_length: int
    pooling: Literal["cross_attention"]
    beam_size: int  # the beam width of its evaluation and parity check
    history: HistorySpec | None  # the recommender's; None for other roles
    int8_encoder: Int8Encoder | None  # the indexer's; None for other roles
    parity: ParityFigures | None  # None only for bundles not made by the export (test bundles)
    evaluation: Mapping[str, Any]  # the evaluation figures (metrics JSON) of the model, {} when not evaluated

    def __post_init__(self) -> None:
        if self.max_input_length < 2 or self.beam_size < 1 or self.hidden_size < 1:
            raise BundleError("max_input_length must be >= 2, beam_size and hidden_size >= 1")

    def files(self) -> tuple[str, ...]:
        """Every file of the entry, relative to the bundle."""
        extra = (self.int8_encoder.file,) if self.int8_encoder and self.int8_encoder.file else ()
        return (self.encoder, self.decoder_step, *extra)


ModelEntry = TextModelEntry
MODEL_KINDS: dict[str, type[ModelEntry]] = {TextModelEntry.KIND: TextModelEntry}


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
            if isinstance(entry, TextModelEntry):
                if (entry.history is not None) != (role == "recommender"):
                    raise BundleError(f"models.{role}.history: set for the recommender only")
                if entry.int8_encoder is not None and role != "indexer":
                    raise BundleError(f"models.{role}.int8_encoder: only the indexer may have one")
        if not isinstance(self.models, MappingProxyType):
            object.__setattr__(self, "models", MappingProxyType(dict(self.models)))

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        """Codes per level, the counter level last (``L + 1`` sizes)."""
        return self.semantic_ids.codebook_sizes

    def files(self) -> tuple[str, ...]:
        """Every file the manifest names, relative to the bundle."""
        return (self.tokenizer, self.trie, self.documents, *(f for e in self.models.values() for f in e.files()))

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
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _value(inner, value, where)
    if kind is ModelEntry or (origin is Mapping and args == (str, ModelEntry)):
        if kind is ModelEntry:
            return _model_entry(value, where)
        if not isinstance(value, dict):
            raise BundleError(f"{where}: expected a JSON object")
        return {str(k): _model_entry(v, _key(where, str(k))) for k, v in value.items()}
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
