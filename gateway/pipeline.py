"""The request pipeline (DESIGN.md §2), in order, in one place.

identify → route → authorize → forward → inspect records → audit, then release.

Every stage either hands a typed result to the next or raises a `Denial`; every request
ends in exactly one audit decision, and no byte of a record leaves before its access row
is committed.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import select
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from werkzeug.wrappers import Request, Response

from gateway.audit import AuditUnavailable, AuditWriter
from gateway.config import Config
from gateway.identity import AuthError, Principal, TokenVerifier
from gateway.keys import GatewayKeys
from gateway.lockout import LockHit, LockState
from gateway.policy import PolicyEngine
from gateway.records import ExtractedRecord, RecordError, extract_records
from gateway.records.selection import remove_records
from gateway.routemap import PathRejected, RouteError, RouteMap, RouteMatch, normalise_path
from gateway.routemap.normalise import split_request_target
from gateway.upstream import (
    Upstream,
    UpstreamError,
    UpstreamResponse,
    request_headers_for_upstream,
    response_headers_for_client,
)
from gateway.upstream.downloads import ActiveDownloads, Download, GuardedStream

log = logging.getLogger(__name__)

MAX_REQUEST_BODY = 10 * 1024 * 1024
_QUOTED_STRING_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')
STREAM_CHUNK = 64 * 1024


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
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.reason = reason or error
        self.headers = headers or {}


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

    def client_gone(self) -> bool:
        """True when the client has closed its end (peeked, nothing consumed)."""
        sock = self.client_socket
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            # Readable with nothing to read is an orderly close; data is a pipelined request.
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except (OSError, ValueError):
            return True

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


class Pipeline:
    def __init__(
        self,
        config: Config,
        *,
        verifier: TokenVerifier,
        routes: RouteMap,
        policy: PolicyEngine,
        upstream: Upstream,
        signer: GatewayKeys,
        audit: AuditWriter,
        locks: LockState,
    ) -> None:
        self.config = config
        self.locks = locks
        self.downloads = ActiveDownloads()
        locks.on_change(self._on_locks_changed)
        self.verifier = verifier
        self.routes = routes
        self.policy = policy
        self.upstream = upstream
        self.signer = signer
        self.audit = audit

    # --- entry -------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        ctx = self._context(request)
        try:
            try:
                return self._run(ctx, request)
            except Denial as denial:
                self.audit.write([ctx.row(decision="deny", reason=denial.reason)])
                _discard_unread_body(request)
                return json_error(
                    denial.status, denial.error, denial.message, ctx.request_id, denial.headers
                )
        except AuditUnavailable:
            return json_error(
                503,
                "audit_unavailable",
                "the access log cannot be written; nothing was released",
                ctx.request_id,
            )
        except Exception:
            # A bug must still fail closed and answer in the same JSON shape.
            log.exception("request %s failed", ctx.request_id)
            with contextlib.suppress(AuditUnavailable):
                self.audit.write([ctx.row(decision="deny", reason="internal_error")])
            return json_error(
                500, "internal_error", "the gateway failed to handle this request", ctx.request_id
            )

    def _context(self, request: Request) -> RequestContext:
        environ = request.environ
        target = environ.get("RAW_URI") or environ.get("REQUEST_URI") or request.full_path
        target_error = None
        try:
            raw_path, query = split_request_target(target)
        except PathRejected as rejected:
            raw_path, query, target_error = request.path, "", rejected.reason
        return RequestContext(
            request_id=secrets.token_hex(12),
            time=datetime.now(UTC),
            method=request.method,
            raw_path=raw_path,
            query=query,
            client_ip=self._client_ip(request),
            user_agent=request.headers.get("User-Agent"),
            target_error=target_error,
            client_socket=environ.get("gunicorn.socket"),
        )

    def _client_ip(self, request: Request) -> str | None:
        hops = self.config.gateway.trusted_proxy_hops
        remote = request.environ.get("REMOTE_ADDR")
        if hops <= 0:
            return remote
        chain = [
            p.strip() for p in request.headers.get("X-Forwarded-For", "").split(",") if p.strip()
        ]
        chain.append(remote or "")
        return chain[-hops - 1] if len(chain) > hops else chain[0]

    # --- stages ------------------------------------------------------------------------

    def _run(self, ctx: RequestContext, request: Request) -> Response:
        path = self._normalise(ctx)
        ctx.principal = self._identify(request)
        ctx.match = self._route(ctx, path)
        self._check_locks(ctx, ctx.match.project)
        self._authorize(ctx)
        upstream_response = self._forward(ctx, request)
        spec = ctx.match.route.records
        if spec is not None and 200 <= upstream_response.status < 300:
            return self._release_records(ctx, upstream_response)
        return self._release_stream(ctx, upstream_response)

    def _identify(self, request: Request) -> Principal:
        try:
            return self.verifier.authenticate(request.headers.get("Authorization"))
        except AuthError as error:
            # The description may quote token content; keep the quoted-string well formed.
            description = _QUOTED_STRING_UNSAFE.sub("?", error.description)
            challenge = (
                f'Bearer realm="gateway", error="{error.error}", error_description="{description}"'
            )
            headers = {"WWW-Authenticate": challenge} if error.status == 401 else {}
            raise Denial(error.status, error.error, error.description, headers=headers) from None

    def _normalise(self, ctx: RequestContext) -> str:
        """Hostile path forms are refused before anything else looks at the request."""
        if ctx.target_error is not None:
            raise Denial(400, "bad_path", ctx.target_error)
        try:
            return normalise_path(ctx.raw_path)
        except PathRejected as rejected:
            raise Denial(400, "bad_path", rejected.reason) from None

    def _route(self, ctx: RequestContext, path: str) -> RouteMatch:
        try:
            return self.routes.match(ctx.method, path, ctx.query)
        except RouteError as error:
            raise Denial(error.status, error.error, error.message) from None

    def _check_locks(self, ctx: RequestContext, project: str | None) -> None:
        principal = ctx.principal
        assert principal is not None
        if not self.locks.fresh:
            raise Denial(
                503,
                "lock_state_unknown",
                "the gateway cannot confirm its lock state; try again shortly",
            )
        hit = self._lock_hit(principal, project)
        if hit is not None:
            # The contractor learns only that access is suspended; the lock id is logged.
            raise Denial(403, "locked", "access is suspended", reason=f"locked:{hit.lock_id}")

    def _lock_hit(self, principal: Principal, project: str | None) -> LockHit | None:
        return self.locks.check(
            vendor=principal.vendor,
            contractor=principal.policy_subject,
            issuer=principal.issuer,
            project=project,
        )

    def _on_locks_changed(self) -> None:
        """Drop cached tokens of locked principals and cut their running downloads."""
        self.verifier.forget(lambda principal: self._lock_hit(principal, None) is not None)
        for download in self.downloads.snapshot():
            if self._lock_hit(download.principal, download.project) is not None:
                download.cut()

    def _authorize(self, ctx: RequestContext) -> None:
        match, principal = ctx.match, ctx.principal
        assert match is not None and principal is not None
        spec = match.route.records
        if match.project is None or (spec is not None and spec.record_task is not None):
            # Project or task is known only from the response body; each record is checked there.
            ctx.policy_version = self.policy.version
            return
        decision = self.policy.decide(
            principal.policy_subject,
            principal.vendor,
            match.project,
            match.task,
            match.route.action,
        )
        ctx.policy_version = decision.version
        if not decision.allowed:
            raise Denial(403, "forbidden", "not allowed by policy", reason=decision.reason)
        ctx.prechecked.add((match.project, match.task))

    def _forward(self, ctx: RequestContext, request: Request) -> UpstreamResponse:
        match, principal = ctx.match, ctx.principal
        assert match is not None and principal is not None
        headers = request_headers_for_upstream(request.headers.items())
        headers.update(self.config.upstream.headers)
        headers["Accept-Encoding"] = "identity"
        headers["X-Request-Id"] = ctx.request_id
        if ctx.client_ip:
            headers["X-Forwarded-For"] = ctx.client_ip
        headers["X-Gateway-Assertion"] = self.signer.sign(
            {
                "sub": principal.policy_subject,
                "vendor": principal.vendor,
                "project": match.project,
                "task": None if match.task == "*" else match.task,
                "rid": ctx.request_id,
            }
        )
        body = None
        if ctx.method in ("POST", "PUT", "PATCH", "DELETE"):
            body = _read_request_body(request)
        try:
            return self.upstream.send(ctx.method, match.path, ctx.query, headers, body)
        except UpstreamError as error:
            raise Denial(error.status, error.error, error.message, reason=error.reason) from None

    def _release_records(
        self, ctx: RequestContext, upstream_response: UpstreamResponse
    ) -> Response:
        """Parse, account for and release a record body; released bytes are what was logged.

        The body goes out re-serialised from the parsed value that was hashed and logged,
        never as the upstream's bytes: a duplicate key or a second copy of the records
        array must not let a client's parser see something other than what the log holds.
        """
        match = ctx.match
        assert match is not None and match.route.records is not None
        spec = match.route.records
        with upstream_response:
            if _has_no_body(ctx.method, upstream_response.status):
                upstream_response.read(0)
                return self._release_empty(ctx, upstream_response)
            try:
                raw = upstream_response.read_decoded(self.config.upstream.max_record_body_bytes)
            except UpstreamError as error:
                log.warning("record route %s: %s", match.path, error.message)
                raise Denial(
                    error.status, error.error, error.message, reason=error.reason
                ) from None
        try:
            body = orjson.loads(raw)
            selected, records = extract_records(spec, body)
        except (orjson.JSONDecodeError, RecordError) as error:
            reason = error.reason if isinstance(error, RecordError) else "upstream_malformed"
            log.warning("record route %s: %s", match.path, error)
            raise Denial(
                502,
                "bad_upstream_response",
                "the dataset service returned a body the gateway cannot account for",
                reason=reason,
            ) from None
        keep = [self._record_allowed(ctx, record) for record in records]
        rows = self._record_rows(ctx, records, keep, upstream_response.status)
        if not all(keep):
            if spec.single:
                self.audit.write(rows)
                return json_error(403, "forbidden", "not allowed by policy", ctx.request_id)
            try:
                remove_records(spec, body, selected, keep)
            except RecordError as error:
                raise Denial(
                    502, "bad_upstream_response", str(error), reason="unfilterable"
                ) from None
        try:
            released = orjson.dumps(body)
        except orjson.JSONEncodeError:
            raise Denial(
                502,
                "bad_upstream_response",
                "the dataset service returned a body the gateway cannot account for",
                reason="upstream_malformed",
            ) from None
        if not rows:
            rows.append(
                ctx.row(
                    decision="allow",
                    reason="no_records",
                    upstream_status=upstream_response.status,
                    bytes=len(released),
                )
            )
        self._commit_before_release(ctx, rows)
        response = Response(
            released,
            status=upstream_response.status,
            headers=response_headers_for_client(
                upstream_response.headers.items(), body_rewritten=True
            ),
        )
        response.headers["X-Request-Id"] = ctx.request_id
        return response

    def _record_rows(
        self,
        ctx: RequestContext,
        records: list[ExtractedRecord],
        keep: list[bool],
        upstream_status: int,
    ) -> list[dict[str, Any]]:
        match = ctx.match
        assert match is not None
        # Everything but the record's own facts is shared by the request's rows.
        base = ctx.row(decision="allow", reason="released", upstream_status=upstream_status)
        route_task = match.task if match.task != "*" else None
        return [
            {
                **base,
                "project": record.project or match.project,
                "task": record.task or route_task,
                "record_id": record.record_id,
                "record_sha256": record.sha256,
                "bytes": record.size,
            }
            if kept
            else {
                **base,
                "decision": "filtered",
                "reason": "record_policy_denied",
                "project": record.project or match.project,
                "task": record.task or route_task,
                "record_id": record.record_id,
                "record_sha256": record.sha256,
                "bytes": 0,
            }
            for record, kept in zip(records, keep, strict=True)
        ]

    def _release_empty(self, ctx: RequestContext, upstream_response: UpstreamResponse) -> Response:
        """A record route answered without a body (204, HEAD): nothing to account for."""
        self._commit_before_release(
            ctx,
            [
                ctx.row(
                    decision="allow",
                    reason="no_records",
                    upstream_status=upstream_response.status,
                    bytes=0,
                )
            ],
        )
        response = Response(
            b"",
            status=upstream_response.status,
            headers=response_headers_for_client(
                upstream_response.headers.items(), body_rewritten=True
            ),
        )
        response.headers["X-Request-Id"] = ctx.request_id
        return response

    def _commit_before_release(self, ctx: RequestContext, rows: list[dict[str, Any]]) -> None:
        """Last checks, then the rows are durably committed; only then may bytes leave."""
        assert ctx.match is not None
        # A lock may have landed while the upstream answered: nothing of theirs leaves.
        self._check_locks(ctx, ctx.match.project)
        if ctx.client_gone():
            # Whoever asked has hung up (a queued request behind slow clients, a timeout):
            # logging these records as released would claim a delivery that cannot happen.
            raise Denial(499, "client_gone", "the client closed the connection")
        self.audit.write(rows)

    def _record_allowed(self, ctx: RequestContext, record: ExtractedRecord) -> bool:
        match, principal = ctx.match, ctx.principal
        assert match is not None and principal is not None
        project = record.project or match.project
        task = record.task or match.task
        if project is None:
            return False
        if (project, task) in ctx.prechecked:
            return True
        if project != match.project and self._lock_hit(principal, project) is not None:
            return False
        decision = self.policy.decide(
            principal.policy_subject, principal.vendor, project, task, match.route.action
        )
        if ctx.policy_version is None or decision.version > ctx.policy_version:
            ctx.policy_version = decision.version
        if decision.allowed:
            ctx.prechecked.add((project, task))
        return decision.allowed

    def _log_ended_early(self, ctx: RequestContext, reason: str) -> None:
        with contextlib.suppress(AuditUnavailable):
            self.audit.write([ctx.row(decision="deny", reason=reason)])

    def _release_stream(self, ctx: RequestContext, upstream_response: UpstreamResponse) -> Response:
        match = ctx.match
        assert match is not None
        length = upstream_response.headers.get("Content-Length")
        row = ctx.row(
            decision="allow",
            reason="released"
            if 200 <= upstream_response.status < 400
            else f"upstream_{upstream_response.status}",
            upstream_status=upstream_response.status,
            bytes=int(length) if length and length.isdigit() else None,
        )
        try:
            self._commit_before_release(ctx, [row])
        except BaseException:
            upstream_response.close()
            raise
        assert ctx.principal is not None
        download = Download(ctx.principal, match.project, upstream_response)
        response = Response(
            GuardedStream(
                download,
                self.downloads,
                locked=lambda d: self._lock_hit(d.principal, d.project) is not None,
                ended_early=lambda reason: self._log_ended_early(ctx, reason),
                label=ctx.request_id,
            ),
            status=upstream_response.status,
            headers=response_headers_for_client(upstream_response.headers.items()),
            direct_passthrough=True,
        )
        if length and length.isdigit():
            response.headers["Content-Length"] = length
        response.headers["X-Request-Id"] = ctx.request_id
        return response


def _has_no_body(method: str, status: int) -> bool:
    return method == "HEAD" or status in (204, 205, 304)


def _discard_unread_body(request: Request) -> None:
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
            chunk = request.stream.read(min(STREAM_CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)


def _read_request_body(request: Request) -> bytes:
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
            chunk = request.stream.read(STREAM_CHUNK)
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
