"""gunicorn's own refusals (a request line or headers too large, a malformed request) as
the gateway's JSON errors, like every other answer it gives, instead of an HTML page.

gunicorn offers no hook for the body of these answers: its `util.write_error` is replaced
in each worker (`install`, called where the app is loaded).
"""

from __future__ import annotations

import re
import socket

import orjson

_NAMES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def error_name(status: int, reason: str) -> str:
    return _NAMES.get(status) or re.sub(r"[^a-z]+", "_", reason.lower()).strip("_") or "error"


def write_json_error(sock: socket.socket, status: int, reason: str, message: str) -> None:
    body = orjson.dumps(
        {"error": error_name(status, reason), "message": (message or reason)[:2000]}
    )
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    from gunicorn import util

    util.write_nonblock(sock, head + body)


def install() -> None:
    from gunicorn import util

    util.write_error = write_json_error
