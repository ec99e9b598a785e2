"""The HTTP routes: validate, call the engine, frame the answer. No model, store or Redis code here.

The response models of service.schemas are both what OpenAPI shows and what is sent: search answers
and documents are encoded by service.schemas' encoders (from the ranking's hits, encoded once when
ranked and cached as bytes), the other answers by FastAPI from the same models.
"""

from __future__ import annotations

import hmac
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request, Response
from fastapi.responses import JSONResponse

from service.components import Components
from service.engine import Engine, SearchOutcome
from service.errors import NotReadyError, UnauthorizedError
from service.schemas import (
    DOC_ID_RULE,
    DocumentResponse,
    ErrorResponse,
    IndexDocumentsRequest,
    IndexDocumentsResponse,
    RecommendRequest,
    SearchRequest,
    SearchResponse,
    encode_json,
    encode_search_response,
)
from service.telemetry import CONTENT_TYPE

router = APIRouter()


class StrictJSONResponse(JSONResponse):
    """The app's JSON response class: encoded by service.schemas.encode_json (strict JSON)."""

    def render(self, content: Any) -> bytes:
        return encode_json(content)


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in ((400, "The body could not be parsed (e.g. numbers over 4300 digits, nesting over "
                                      "Python's recursion limit)"),
                                (422, "Invalid request"), (429, "Queue full: retry after Retry-After seconds"),
                                (503, "Not ready"))
}


async def get_components(request: Request) -> Components:
    """The process's components (built in the lifespan).

    The dependencies are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in its thread
    pool, a thread hop per dependency per request (measurable at 1 client on 2 cores).
    """
    components: Components | None = getattr(request.app.state, "components", None)
    if components is None:
        raise NotReadyError("the service is starting")
    return components


async def get_engine(request: Request) -> Engine:
    """The engine."""
    return (await get_components(request)).engine


ComponentsDep = Annotated[Components, Depends(get_components)]
EngineDep = Annotated[Engine, Depends(get_engine)]


async def require_api_key(request: Request, authorization: Annotated[str | None, Header()] = None,
                    x_api_key: Annotated[str | None, Header()] = None) -> None:
    """Writes need LMINDEXER_API_KEY (Bearer token or X-API-Key) when it is set."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    given = x_api_key
    if given is None and authorization and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    if given is None or not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise UnauthorizedError("a valid API key is required for writes (Authorization: Bearer <key> or "
                                "X-API-Key: <key>)")


def _ranking_response(outcome: SearchOutcome, started: float) -> Response:
    ranking = outcome.ranking
    body = encode_search_response(ranking.results_json, index_version=ranking.index_version,
                                  took_ms=round((time.perf_counter() - started) * 1000, 3),
                                  cached=ranking.cached, warnings=outcome.warnings)
    return Response(content=body, media_type="application/json")


@router.post("/search", response_model=SearchResponse, tags=["retrieval"],
             responses={**_ERRORS, 404: {"model": ErrorResponse, "description": "No retriever in the bundle"}})
async def search(body: SearchRequest, engine: EngineDep) -> Response:
    """The k best documents for the query: in the generative mode the retriever's beam order, in the hybrid
    mode the beam's candidates and the nearest documents by text vector, scored by the bundle's hybrid rule
    (see the `mode` and `score` fields). Without `mode`, the bundle's default mode."""
    started = time.perf_counter()
    return _ranking_response(await engine.search(body.query, body.k, body.mode), started)


@router.post("/recommend", response_model=SearchResponse, tags=["recommendation"],
             responses={**_ERRORS, 404: {"model": ErrorResponse, "description": "No known history item"}})
async def recommend(body: RecommendRequest, engine: EngineDep) -> Response:
    """The k most likely next items for a history (oldest first); unknown doc_ids are skipped with a
    warning, and 404 names them when none is known."""
    started = time.perf_counter()
    return _ranking_response(await engine.recommend(body.history, body.history_texts, body.k, body.mode), started)


@router.post("/index-documents", response_model=IndexDocumentsResponse, tags=["indexing"],
             dependencies=[Depends(require_api_key)],
             responses={**_ERRORS, 401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
                        409: {"model": ErrorResponse, "description": "No free semantic ID / concurrent change"},
                        413: {"model": ErrorResponse, "description": "Batch or body too large"}})
async def index_documents(body: IndexDocumentsRequest, engine: EngineDep) -> IndexDocumentsResponse:
    """Assign semantic IDs to new or changed documents and store them durably (all-or-nothing)."""
    outcome = await engine.index_documents([(d.doc_id, d.text, d.metadata or {}) for d in body.documents])
    return IndexDocumentsResponse.model_validate(
        {"documents": [{"doc_id": d.doc_id, "semantic_id": list(d.semantic_id), "status": d.status}
                       for d in outcome.documents],
         "index_version": outcome.index_version})


@router.get("/documents/{doc_id}", response_model=DocumentResponse, tags=["documents"],
            responses={404: {"model": ErrorResponse, "description": "Unknown doc_id"}})
async def get_document(doc_id: Annotated[str, Path(description="The doc_id, percent-encoded. " + DOC_ID_RULE)],
                       engine: EngineDep) -> Response:
    """A document (text, metadata, semantic ID) by doc_id, percent-encoded in the path (one segment)."""
    return Response(content=await engine.document_json(doc_id), media_type="application/json")


@router.get("/healthz", tags=["ops"])
async def healthz() -> dict[str, str]:
    """Liveness: the process is up."""
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"], responses={503: {"description": "Not ready"}})
async def readyz(request: Request) -> StrictJSONResponse:
    """Readiness: bundle loaded and store writable; Redis and replication are reported, not required."""
    components: Components | None = getattr(request.app.state, "components", None)
    if components is None:
        return StrictJSONResponse({"ready": False, "bundle_loaded": False}, status_code=503)
    ready, report = await components.readiness()
    return StrictJSONResponse({"ready": ready, **report}, status_code=200 if ready else 503)


@router.get("/info", tags=["ops"])
async def info(components: ComponentsDep) -> dict[str, Any]:
    """The manifest, the live document count and the index version."""
    return components.info()


@router.get("/metrics", tags=["ops"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (text exposition format)."""
    return Response(content=request.app.state.metrics.render(), media_type=CONTENT_TYPE)
