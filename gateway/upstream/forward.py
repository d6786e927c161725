"""One pooled connection set to the upstream; never follows redirects.

A pooled connection goes back to the pool only once its response body has been read to
the end, or closed when the body is abandoned (an error, a lock cutting a download, a
client gone). Handing it back earlier lets another request take the connection while
this one still reads from it, and the pool then closes it under the first reader.

An idempotent request is retried once, and only when the connection broke before a
single byte of the response arrived: that is what a keep-alive connection the upstream
closed while it sat in the pool looks like. Writes are never retried.
"""

from __future__ import annotations

import http.client
import zlib
from collections.abc import Iterator
from typing import Any

import urllib3
from urllib3.exceptions import (
    HTTPError,
    NewConnectionError,
    ProtocolError,
    TimeoutError,
)

from gateway.config import UpstreamConfig

RETRIED_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The connection broke before the status line: nothing of a response was received.
_NO_RESPONSE_YET = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
STREAM_CHUNK = 64 * 1024


class UpstreamError(Exception):
    """The upstream could not be used; `reason` goes to the access log, `error` to the client."""

    def __init__(self, status: int, error: str, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.reason = reason or error


def _unreachable() -> UpstreamError:
    return UpstreamError(502, "upstream_unreachable", "the dataset service could not be reached")


def _timed_out() -> UpstreamError:
    return UpstreamError(504, "upstream_timeout", "the dataset service did not answer in time")


def _bad_body(reason: str, message: str) -> UpstreamError:
    return UpstreamError(502, "bad_upstream_response", message, reason=reason)


class BodyTooLarge(UpstreamError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            502,
            "bad_upstream_response",
            f"the dataset service returned a body over {limit} bytes",
            reason="upstream_too_large",
        )


class UpstreamResponse:
    """An upstream answer that owns its pooled connection until the body is done with.

    Use it as a context manager, or call `close()` on every path: a body read to the end
    returns the connection to the pool, anything else closes it.
    """

    def __init__(self, raw: urllib3.HTTPResponse) -> None:
        self._raw = raw
        self.status = raw.status
        self.headers = raw.headers

    def __enter__(self) -> UpstreamResponse:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def content_encoding(self) -> str:
        return (self.headers.get("Content-Encoding") or "identity").strip().lower()

    def read(self, limit: int) -> bytes:
        """The whole body as sent (still encoded), refused past `limit` bytes."""
        chunks = []
        total = 0
        for chunk in self.stream(STREAM_CHUNK):
            total += len(chunk)
            if total > limit:
                raise BodyTooLarge(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def read_decoded(self, limit: int) -> bytes:
        """The body with its content coding removed, refused past `limit` bytes either way."""
        return decode_body(self.read(limit), self.content_encoding, limit)

    def stream(self, chunk_size: int = STREAM_CHUNK) -> Iterator[bytes]:
        """The body as sent, in pieces as they arrive (up to `chunk_size`).

        A piece is handed on as soon as the upstream has sent it: waiting for a full chunk
        would hold back a trickling download. A timeout or a cut body raises UpstreamError.
        """
        raw = self._raw
        try:
            while True:
                piece = raw.read1(chunk_size, decode_content=False)
                if not piece:
                    return
                yield piece
        except TimeoutError:
            raise _timed_out() from None
        except (HTTPError, OSError, http.client.HTTPException):
            raise _bad_body(
                "upstream_truncated", "the dataset service broke off its answer"
            ) from None

    def shutdown(self) -> None:
        """Unblock a read waiting on a slow upstream from another thread."""
        self._raw.shutdown()

    def close(self) -> None:
        raw = self._raw
        if raw._connection is None:
            # urllib3 already returned (or discarded) the connection: body read or broken.
            return
        if not raw.closed:
            # Abandoned mid-body: the rest of the answer would greet the next request.
            raw.close()
        raw.release_conn()


def decode_body(data: bytes, encoding: str, limit: int) -> bytes:
    """Undo gzip or deflate without ever holding more than `limit` decoded bytes."""
    if encoding in ("identity", ""):
        return data
    if encoding in ("gzip", "x-gzip"):
        candidates = [zlib.MAX_WBITS | 16]
    elif encoding == "deflate":
        # RFC 9110 deflate is zlib-wrapped; some servers send raw deflate anyway.
        candidates = [zlib.MAX_WBITS, -zlib.MAX_WBITS]
    else:
        raise _bad_body(
            "upstream_encoding", f"the dataset service sent an unsupported encoding {encoding!r}"
        )
    for wbits in candidates:
        decoder = zlib.decompressobj(wbits)
        try:
            decoded = decoder.decompress(data, limit + 1)
        except zlib.error:
            continue
        if len(decoded) > limit:
            raise BodyTooLarge(limit)
        if not decoder.eof or decoder.unused_data:
            break
        return decoded
    raise _bad_body("upstream_encoding", f"the dataset service sent a corrupt {encoding} body")


def tls_options(config: UpstreamConfig) -> dict[str, Any]:
    """urllib3 pool options for the upstream's TLS: its CA, the gateway's client pair."""
    if not config.url.startswith("https://"):
        return {}
    options: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED"}
    if config.ca_file:
        options["ca_certs"] = config.ca_file
    if config.client_cert_file:
        options["cert_file"] = config.client_cert_file
        options["key_file"] = config.client_key_file
    return options


class Upstream:
    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self._base_path = urllib3.util.parse_url(config.url).path or ""
        self._base_path = self._base_path.rstrip("/")
        self._pool = urllib3.connection_from_url(
            config.url,
            maxsize=config.pool_size,
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout),
            **tls_options(config),
        )

    def send(
        self, method: str, path: str, query: str, headers: dict[str, str], body: Any
    ) -> UpstreamResponse:
        target = self._base_path + path + (f"?{query}" if query else "")
        attempts = 2 if method in RETRIED_METHODS else 1
        for attempt in range(attempts):
            try:
                raw = self._pool.urlopen(
                    method,
                    target,
                    body=body,
                    headers=headers,
                    redirect=False,
                    retries=False,
                    preload_content=False,
                    decode_content=False,
                    assert_same_host=False,
                    release_conn=False,
                )
            except NewConnectionError:
                # Checked first: urllib3 makes it a subclass of ConnectTimeoutError.
                raise _unreachable() from None
            except TimeoutError:
                raise _timed_out() from None
            except ProtocolError as error:
                cause = error.args[1] if len(error.args) > 1 else None
                if attempt + 1 < attempts and isinstance(cause, _NO_RESPONSE_YET):
                    continue
                raise _unreachable() from None
            except HTTPError:
                raise _unreachable() from None
            response = UpstreamResponse(raw)
            if response.status < 200:
                # http.client hands back a 1xx other than 100 as if it were the answer, with
                # the real one still unread on the connection.
                response.close()
                raise _bad_body(
                    "upstream_protocol",
                    f"the dataset service answered with an interim status {response.status}",
                )
            return response
        raise AssertionError("unreachable")  # pragma: no cover
