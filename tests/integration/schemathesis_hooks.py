"""Schemathesis hooks of ``test_schemathesis_finds_no_server_error`` (loaded through SCHEMATHESIS_HOOKS).

Schemathesis generates only valid Unicode and finite numbers, and its JSON serializer refuses NaN; the
clients of issue 14 sent neither. So:

- request bodies are written by Python's ``json.dumps`` with its defaults, as those clients did: a lone
  surrogate as its ``\\udXXX`` escape, a non-finite float as ``NaN`` / ``Infinity`` / ``-Infinity``;
- every generated body is rewritten leaf by leaf: a string may get a lone surrogate or a control
  character (at a drawn position), a number may become NaN or +-Infinity (each leaf with
  probability ~1/4, so that valid bodies, and the 200 answers to check, stay common);
- the check ``strict_json_with_request_id`` fails any response whose JSON body a strict client could
  not read (not UTF-8, or NaN / Infinity, which Python's parser accepts), any response without an
  X-Request-ID, and any error body whose request id is not that header.
"""

from __future__ import annotations

import json
import math
from typing import Any

import schemathesis
from hypothesis import strategies as st

NON_FINITE = (math.nan, math.inf, -math.inf)
FORBIDDEN_CHARACTERS = st.one_of(
    st.integers(0xD800, 0xDFFF),  # lone surrogates
    st.sampled_from([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0)]),  # controls
).map(chr)
MUTATE = st.sampled_from([False, False, False, True])


@schemathesis.serializer("application/json")
def python_json(ctx: Any, value: Any) -> bytes:
    """Python's json.dumps with its defaults (escapes surrogates, writes NaN and Infinity)."""
    if isinstance(value, bytes):
        return value
    return json.dumps(value).encode()


def _insert_forbidden(text: str) -> st.SearchStrategy[str]:
    return st.tuples(st.integers(0, len(text)), FORBIDDEN_CHARACTERS).map(lambda p: text[:p[0]] + p[1] + text[p[0]:])


def _rewritten(value: Any) -> st.SearchStrategy[Any]:
    """``value``, or a variant of it with forbidden characters and non-finite numbers at its leaves."""
    if isinstance(value, dict):
        items = [st.tuples(st.just(k), _rewritten(v)) for k, v in value.items()]
        return st.tuples(*items).map(dict)
    if isinstance(value, list):
        return st.tuples(*map(_rewritten, value)).map(list)
    if isinstance(value, str):
        return MUTATE.flatmap(lambda mutate: _insert_forbidden(value) if mutate else st.just(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return MUTATE.flatmap(lambda mutate: st.sampled_from(NON_FINITE) if mutate else st.just(value))
    return st.just(value)


@schemathesis.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
    """Rewrite generated JSON bodies (see the module docstring)."""
    return _rewritten(body)


def _refuse_constant(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


@schemathesis.check
def strict_json_with_request_id(ctx: Any, response: Any, case: Any) -> bool | None:
    """Strict JSON bodies, and the request id on every response and in every error body."""
    # schemathesis's Response: headers with lowercase keys and list values.
    request_id = (response.headers.get("x-request-id") or [None])[0]
    if not request_id:
        raise AssertionError(f"{response.status_code} response without X-Request-ID")
    content_type = (response.headers.get("content-type") or [""])[0]
    if "json" not in content_type:
        return None
    try:
        body = json.loads(response.content.decode("utf-8"), parse_constant=_refuse_constant)
    except ValueError as exc:
        raise AssertionError(f"{response.status_code} response body is not strict JSON: {exc}") from exc
    if response.status_code >= 400 and body.get("request_id") != request_id:
        raise AssertionError(f"error body request_id {body.get('request_id')!r} is not X-Request-ID {request_id!r}")
    return None
