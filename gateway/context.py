"""One request as the pipeline sees it: its context, its denial, its client's body.

`RequestContext` carries what every access row of the request shares; `Denial` ends a
request with one `deny` row and a JSON error.
"""

from __future__ import annotations

import contextlib
import secrets
import select
import socket
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from werkzeug.wrappers import Request, Response

from gateway.identity import Principal
from gateway.routemap import PathRejected, RouteMatch
from gateway.routemap.normalise import split_request_target

MAX_REQUEST_BODY = 10 * 1024 * 1024
BODY_CHUNK = 64 * 1024


def new_request_id() -> str:
    """24 hex digits: milliseconds since the epoch, then 48 random bits.

    Time first, so that the access log's request_id index grows at its right edge, as
    its time indexes do; random ids put each request's 50 index entries on a random
    page of an index that outgrows memory.
    """
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(6)}"


def client_ip(request: Request, trusted_proxy_hops: int) -> str | None:
    """The client's address: the peer, or the entry `trusted_proxy_hops` proxies back in
    X-Forwarded-For (what a client writes there itself is never believed)."""
    remote = request.environ.get("REMOTE_ADDR")
    if trusted_proxy_hops <= 0:
        return remote
    chain = [p.strip() for p in request.headers.get("X-Forwarded-For", "").split(",") if p.strip()]
    chain.append(remote or "")
    return chain[-trusted_proxy_hops - 1] if len(chain) > trusted_proxy_hops else chain[0]


class Denial(Exception):
    """A request that ends here; `reason` goes to the access log, `error` to the client."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
        row_fields: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.reason = reason or error
        self.headers = headers or {}
        # Facts of the deny row that differ from the request's (a record's real project).
        self.row_fields = row_fields or {}


@dataclass
class RequestContext:
    request_id: str
    time: datetime
    method: str
    raw_path: str
    query: str
    client_ip: str | None
    user_agent: str | None
    target_error: str | None = None
    client_socket: Any = None
    principal: Principal | None = None
    match: RouteMatch | None = None
    policy_version: int | None = None
    # (project, task) pairs already allowed for this request, so records need no second check.
    prechecked: set[tuple[str, str]] = field(default_factory=set)
    # A write's request body: (SHA-256, size), logged on its row.
    written: tuple[str, int] | None = None
    # Why the gateway refused, when it did (the answer's reason in the metrics).
    refusal: str | None = None

    @classmethod
    def from_request(cls, request: Request, trusted_proxy_hops: int) -> RequestContext:
        environ = request.environ
        target = environ.get("RAW_URI") or environ.get("REQUEST_URI") or request.full_path
        target_error = None
        try:
            raw_path, query = split_request_target(target)
        except PathRejected as rejected:
            raw_path, query, target_error = request.path, "", rejected.reason
        return cls(
            request_id=new_request_id(),
            time=datetime.now(UTC),
            method=request.method,
            raw_path=raw_path,
            query=query,
            client_ip=client_ip(request, trusted_proxy_hops),
            user_agent=request.headers.get("User-Agent"),
            target_error=target_error,
            client_socket=environ.get("gunicorn.socket"),
        )

    def client_gone(self) -> bool:
        """True when the client has closed its end (peeked, nothing consumed).

        Only a plain socket is asked: a TLS socket cannot peek below its records, and a
        check that cannot tell must not refuse a client that is still there.
        """
        sock = self.client_socket
        if sock is None or isinstance(sock, ssl.SSLSocket):
            return False
        try:
            poller = select.poll()  # not select(): it fails for descriptors past 1023
            poller.register(sock, select.POLLIN | select.POLLHUP)
            if not poller.poll(0):
                return False
            # Readable with nothing to read is an orderly close; data is a pipelined request.
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except ConnectionError:
            return True
        except (OSError, ValueError, TypeError):
            return False

    def row(self, *, decision: str, reason: str | None, **fields: Any) -> dict[str, Any]:
        principal, match = self.principal, self.match
        return {
            "time": self.time,
            "request_id": self.request_id,
            "issuer": principal.issuer if principal else None,
            "subject": principal.subject if principal else None,
            "vendor": principal.vendor if principal else None,
            "client_ip": self.client_ip,
            "user_agent": (self.user_agent or "")[:512] or None,
            "method": self.method,
            "path": (match.path if match else self.raw_path)[:2048],
            "project": match.project if match else None,
            "task": match.task if match and match.task != "*" else None,
            "record_id": match.record if match else None,
            "record_sha256": None,
            "action": match.route.action if match else None,
            "decision": decision,
            "reason": reason,
            "policy_version": self.policy_version,
            "upstream_status": None,
            "bytes": None,
            **fields,
        }


def json_error(
    status: int, error: str, message: str, request_id: str, headers: dict[str, str] | None = None
) -> Response:
    body = orjson.dumps({"error": error, "message": message, "request_id": request_id})
    response = Response(body, status=status, mimetype="application/json", headers=headers)
    response.headers["X-Request-Id"] = request_id
    return response


def discard_unread_body(request: Request) -> None:
    """Read (bounded) what a refused client sent, so its keep-alive connection survives.

    gunicorn drains at most 64 KiB of an unread body and otherwise closes the connection
    without telling the client, whose next request on it then fails.
    """
    length = request.content_length
    if request.method in ("GET", "HEAD") and not length:
        return
    if length is not None and length > MAX_REQUEST_BODY:
        return
    with contextlib.suppress(Exception):
        remaining = MAX_REQUEST_BODY
        while remaining > 0:
            chunk = request.stream.read(min(BODY_CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)


def read_request_body(request: Request) -> bytes:
    """The client's body, read in bounded chunks: a chunked upload stops at the limit.

    A body shorter than its Content-Length means the client went away mid-upload; a
    truncated write must never be forwarded.
    """
    length = request.content_length
    if length is not None and length > MAX_REQUEST_BODY:
        raise Denial(413, "body_too_large", "request body is too large")
    chunks = []
    total = 0
    try:
        while True:
            chunk = request.stream.read(BODY_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_REQUEST_BODY:
                raise Denial(413, "body_too_large", "request body is too large")
            chunks.append(chunk)
    except Denial:
        raise
    except TimeoutError:
        raise Denial(
            408, "client_timeout", "the request body arrived too slowly", reason="client_timeout"
        ) from None
    except Exception:
        # The server's body readers raise their own errors for a cut chunked body.
        raise Denial(
            400, "incomplete_body", "the request body was cut off", reason="client_gone"
        ) from None
    if length is not None and total != length:
        raise Denial(400, "incomplete_body", "the request body was cut off", reason="client_gone")
    return b"".join(chunks)
