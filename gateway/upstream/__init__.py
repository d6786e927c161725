"""Forwarding to the dataset service: pooled, header-clean, with an identity assertion."""

from gateway.upstream.forward import Upstream, UpstreamError, UpstreamResponse
from gateway.upstream.headers import (
    request_headers_for_upstream,
    response_headers_for_client,
    trace_headers,
)

__all__ = [
    "Upstream",
    "UpstreamError",
    "UpstreamResponse",
    "request_headers_for_upstream",
    "response_headers_for_client",
    "trace_headers",
]
