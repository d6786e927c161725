"""Server-side console sessions: Flask's session, kept in `console_sessions`.

The cookie holds only an opaque random id; the row is keyed by its SHA-256. The cookie is
HttpOnly, SameSite=Lax, Secure with the `__Host-` prefix unless the console is configured
for plain-HTTP development. A session ends when idle for `idle_timeout_minutes`, at
`absolute_timeout_hours` after sign-in, at logout, or when the guard finds its subject
locked or without a console role. Sign-in gets a fresh id (no session fixation).
Only requests under /_gateway/console/ touch sessions; the API and the data path never do.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from sqlalchemy import delete, select, update
from sqlalchemy.engine import Engine
from werkzeug.datastructures import CallbackDict

from gateway.console.config import ConsoleConfig
from gateway.db.models import ConsoleSession

CONSOLE_PREFIX = "/_gateway/console"


class BrowserSession(CallbackDict, SessionMixin):  # type: ignore[type-arg]
    """The session's data, and what should happen to its row when the answer goes out."""

    def __init__(self, data: dict[str, Any] | None = None, id_hash: str | None = None) -> None:
        def on_update(_self: Any) -> None:
            self.modified = True

        super().__init__(data or {}, on_update)
        self.id_hash = id_hash
        self.modified = False
        self.rotate = False  # a new id at sign-in
        self.end_reason: str | None = None  # ends the row and drops the cookie
        self.console = True

    @property
    def new(self) -> bool:  # type: ignore[override]
        return self.id_hash is None

    def end(self, reason: str) -> None:
        self.clear()
        self.end_reason = reason


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class ConsoleSessionInterface(SessionInterface):
    def __init__(self, engine: Engine, config: ConsoleConfig) -> None:
        self.engine = engine
        self.config = config
        self.cookie = "__Host-gateway-console" if config.cookie_secure else "gateway-console"

    def open_session(self, app: Flask, request: Request) -> BrowserSession:
        if not request.path.startswith(CONSOLE_PREFIX + "/") and request.path != CONSOLE_PREFIX:
            session = BrowserSession()
            session.console = False
            return session
        raw = request.cookies.get(self.cookie)
        if not raw or len(raw) > 128:
            return BrowserSession()
        id_hash = _hash(raw)
        now = datetime.now(UTC)
        with self.engine.connect() as connection:
            row = connection.execute(
                select(ConsoleSession).where(ConsoleSession.id_hash == id_hash)
            ).first()
        if row is None or row.ended_at is not None:
            return BrowserSession()
        idle = timedelta(minutes=self.config.idle_timeout_minutes)
        if _aware(row.expires_at) <= now or _aware(row.last_seen_at) + idle <= now:
            self._end(id_hash, "expired" if _aware(row.expires_at) <= now else "idle")
            return BrowserSession()
        try:
            data = orjson.loads(row.data)
        except orjson.JSONDecodeError:
            data = {}
        return BrowserSession(data, id_hash)

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        if not isinstance(session, BrowserSession) or not session.console:
            return
        secure = self.config.cookie_secure
        if session.end_reason is not None:
            if session.id_hash is not None:
                self._end(session.id_hash, session.end_reason)
            response.delete_cookie(self.cookie, path="/", secure=secure, httponly=True)
            return
        if session.new and not session.modified:
            return
        now = datetime.now(UTC)
        data = orjson.dumps(dict(session)).decode()
        if session.new or session.rotate:
            raw = secrets.token_urlsafe(32)
            signed_in = bool(session.get("subject"))
            lifetime = (
                timedelta(hours=self.config.absolute_timeout_hours)
                if signed_in
                else timedelta(minutes=self.config.login_timeout_minutes)
            )
            with self.engine.begin() as connection:
                # Expired and ended sessions are kept an hour (for the record), then
                # dropped here, so sign-ins that were never finished do not pile up.
                connection.execute(
                    delete(ConsoleSession).where(
                        ConsoleSession.expires_at < now - timedelta(hours=1)
                    )
                )
                if session.id_hash is not None:
                    connection.execute(
                        delete(ConsoleSession).where(ConsoleSession.id_hash == session.id_hash)
                    )
                connection.execute(
                    ConsoleSession.__table__.insert().values(
                        id_hash=_hash(raw),
                        subject=session.get("subject"),
                        data=data,
                        created_at=now,
                        last_seen_at=now,
                        expires_at=now + lifetime,
                    )
                )
            response.set_cookie(
                self.cookie,
                raw,
                path="/",
                secure=secure,
                httponly=True,
                samesite="Lax",
            )
            return
        values: dict[str, Any] = {"last_seen_at": now}
        if session.modified:
            values["data"] = data
        with self.engine.begin() as connection:
            connection.execute(
                update(ConsoleSession)
                .where(ConsoleSession.id_hash == session.id_hash)
                .values(**values)
            )

    def _end(self, id_hash: str, reason: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(ConsoleSession)
                .where(ConsoleSession.id_hash == id_hash, ConsoleSession.ended_at.is_(None))
                .values(ended_at=datetime.now(UTC), end_reason=reason, data="{}")
            )


def end_sessions_of(engine: Engine, subject: str, reason: str) -> int:
    """End every open session of `subject` (e.g. `acme-idp:alice`); how many ended."""
    with engine.begin() as connection:
        result = connection.execute(
            update(ConsoleSession)
            .where(ConsoleSession.subject == subject, ConsoleSession.ended_at.is_(None))
            .values(ended_at=datetime.now(UTC), end_reason=reason, data="{}")
        )
    return result.rowcount or 0
