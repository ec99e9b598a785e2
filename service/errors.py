"""The service's error hierarchy. Each class fixes its HTTP status and ``error_type``.

This module imports nothing from FastAPI: the engine, the batcher and the store raise these errors
without knowing about HTTP; ``service.app`` maps them to one JSON body shape:

    {"error": "<message for a human>", "error_type": "<stable machine name>",
     "request_id": "<X-Request-ID>", "details": [...]}

``details`` is a list (empty unless there is something per field to say, e.g. validation errors).
``BundleError`` (a bundle or the store beside it cannot be served) is bundle's own, re-exported here.
"""

from __future__ import annotations

from typing import Any, ClassVar

from bundle import BundleError


class ServiceError(Exception):
    """A failure the client should see. Subclasses fix the HTTP status and error_type."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal"

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class BadRequestError(ServiceError):
    """The request is well-formed JSON but asks for something invalid."""

    status_code = 422
    error_type = "validation_error"


class UnauthorizedError(ServiceError):
    """A write without the right API key."""

    status_code = 401
    error_type = "unauthorized"


class NotFoundError(ServiceError):
    """An unknown doc_id (GET /documents/{doc_id}, or a history with no known item)."""

    status_code = 404
    error_type = "not_found"


class PayloadTooLargeError(ServiceError):
    """A body over max_body_bytes or a batch over max_batch_documents."""

    status_code = 413
    error_type = "payload_too_large"


class OverloadedError(ServiceError):
    """The micro-batch queue is full: retry later (429 with Retry-After)."""

    status_code = 429
    error_type = "overloaded"
    retry_after_s: ClassVar[int] = 1


class IndexFullError(ServiceError):
    """No free semantic ID for a document (every counter under every candidate prefix is used)."""

    status_code = 409
    error_type = "index_full"


class ConflictError(ServiceError):
    """A document changed concurrently between the model call and the write: retry the batch."""

    status_code = 409
    error_type = "conflict"


class NotReadyError(ServiceError):
    """The service cannot do this now (not ready, or index writes need Redis and it is down)."""

    status_code = 503
    error_type = "unavailable"
    retry_after_s: ClassVar[int] = 1


class ModelError(ServiceError):
    """A model call failed; internals are logged, not returned."""

    status_code = 500
    error_type = "internal"


__all__ = ["BadRequestError", "BundleError", "ConflictError", "IndexFullError", "ModelError", "NotFoundError",
           "NotReadyError", "OverloadedError", "PayloadTooLargeError", "ServiceError", "UnauthorizedError"]
