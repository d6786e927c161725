"""Header hygiene in both directions.

Client headers are forwarded from an allow-list, not a block-list: the set of identity
headers some upstream might trust (X-Forwarded-Email, X-Auth-Request-User, Remote-User,
X-Original-URL, ...) has no end, and WSGI folds `X_Forwarded_Email` and
`X-Forwarded-Email` into the same environ key anyway. Whatever is not known to be
harmless does not reach the upstream.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping

# RFC 9110 §7.6.1 connection-specific fields, plus the non-standard ones seen in the wild.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
    }
)

FORWARDED_REQUEST_HEADERS = frozenset(
    {
        "accept",
        "accept-language",
        "cache-control",
        "content-type",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-unmodified-since",
        "pragma",
        "range",
        "user-agent",
    }
)

_RESPONSE_DROP = HOP_BY_HOP | {"content-length", "set-cookie", "server", "x-gateway-assertion"}
# Headers describing the upstream's bytes, wrong once the body is decoded and re-serialised.
_REWRITTEN_BODY_DROP = _RESPONSE_DROP | {
    "content-encoding",
    "content-md5",
    "content-range",
    "digest",
    "repr-digest",
    "content-digest",
    "accept-ranges",
}


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    named: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            named.update(token.strip().lower() for token in value.split(",") if token.strip())
    return named


def request_headers_for_upstream(
    client_headers: Iterable[tuple[str, str]],
    *,
    extra_allowed: frozenset[str] = frozenset(),
) -> dict[str, str]:
    headers_list = list(client_headers)
    dropped = _connection_tokens(headers_list) | HOP_BY_HOP
    allowed = FORWARDED_REQUEST_HEADERS | extra_allowed
    forwarded: dict[str, str] = {}
    for name, value in headers_list:
        key = name.lower().replace("_", "-")
        if key in dropped or key not in allowed or key != name.lower():
            continue
        forwarded[key] = value
    return forwarded


_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_TRACESTATE_MAX = 512


def trace_headers(client_headers: Mapping[str, str]) -> dict[str, str]:
    """W3C Trace Context for the upstream request: the client's trace continued with the
    gateway as the parent span, or a new trace when the client sent none (or a malformed
    or all-zero one, which the spec says to discard). `tracestate` only travels with the
    trace it belongs to, and only if it is of sane size."""
    parent = (client_headers.get("traceparent") or "").strip()
    match = _TRACEPARENT.match(parent)
    span = secrets.token_hex(8)
    if match and match.group(1) != "0" * 32 and match.group(2) != "0" * 16:
        headers = {"traceparent": f"00-{match.group(1)}-{span}-{match.group(3)}"}
        state = client_headers.get("tracestate")
        if state and len(state) <= _TRACESTATE_MAX and state.isprintable():
            headers["tracestate"] = state
        return headers
    return {"traceparent": f"00-{secrets.token_hex(16)}-{span}-00"}


def response_headers_for_client(
    upstream_headers: Iterable[tuple[str, str]], *, body_rewritten: bool = False
) -> list[tuple[str, str]]:
    """Headers the client may see; `body_rewritten` when the gateway re-serialised the body."""
    headers_list = list(upstream_headers)
    dropped = _connection_tokens(headers_list) | (
        _REWRITTEN_BODY_DROP if body_rewritten else _RESPONSE_DROP
    )
    return [(name, value) for name, value in headers_list if name.lower() not in dropped]
