"""Structured logs: one JSON object per line, carrying the request id."""

from __future__ import annotations

import io
import json
import logging

from service.logs import JsonFormatter, request_id_var


def test_log_lines_are_json_with_the_request_id_and_extras() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.service.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    token = request_id_var.set("req-42")
    try:
        logger.info("POST %s %d", "/search", 200, extra={"endpoint": "/search", "duration_ms": 1.5})
    finally:
        request_id_var.reset(token)
        logger.removeHandler(handler)
    entry = json.loads(stream.getvalue())
    assert entry["msg"] == "POST /search 200" and entry["request_id"] == "req-42"
    assert entry["endpoint"] == "/search" and entry["duration_ms"] == 1.5 and entry["level"] == "INFO"
