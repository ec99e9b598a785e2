"""The web page (GET /, static files under /static/) and the ID-tree endpoint it browses (GET /ids/{prefix}).

The page is plain HTML, CSS and one JavaScript module in ``service/static/``: no build step, no CDN.
It calls the public API only (POST /search, GET /documents/{doc_id}, POST /recommend, GET /ids/...).

Documents come from users (POST /index-documents), so the page puts every field into the DOM as text
(``textContent``), never as markup, and the page is sent with a Content-Security-Policy that allows
scripts from this origin only (``script-src 'self'``: no inline script, no inline event handler, no
``eval``), so a field carrying ``<script>`` or ``<img onerror=...>`` can neither render nor run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from service.errors import NotReadyError
from service.id_tree import IdTree, IdTreeNode
from service.schemas import ErrorResponse

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Everything from this origin only; no inline script or style element, no plugins, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter()


class PageStaticFiles(StaticFiles):
    """StaticFiles with the page's security headers, revalidated on every load (ETag) so an updated
    service never runs yesterday's script."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        response.headers["Cache-Control"] = "no-cache"
        return response


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    """The web page: search, document view with recommendations, ID-tree browser."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})


_ID_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No document has an ID with this prefix"},
    422: {"model": ErrorResponse, "description": "Malformed prefix: a non-integer code, a code out of range, "
                                                "or as many codes as a full ID"},
}


async def _id_node(request: Request, prefix: str, samples: int, top_categories: int,
                   category_depth: int | None) -> IdTreeNode:
    components = getattr(request.app.state, "components", None)
    if components is None:
        raise NotReadyError("the service is starting")
    tree: IdTree = request.app.state.id_tree
    snapshot = components.engine.index.snapshot
    # A thread: the first request after an index update builds the version's view (O(N)).
    return await asyncio.to_thread(tree.node, snapshot, prefix, samples=samples, top_categories=top_categories,
                                   category_depth=category_depth)


Samples = Annotated[int, Query(ge=0, le=20, description="Sample documents per child (first in ID order).")]
TopCategories = Annotated[int, Query(ge=1, le=50, description="Categories listed per node and per child.")]
CategoryDepth = Annotated[int | None, Query(ge=1, le=10, description=(
    "Keep this many levels of each category path (e.g. 2: 'Beauty,Makeup'); all when absent."))]


@router.get("/ids/{prefix:path}", response_model=IdTreeNode, tags=["ids"], responses=_ID_ERRORS)
async def id_tree_node(request: Request,
                       prefix: Annotated[str, PathParam(description=(
                           "Codes joined by '/', level 0 first: '' (GET /ids/) is the root, '12/407' the "
                           "documents whose IDs start with 12, 407."))],
                       samples: Samples = 3, top_categories: TopCategories = 5,
                       category_depth: CategoryDepth = None) -> IdTreeNode:
    """A node of the semantic-ID tree: its child codes, each with its document count, category mix
    (from the documents' `category` / `categories` metadata) and sample titles. At the last level
    (`level_kind` 'counter') each child is one document. The paper's per-code category figure,
    browsable; `GET /ids/` is the root."""
    return await _id_node(request, prefix, samples, top_categories, category_depth)


@router.get("/ids", response_model=IdTreeNode, include_in_schema=False)
async def id_tree_root(request: Request, samples: Samples = 3, top_categories: TopCategories = 5,
                       category_depth: CategoryDepth = None) -> IdTreeNode:
    """GET /ids/ without the slash."""
    return await _id_node(request, "", samples, top_categories, category_depth)


def install_web(app: FastAPI) -> None:
    """Add the page, its static files and GET /ids/{prefix} to ``app``."""
    app.state.id_tree = IdTree()
    app.include_router(router)
    app.mount("/static", PageStaticFiles(directory=STATIC_DIR), name="static")


__all__ = ["CONTENT_SECURITY_POLICY", "STATIC_DIR", "install_web", "router"]
