"""The wire schemas of the HTTP API: request validation, the OpenAPI document, and the response encoders.

Requests reject unknown fields (a misspelt ``top_k`` must not silently become the default k).
Limits that depend on settings (query length, batch size) are checked by the engine, with the same
error body.

Every string of a request is checked here, at the edge, once (service/README.md, "Input rules"):

- **Text** (``query``, ``history``, ``history_texts``, document ``text``, metadata keys and string
  values): valid Unicode (no lone surrogate: JSON's ``"\\ud83d"`` escape decodes to one, and no UTF-8
  encoder accepts it) and no control character (Unicode category Cc) other than tab, line feed and
  carriage return. One compiled-regex scan per string.
- **doc_id** (``documents[].doc_id``): 1-512 characters, every one printable (``str.isprintable``: no
  character of the Unicode categories Cc, Cf, Cs, Co, Cn, Zl, Zp, or Zs other than the ASCII space), no
  leading or trailing space, no ``/``, and neither ``.`` nor ``..``: a doc_id is one path segment of
  ``GET /documents/{doc_id}``, where it always reads back percent-encoded (clients and proxies decode
  ``%2F`` or split on ``/``, and remove ``.``/``..`` segments; nothing else changes a percent-encoded
  segment).
- **Numbers**: finite (JSON has no NaN or Infinity; Python's parser accepts them), anywhere in a
  request, metadata included; metadata nests at most ``MAX_METADATA_DEPTH`` levels.

A refusal is a 422 whose ``details`` give the field (``loc``, down to the metadata key) and, for a
character, its ``position`` (0-based, in code points of the decoded string).

Responses are encoded only by the functions at the end of this module, from these models, by
pydantic's serializer (``encode_json`` for the answers FastAPI frames): it writes a non-finite float as
``null`` (a bundle's own metadata or manifest may hold one), so no response can carry NaN or Infinity,
and model scores that are not finite are refused (``allow_inf_nan=False``) before they get there.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    TypeAdapter,
    field_validator,
)
from pydantic_core import PydanticCustomError, to_json
from typing_extensions import TypedDict

K = Annotated[int, Field(10, ge=1, le=100, description="How many results (1..100).")]

# Metadata nesting limit: deeper values could not be encoded again (the JSON encoders recurse).
MAX_METADATA_DEPTH = 32

# The C0/C1 controls other than \t \n \r; and lone surrogates (not Unicode scalar values).
_CONTROLS = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_FORBIDDEN_IN_TEXT = re.compile(f"[{_CONTROLS}\ud800-\udfff]")
# The text rule in the OpenAPI schema, as far as a JSON Schema pattern can say it (a JSON string holds no
# lone surrogate): documentation and test generation only; _FORBIDDEN_IN_TEXT is what is enforced.
TEXT_PATTERN = "^[^" + "".join(c if c == "-" else f"\\u{ord(c):04x}" for c in _CONTROLS) + "]*$"

TEXT_RULE = ("Text rule: valid Unicode (no lone surrogate), no control character other than tab, line feed and "
             "carriage return")
DOC_ID_RULE = ("doc_id rule: 1-512 printable characters (no control, format, surrogate, private-use, unassigned or "
               "separator character other than the ASCII space), no leading or trailing space, no '/', and "
               "neither '.' nor '..'. Read it back at GET /documents/{doc_id} with the doc_id percent-encoded.")


def _character_error(value: str, position: int, what: str) -> PydanticCustomError:
    code = ord(value[position])
    kind = ("a lone surrogate (not valid Unicode)" if 0xD800 <= code <= 0xDFFF
            else "a control character" if code < 0x20 or 0x7F <= code <= 0x9F
            else "not printable")
    return PydanticCustomError("invalid_character", "character U+{code} at position {position} is {kind}: not "
                               "allowed in " + what, {"code": f"{code:04X}", "position": position, "kind": kind})


def text_error(value: str) -> PydanticCustomError | None:
    """The 422 error for a string that breaks the text rule, or None (cost: one regex scan)."""
    bad = _FORBIDDEN_IN_TEXT.search(value)
    return None if bad is None else _character_error(value, bad.start(), "text")


def doc_id_error(value: str) -> PydanticCustomError | None:
    """The 422 error for a doc_id that breaks the doc_id rule (length aside: the field checks it), or None."""
    if not value.isprintable():
        position = next(i for i, c in enumerate(value) if not c.isprintable())
        return _character_error(value, position, "a doc_id")
    if value != value.strip():
        position = 0 if value[0].isspace() else len(value) - 1
        return PydanticCustomError("invalid_doc_id", "a space at position {position}: a doc_id must not start "
                                   "or end with a space", {"position": position})
    if "/" in value:
        return PydanticCustomError("invalid_doc_id", "'/' at position {position}: a doc_id is one path segment of "
                                   "GET /documents/<doc_id>", {"position": value.index("/")})
    if value in (".", ".."):
        return PydanticCustomError("invalid_doc_id", "'.' at position {position}: '.' and '..' are not doc_ids "
                                   "(URLs drop such segments)",
                                   {"position": 0})
    return None


def _check_text(value: Any) -> Any:
    # A BeforeValidator: runs before pydantic's own str checks, which refuse a lone surrogate with a
    # message that gives no position (and only when the field has a length constraint).
    if isinstance(value, str):
        error = text_error(value)
        if error is not None:
            raise error
    return value


def _check_doc_id(value: Any) -> Any:
    if isinstance(value, str):
        error = doc_id_error(value)
        if error is not None:
            raise error
    return value


def _check_metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Walk the metadata (iteratively: its depth is what is being limited) for keys, strings, numbers."""
    if value is None:
        return None
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        if len(path) >= MAX_METADATA_DEPTH and isinstance(item, (dict, list)):  # the metadata object is level 1
            raise PydanticCustomError("metadata_too_deep", "objects and arrays nested deeper than {limit} levels",
                                      {"limit": MAX_METADATA_DEPTH, "path": path})
        if isinstance(item, str):
            error = text_error(item)
        elif isinstance(item, float) and not math.isfinite(item):
            name = "NaN" if math.isnan(item) else "Infinity" if item > 0 else "-Infinity"
            error = PydanticCustomError("finite_number", "{number} is not a finite number (JSON has none)",
                                        {"number": name})
        elif isinstance(item, dict):
            error = None
            for key, child in item.items():
                key_error = text_error(key)
                if key_error is not None:  # named by the (escaped) key; the message says it is the key
                    error = PydanticCustomError(key_error.type, "in the key: " + key_error.message_template,
                                                key_error.context)
                    path = (*path, key)
                    break
                stack.append(((*path, key), child))
        elif isinstance(item, list):
            error = None
            stack.extend(((*path, i), child) for i, child in enumerate(item))
        else:
            error = None
        if error is not None:
            raise PydanticCustomError(error.type, error.message_template,
                                      {**(error.context or {}), "path": path})
    return value


Text = Annotated[StrictStr, BeforeValidator(_check_text), Field(json_schema_extra={"pattern": TEXT_PATTERN})]
DocId = Annotated[StrictStr, Field(min_length=1, max_length=512, description="The document's external key. "
                                   + DOC_ID_RULE), BeforeValidator(_check_doc_id)]
Metadata = Annotated[dict[str, Any] | None, AfterValidator(_check_metadata)]


def _not_blank(value: str, what: str) -> str:
    if not value.strip():
        raise ValueError(f"{what} must not be empty or whitespace only")
    return value


SEARCH_MODE_VALUES = ("generative", "hybrid")  # bundle.SEARCH_MODES (checked equal by the tests)


def _check_search_mode(value: Any) -> Any:
    # A BeforeValidator, so the 422 names the value given (a Literal's own message does not).
    if isinstance(value, str) and value not in SEARCH_MODE_VALUES:
        raise PydanticCustomError("unknown_mode", "unknown mode {mode}; expected one of {modes}",
                                  {"mode": repr(value[:64]), "modes": " or ".join(SEARCH_MODE_VALUES)})
    return value


SearchMode = Annotated[Literal["generative", "hybrid"] | None, BeforeValidator(_check_search_mode)]


class SearchRequest(BaseModel):
    """POST /search."""

    model_config = ConfigDict(extra="forbid")

    query: Text = Field(description="The query text (at most max_query_chars characters). " + TEXT_RULE + ".")
    k: K = 10
    mode: SearchMode = Field(
        None, description="How the retriever ranks. generative: its constrained beam search, in beam order (score: "
                          "the summed log-probability of the semantic ID, <= 0). hybrid: the beam's candidates and "
                          "the documents nearest to the query by text vector, scored (1 - w) * cosine + w * p, p the "
                          "beam's probability of the document's ID (0 outside the beam), w the bundle's "
                          "models.retriever.search.hybrid_weight (score <= 1, comparable across queries). Default "
                          "(null): the bundle's models.retriever.search.default_mode (chosen on its development split: "
                          "hybrid unless it ranked worse there; GET /info). Another value: 422 naming it; hybrid "
                          "on a bundle without item vectors: 422 naming mode.")

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, value: str) -> str:
        return _not_blank(value, "query")


class RecommendRequest(BaseModel):
    """POST /recommend: exactly one of ``history`` (doc_ids) and ``history_texts``, both oldest first."""

    model_config = ConfigDict(extra="forbid")

    history: list[Text] | None = Field(
        None, description="doc_ids of the user's items, oldest first (as clients keep them). Unknown "
                          "doc_ids are skipped and named in `warnings`; 404 when none is known.")
    history_texts: list[Text] | None = Field(
        None, description="Texts of the user's items, oldest first, for items the index does not hold. "
                          + TEXT_RULE + ".")
    k: K = 10
    mode: str | None = Field(
        None, max_length=32,
        description="generative: the ID decoder's beam order; hybrid: the beam's candidates re-scored "
                          "by the dense head ((1 - w) * generative + w * dense score, w of the bundle). "
                          "Default: the bundle's models.recommender.default_mode (the better on validation). "
                                         "Another value: 422 naming it.")


class DocumentBody(BaseModel):
    """A document returned inside a search hit."""

    doc_id: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class SearchHit(BaseModel):
    """One result."""

    doc_id: str
    score: float = Field(allow_inf_nan=False,
                         description="Higher is better; finite; comparable across queries of one mode. /search "
                                     "generative and /recommend generative: the summed log-probability of the "
                                     "semantic ID (<= 0; exp(score) is its probability). /search hybrid: "
                                     "(1 - w) * cosine(query, document text vectors) + w * p, p the beam's "
                                     "probability of the ID (0 outside the beam), w the bundle's hybrid_weight: at "
                                     "most 1, so one threshold cuts weak matches. /recommend hybrid: the fused "
                                     "score (1 - w) * log-probability + w * dense-head score.")
    semantic_id: list[int]
    document: DocumentBody


class SearchResponse(BaseModel):
    """The answer of /search and /recommend (encoded by :func:`encode_hits` + :func:`encode_search_response`)."""

    results: list[SearchHit]
    index_version: int
    took_ms: float
    cached: bool
    warnings: list[str] = Field(default_factory=list)


class DocumentIn(BaseModel):
    """A document to index."""

    model_config = ConfigDict(extra="forbid")

    doc_id: DocId
    text: Text = Field(min_length=1, description="The text the models read. " + TEXT_RULE + ".")
    metadata: Metadata = Field(None, description="Any JSON object, returned with the document: finite numbers, "
                               f"at most {MAX_METADATA_DEPTH} levels deep, keys and strings under the text rule.")

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        return _not_blank(value, "text")


class IndexDocumentsRequest(BaseModel):
    """POST /index-documents: a batch, applied all-or-nothing."""

    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentIn] = Field(min_length=1, description="At most max_batch_documents documents.")


class IndexedDocumentOut(BaseModel):
    """The outcome for one document."""

    doc_id: str
    semantic_id: list[int]
    status: str = Field(description="created | reindexed (text changed: new ID) | unchanged | metadata_updated")


class IndexDocumentsResponse(BaseModel):
    """The answer of /index-documents."""

    documents: list[IndexedDocumentOut]
    index_version: int


class DocumentResponse(BaseModel):
    """GET /documents/{doc_id} (encoded by :func:`encode_document`)."""

    doc_id: str
    text: str
    metadata: dict[str, Any]
    semantic_id: list[int]


class ErrorResponse(BaseModel):
    """The one body of every error response."""

    error: str = Field(description="What went wrong, for a human.")
    error_type: str = Field(description="A stable machine name: validation_error, not_found, overloaded, ...")
    request_id: str | None = None
    details: list[dict[str, Any]] = Field(default_factory=list)


# The response encoders. Search results are encoded once, when ranked (the cache keeps the bytes), and
# framed per request by splicing them into the encoding of the rest of SearchResponse: the bytes are
# exactly SearchResponse(...).model_dump_json(), without re-validating cached hits on every request.
_HITS = TypeAdapter(list[SearchHit])
_DOCUMENT = TypeAdapter(DocumentResponse)
# SearchResponse's fields as a TypedDict (same names, order, types): serialising a dict through it skips
# building a model per request (measured: about a third of model_construct + dump, less than json.dumps).
_SEARCH_FIELDS = TypeAdapter(TypedDict("SearchResponseFields",  # type: ignore[operator]
                                       {name: field.annotation for name, field in SearchResponse.model_fields.items()}))
_NO_RESULTS = b'{"results":[]'


def encode_hits(hits: list[SearchHit]) -> bytes:
    """The JSON array of ``SearchResponse.results``."""
    return _HITS.dump_json(hits)


def encode_search_response(results_json: bytes, *, index_version: int, took_ms: float, cached: bool,
                           warnings: list[str]) -> bytes:
    """A SearchResponse around hits already encoded by :func:`encode_hits`."""
    rest = _SEARCH_FIELDS.dump_json({"results": [], "index_version": index_version, "took_ms": took_ms,
                                     "cached": cached, "warnings": warnings})
    return b'{"results":' + results_json + rest[len(_NO_RESULTS):]


def encode_document(document: dict[str, Any]) -> bytes:
    """A DocumentResponse from ``{"doc_id", "text", "metadata", "semantic_id"}``."""
    return _DOCUMENT.dump_json(_DOCUMENT.validate_python(document))


def encode_json(value: Any) -> bytes:
    """Every other JSON answer (errors, /info, /readyz, FastAPI's model answers): a non-finite float is
    written as null (a bundle's manifest may hold one), never as NaN or Infinity."""
    return to_json(value, inf_nan_mode="null")
