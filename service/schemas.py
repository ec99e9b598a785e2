"""The wire schemas of the HTTP API (request validation and the OpenAPI document).

Requests reject unknown fields (a misspelt ``top_k`` must not silently become the default k).
Limits that depend on settings (query length, batch size) are checked by the engine, with the same
error body.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

K = Annotated[int, Field(10, ge=1, le=100, description="How many results (1..100).")]


def _not_blank(value: str, what: str) -> str:
    if not value.strip():
        raise ValueError(f"{what} must not be empty or whitespace only")
    return value


class SearchRequest(BaseModel):
    """POST /search."""

    model_config = ConfigDict(extra="forbid")

    query: StrictStr = Field(description="The query text (at most max_query_chars characters).")
    k: K = 10

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, value: str) -> str:
        return _not_blank(value, "query")


class RecommendRequest(BaseModel):
    """POST /recommend: exactly one of ``history`` (doc_ids) and ``history_texts``, both oldest first."""

    model_config = ConfigDict(extra="forbid")

    history: list[StrictStr] | None = Field(
        None, description="doc_ids of the user's items, oldest first (as clients keep them). Unknown "
                          "doc_ids are skipped and named in `warnings`; 404 when none is known.")
    history_texts: list[StrictStr] | None = Field(
        None, description="Texts of the user's items, oldest first, for items the index does not hold.")
    k: K = 10


class DocumentBody(BaseModel):
    """A document returned inside a search hit."""

    doc_id: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class SearchHit(BaseModel):
    """One result."""

    doc_id: str
    score: float = Field(description="Summed log-probability of the semantic ID (higher is better).")
    semantic_id: list[int]
    document: DocumentBody


class SearchResponse(BaseModel):
    """The answer of /search and /recommend."""

    results: list[SearchHit]
    index_version: int
    took_ms: float
    cached: bool
    warnings: list[str] = Field(default_factory=list)


class DocumentIn(BaseModel):
    """A document to index."""

    model_config = ConfigDict(extra="forbid")

    doc_id: StrictStr = Field(min_length=1, max_length=512, description="The document's external key.")
    text: StrictStr = Field(min_length=1, description="The text the models read.")
    metadata: dict[str, Any] | None = Field(None, description="Anything; returned with the document.")

    @field_validator("doc_id")
    @classmethod
    def _doc_id_not_blank(cls, value: str) -> str:
        return _not_blank(value, "doc_id")

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
    """GET /documents/{doc_id}."""

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
