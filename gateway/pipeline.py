"""The request pipeline (docs/DESIGN.md §2), in order, in one place.

identify → route → authorize → forward → inspect records → audit, then release.

Every stage either hands a typed result to the next or raises a `Denial`; every request
ends in exactly one audit decision, and no byte of a record leaves before its access row
is committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
from typing import Any

import orjson
from werkzeug.wrappers import Request, Response

from gateway.audit import AuditUnavailable, AuditWriter
from gateway.catalogue.guard import CatalogueGuard, Verdict
from gateway.catalogue.view import CatalogueUnavailable
from gateway.config import Config
from gateway.context import (
    Denial,
    RequestContext,
    discard_unread_body,
    json_error,
    read_request_body,
)
from gateway.identity import AuthError, Principal, TokenVerifier
from gateway.keys import GatewayKeys
from gateway.lockout import LockHit, LockState
from gateway.lockout.canary import CanaryTripwire
from gateway.logs import CURRENT_REQUEST, access
from gateway.metrics import requests as meter
from gateway.policy import PolicyEngine
from gateway.records import ExtractedRecord, RecordBody, RecordError
from gateway.records.accounting import RecordAccounting
from gateway.routemap import PathRejected, RouteError, RouteMap, RouteMatch, normalise_path
from gateway.upstream import (
    Upstream,
    UpstreamError,
    UpstreamResponse,
    request_headers_for_upstream,
    response_headers_for_client,
    trace_headers,
)
from gateway.upstream.downloads import ActiveDownloads, Download, GuardedStream

log = logging.getLogger(__name__)

_QUOTED_STRING_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')
STREAM_CHUNK = 64 * 1024
# An upstream error body up to this size is read to the end, keeping its connection.
ERROR_BODY_DRAIN = 64 * 1024
# Methods whose policy check may wait for the answer: they change nothing upstream.
SAFE_METHODS = frozenset({"GET", "HEAD"})


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
        canaries: CanaryTripwire,
        catalogue: CatalogueGuard | None = None,
    ) -> None:
        self.config = config
        self.catalogue = catalogue or CatalogueGuard(None)
        self.locks = locks
        self.canaries = canaries
        self.downloads = ActiveDownloads()
        self._dropped_seen: set[tuple[str, tuple[str, ...]]] = set()
        locks.on_change(self._on_locks_changed)
        self.verifier = verifier
        self.routes = routes
        self.policy = policy
        self.upstream = upstream
        self.signer = signer
        self.audit = audit
        self.accounting = RecordAccounting(policy, self.catalogue, self._lock_hit)

    # --- entry -------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        ctx = RequestContext.from_request(request, self.config.gateway.trusted_proxy_hops)
        token = CURRENT_REQUEST.set(ctx)
        try:
            response = self._answer(ctx, request)
            meter.request_done(ctx, response.status_code, ctx.refusal, started)
            access.request_done(ctx, response.status_code, started)
        finally:
            CURRENT_REQUEST.reset(token)
        return response

    def _answer(self, ctx: RequestContext, request: Request) -> Response:
        try:
            try:
                return self._run(ctx, request)
            except Denial as denial:
                ctx.refusal = denial.reason
                if not isinstance(denial, _AlreadyLogged):
                    self.audit.write(
                        [ctx.row(decision="deny", reason=denial.reason, **denial.row_fields)]
                    )
                discard_unread_body(request)
                return json_error(
                    denial.status, denial.error, denial.message, ctx.request_id, denial.headers
                )
        except AuditUnavailable:
            ctx.refusal = "audit_unavailable"
            return json_error(
                503,
                "audit_unavailable",
                "the access log cannot be written; nothing was released",
                ctx.request_id,
            )
        except CatalogueUnavailable as error:
            ctx.refusal = "catalogue_unavailable"
            log.warning("request %s: catalogue unavailable: %s", ctx.request_id, error)
            with contextlib.suppress(AuditUnavailable):
                self.audit.write([ctx.row(decision="deny", reason="catalogue_unavailable")])
            return json_error(
                503,
                "catalogue_unavailable",
                "the record catalogue cannot be read; nothing was released",
                ctx.request_id,
            )
        except Exception:
            # A bug must still fail closed and answer in the same JSON shape.
            log.exception("request %s failed", ctx.request_id)
            ctx.refusal = "internal_error"
            with contextlib.suppress(AuditUnavailable):
                self.audit.write([ctx.row(decision="deny", reason="internal_error")])
            return json_error(
                500, "internal_error", "the gateway failed to handle this request", ctx.request_id
            )

    # --- stages ------------------------------------------------------------------------

    def _run(self, ctx: RequestContext, request: Request) -> Response:
        path = self._normalise(ctx)
        began = time.perf_counter()
        try:
            ctx.principal = self._identify(request)
        finally:
            meter.stage("identify", began)
        ctx.match = self._route(ctx, path)
        # Where the path's record really is; a write addressed by a record alone gets its
        # project (and task) here, before locks and policy are asked.
        ctx.match = self.catalogue.place_path_record(ctx.match)
        self._check_locks(ctx, ctx.match.project)
        began = time.perf_counter()
        try:
            self._authorize(ctx)
        finally:
            meter.stage("authorize", began)
        if ctx.match.record is not None and self.canaries.canaries([ctx.match.record]):
            self._refuse_canary_path(ctx)
        upstream_response = self._forward(ctx, request)
        route = ctx.match.route
        status = upstream_response.status
        if not 200 <= status < 300 and not _has_no_body(ctx.method, status):
            # An upstream's crash page names its software and its exception: never released.
            if status >= 500 or route.config.upstream_errors == "replace":
                return self._replace_upstream_error(ctx, upstream_response)
            if route.records is None or route.config.upstream_errors == "pass":
                return self._release_stream(ctx, upstream_response)
        if route.records is not None or route.config.media:
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
        task_unknown = spec is not None and spec.record_task is not None and match.task == "*"
        if ctx.method in SAFE_METHODS and (match.project is None or task_unknown):
            # Project or task is known only from the response body; each record is checked there.
            ctx.policy_version = self.policy.version
            return
        if match.project is None:
            # A write cannot be authorised after the upstream has made it.
            raise Denial(403, "forbidden", "not allowed by policy", reason="write_project_unknown")
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
        headers.update(trace_headers(request.headers))
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
            body = read_request_body(request)
            ctx.written = (hashlib.sha256(body).hexdigest(), len(body))
        began = time.perf_counter()
        try:
            return self.upstream.send(ctx.method, match.path, ctx.query, headers, body)
        except UpstreamError as error:
            meter.upstream_error(error.reason)
            raise Denial(error.status, error.error, error.message, reason=error.reason) from None
        finally:
            meter.stage("upstream", began)

    def _release_records(
        self, ctx: RequestContext, upstream_response: UpstreamResponse
    ) -> Response:
        """Parse, account for and release a record body; released bytes are what was logged."""
        match = ctx.match
        assert match is not None
        spec = match.route.records
        with upstream_response:
            if _has_no_body(ctx.method, upstream_response.status):
                upstream_response.read(0)
                return self._release_empty(ctx, upstream_response)
            try:
                raw = upstream_response.read_decoded(self.config.upstream.max_record_body_bytes)
            except UpstreamError as error:
                meter.upstream_error(error.reason)
                log.warning("record route %s: %s", match.path, error.message)
                raise Denial(
                    error.status, error.error, error.message, reason=error.reason
                ) from None
        body = None
        if spec is None:
            # A media route: the file is one record, its path the id.
            records = [
                ExtractedRecord(
                    record_id=match.path,
                    sha256=hashlib.sha256(raw).hexdigest(),
                    size=len(raw),
                    project=None,
                    task=None,
                )
            ]
        else:
            try:
                body = RecordBody.parse(spec, raw, max_values=self.config.upstream.max_json_values)
            except RecordError as error:
                raise _unaccountable(match, error) from None
            records = body.records
        canaries = self.canaries.canaries([record.record_id for record in records])
        if canaries and self.canaries.withhold:
            return self._withhold_canaries(ctx, records, canaries, upstream_response.status)
        verdicts = self.accounting.verdicts(ctx, records)
        rows = self.accounting.rows(ctx, records, verdicts, upstream_response.status)
        if canaries:
            # Released and marked ([anomaly] canary_on_fetch = "release").
            for row in rows:
                if row["record_id"] in canaries and row["decision"] == "allow":
                    row["reason"] = "canary"
        if ctx.written is not None and match.record is not None:
            rows.append(self.accounting.write_row(ctx, upstream_response.status))
        withheld = [verdict.reason is not None for verdict in verdicts]
        if (body is None or body.spec.single) and any(withheld):
            self.audit.write(rows)
            ctx.refusal = "record_withheld"
            meter.records(0, len(withheld))
            return json_error(403, "forbidden", "not allowed by policy", ctx.request_id)
        dropped: list[str] = []
        if body is None:
            released = raw
        else:
            try:
                released, dropped = body.render([not w for w in withheld])
            except RecordError as error:
                raise _unaccountable(match, error) from None
        if dropped:
            self._note_dropped_fields(match, dropped)
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
        released_count = withheld.count(False)
        meter.records(released_count, len(withheld) - released_count)
        if canaries:
            self._trip(ctx, canaries)
        response = Response(
            released,
            status=upstream_response.status,
            headers=response_headers_for_client(
                upstream_response.headers.items(), body_rewritten=True
            ),
        )
        response.headers["X-Request-Id"] = ctx.request_id
        return response

    def _note_dropped_fields(self, match: RouteMatch, dropped: list[str]) -> None:
        """Tell the operator once per route and field set, not once per request."""
        key = (match.route.config.path, tuple(dropped))
        # Bounded: an upstream inventing field names must not grow this without end.
        if key in self._dropped_seen or len(self._dropped_seen) >= 1000:
            return
        self._dropped_seen.add(key)
        log.warning(
            "route %s: dropped fields beside the records (not in its envelope): %s",
            match.route.config.path,
            ", ".join(dropped[:20]),
        )

    def _replace_upstream_error(
        self, ctx: RequestContext, upstream_response: UpstreamResponse
    ) -> Response:
        """The upstream's error answer, replaced by the gateway's own: nothing of it leaves."""
        status = upstream_response.status
        meter.upstream_error(f"upstream_{status // 100}xx")
        with upstream_response, contextlib.suppress(UpstreamError):
            # Read a short body to the end so the connection can be reused.
            upstream_response.read(ERROR_BODY_DRAIN)
        self._commit_before_release(
            ctx,
            [
                ctx.row(
                    decision="allow",
                    reason=f"upstream_{status}",
                    upstream_status=status,
                    bytes=0,
                )
            ],
        )
        body = orjson.dumps(
            {
                "error": "upstream_error",
                "message": f"the dataset service answered {status}",
                "upstream_status": status,
                "request_id": ctx.request_id,
            }
        )
        response = Response(
            body, status=status if 400 <= status < 500 else 502, mimetype="application/json"
        )
        retry_after = upstream_response.headers.get("Retry-After")
        if retry_after and status in (429, 503):
            response.headers["Retry-After"] = retry_after
        response.headers["X-Request-Id"] = ctx.request_id
        return response

    def _trip(self, ctx: RequestContext, canaries: list[str]) -> int | None:
        assert ctx.principal is not None and ctx.match is not None
        return self.canaries.trip(
            ctx.principal,
            canaries,
            request_id=ctx.request_id,
            project=ctx.match.project,
            client_ip=ctx.client_ip,
        ).lock_id

    def _refuse_canary_path(self, ctx: RequestContext) -> None:
        """A path naming a canary record: refused before the upstream is asked (withhold)."""
        assert ctx.match is not None and ctx.match.record is not None
        if not self.canaries.withhold:
            return  # released and marked once the body is in
        self._trip(ctx, [ctx.match.record])
        self.audit.write([ctx.row(decision="deny", reason="canary")])
        raise _AlreadyLogged(403, "locked", "access is suspended")

    def _withhold_canaries(
        self,
        ctx: RequestContext,
        records: list[ExtractedRecord],
        canaries: list[str],
        upstream_status: int,
    ) -> Response:
        """Nothing of a response holding a canary record leaves; the contractor is locked."""
        self._trip(ctx, canaries)
        # The others are withheld for the company they keep, not for a lock of their own.
        route_task = ctx.match.task if ctx.match and ctx.match.task != "*" else None
        verdicts = [
            Verdict(
                "canary" if r.record_id in canaries else "canary_request",
                r.project or (ctx.match.project if ctx.match else None),
                r.task or route_task,
            )
            for r in records
        ]
        self.audit.write(self.accounting.rows(ctx, records, verdicts, upstream_status))
        ctx.refusal = "canary"
        meter.records(0, len(records))
        return json_error(403, "locked", "access is suspended", ctx.request_id)

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
        began = time.perf_counter()
        self.audit.write(rows)
        meter.stage("audit_commit", began)

    def _log_ended_early(self, ctx: RequestContext, reason: str) -> None:
        if reason.startswith("stream_broken"):
            meter.upstream_error(reason)
        with contextlib.suppress(AuditUnavailable):
            self.audit.write([ctx.row(decision="deny", reason=reason)])

    def _release_stream(self, ctx: RequestContext, upstream_response: UpstreamResponse) -> Response:
        match = ctx.match
        assert match is not None
        length = upstream_response.headers.get("Content-Length")
        if ctx.written is not None and ctx.match.record is not None:
            row = self.accounting.write_row(ctx, upstream_response.status)
            if not 200 <= upstream_response.status < 400:
                row["reason"] = f"upstream_{upstream_response.status}"
        else:
            row = ctx.row(
                decision="allow",
                reason="released"
                if 200 <= upstream_response.status < 400
                else f"upstream_{upstream_response.status}",
                upstream_status=upstream_response.status,
                bytes=int(length) if length and length.isdigit() else None,
            )
        assert ctx.principal is not None
        download = Download(ctx.principal, match.project, upstream_response)
        body = GuardedStream(
            download,
            self.downloads,
            locked=lambda d: self._lock_hit(d.principal, d.project) is not None,
            ended_early=lambda reason: self._log_ended_early(ctx, reason),
            label=ctx.request_id,
        )
        try:
            if not _has_no_body(ctx.method, upstream_response.status):
                body.prefetch()
            self._commit_before_release(ctx, [row])
        except UpstreamError as error:
            if download.cut_off:
                raise Denial(
                    403, "locked", "access is suspended", reason="stream_cut:locked"
                ) from None
            raise Denial(error.status, error.error, error.message, reason=error.reason) from None
        except BaseException:
            body.close()
            raise
        response = Response(
            body,
            status=upstream_response.status,
            headers=response_headers_for_client(upstream_response.headers.items()),
            direct_passthrough=True,
        )
        if length and length.isdigit():
            response.headers["Content-Length"] = length
        response.headers["X-Request-Id"] = ctx.request_id
        return response


class _AlreadyLogged(Denial):
    """A denial whose rows the stage wrote itself."""


def _unaccountable(match: RouteMatch, error: RecordError) -> Denial:
    log.warning("record route %s: %s", match.path, error)
    return Denial(
        502,
        "bad_upstream_response",
        "the dataset service returned a body the gateway cannot account for",
        reason=error.reason,
    )


def _has_no_body(method: str, status: int) -> bool:
    return method == "HEAD" or status in (204, 205, 304)
