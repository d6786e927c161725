"""JSON request bodies and field errors, shared by the admin, lock and alert blueprints.

- `InvalidRequest(fields)` → 400 `invalid_request` naming every bad field;
- `json_body(max_bytes)` reads at most `max_bytes` (413 beyond, also for chunked bodies
  that announce no length) and insists on a JSON object;
- every answer of a blueprint set up with `use_json_bodies` first reads and drops what is
  left of the request body (up to DRAIN_MAX_BYTES): a refusal
  (401, 403, 413, a bad content type) is sent without reading it, and gunicorn drains
  only 64 KiB of an unread body before it closes the kept-alive connection without saying
  so: the client's next request on it would fail.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import orjson
from flask import Blueprint, Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from gateway.api.auth import error_response

log = logging.getLogger(__name__)

# How much of an unread (refused) body is read and dropped so the connection stays usable.
DRAIN_MAX_BYTES = 64 * 1024 * 1024


class InvalidRequest(Exception):
    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields


def bad_request(fields: dict[str, str]) -> Any:
    summary = "; ".join(f"{k}: {v}" for k, v in list(fields.items())[:5])
    return error_response(400, "invalid_request", summary[:2000], fields=fields)


def drain_body(response: Response, limit: int) -> Response:
    """Read and drop what is left of the request body, whatever the answer, up to
    `limit` bytes; a body announced larger is left unread (the server then closes the
    connection, which such a client has earned)."""
    if request.content_length is not None and request.content_length > limit:
        return response
    remaining = limit
    try:
        while remaining > 0:
            chunk = request.stream.read(min(64 * 1024, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
    except Exception:  # a client that went away; the answer stands
        log.debug("request body not drained", exc_info=True)
    return response


def use_json_bodies(blueprint: Blueprint) -> None:
    """400 for InvalidRequest, and the body drained after every answer."""
    blueprint.register_error_handler(InvalidRequest, lambda error: bad_request(error.fields))
    blueprint.after_request(lambda response: drain_body(response, DRAIN_MAX_BYTES))


def json_body(max_bytes: int) -> Any:
    """The request's JSON document, or InvalidRequest / 413."""
    if request.mimetype != "application/json" and not request.mimetype.endswith("+json"):
        raise InvalidRequest({"body": "must be JSON, sent as Content-Type: application/json"})
    too_large = RequestEntityTooLarge(f"the request body is limited to {max_bytes} bytes")
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    raw = request.stream.read(max_bytes + 1)  # a chunked body has no length to check first
    if len(raw) > max_bytes:
        raise too_large
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidRequest({"body": f"is not valid JSON ({error.msg})"}) from None


def request_body(schema: str, max_bytes: int) -> dict[str, Any]:
    """The request's JSON object, valid under the document's `schema`, or InvalidRequest."""
    from gateway.api import openapi

    data = json_body(max_bytes)
    errors = openapi.validate(data, openapi.REQUESTS[schema])
    if errors:
        raise InvalidRequest(errors)
    return data


def request_query(schema: str) -> dict[str, Any]:
    """The query string, valid under the document's `schema` (values converted), or
    InvalidRequest."""
    from gateway.api import openapi

    values, errors = openapi.parse_query(request.args.to_dict(flat=False), openapi.QUERIES[schema])
    if errors:
        raise InvalidRequest(errors)
    return values


def json_object(max_bytes: int, allowed: Iterable[str]) -> dict[str, Any]:
    """The request's JSON object with only `allowed` keys, or InvalidRequest / 413."""
    data = json_body(max_bytes)
    if not isinstance(data, dict):
        raise InvalidRequest({"body": "must be a JSON object"})
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise InvalidRequest({name[:100]: "unknown field" for name in unknown[:20]})
    return data
