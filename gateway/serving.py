"""The gunicorn worker the gateway runs under: gthread, with slow clients bounded.

    gunicorn -k gateway.serving.GatewayThreadWorker gateway.wsgi:app

gunicorn's gthread worker commits a thread to a connection once its first byte arrives
and then blocks that thread in recv() for as long as the client keeps trickling: with no
deadline for the header block and none at all for the body, a few dozen slow sockets hold
every thread and everyone else's requests wait. Its main loop also lingers on every
connection it closes, blocking in recv() for up to 2 s each time, so clients that simply
keep a `Connection: close` socket open stall it too. This worker:

- **Gathers each request in the event loop.** A connection gets a thread only once its
  request line and headers are in and, when it announces a Content-Length, its body too,
  up to 64 KiB in all (a larger body is read by the thread). Until then the main loop
  collects the bytes with non-blocking reads. A head not complete
  `GATEWAY_CLIENT_HEADER_TIMEOUT` seconds (default 10) after the connection was accepted,
  or woke from keep-alive, gets the connection closed without an answer (nginx's
  `client_header_timeout`); a body that stalls (below) is answered 408 and closed. Such
  a request never reaches the application, and trickling it costs the client a file
  descriptor and a slot of gunicorn's `worker_connections`, never a thread.
- **Bounds the thread's reads too**, for what the loop hands over unfinished (a head over
  64 KiB, a pipelined request, TLS, whose bytes the loop cannot read; the rest of a large
  or chunked body). Past the header deadline a read reports end of stream, which gunicorn
  treats as a client that went away. A body wait is bounded by
  `GATEWAY_CLIENT_BODY_TIMEOUT` (default 10 s between two reads, nginx's
  `client_body_timeout`) and the waits add up: after that same grace the body must keep
  an average of `GATEWAY_CLIENT_BODY_MIN_RATE` bytes/s (default 8192; 0 turns it off;
  Apache's `RequestReadTimeout MinRate`), so a byte sent just before each timeout does
  not hold a thread for ever. A missed body deadline raises `ClientBodyTimeout` (a
  `TimeoutError`, and werkzeug's 408), a body cut short raises `ClientBodyIncomplete`
  (a `ConnectionResetError`, and werkzeug's `ClientDisconnected`, 400): never a silently
  short body that could be forwarded as if complete. The connection is not reused.
- **Lingers on close in the event loop** (send FIN, read what the client still sends for
  up to 2 s, then close) instead of blocking it.

What still holds a thread: a body larger than 64 KiB (or chunked) sent at the minimum
rate, for at most `body timeout + length / min rate` seconds; a client that reads its
response slowly (there is no send timeout); the TLS handshake when gunicorn itself
terminates TLS. A buffering reverse proxy in front (nginx: `client_header_timeout`,
`client_body_timeout`, `proxy_request_buffering on`) takes those off the gateway; see
README, "Running it for real". HTTP/2 (`--http-protocols h2`) connections are not covered.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import TConn, ThreadWorker
from werkzeug.exceptions import ClientDisconnected, RequestTimeout

__all__ = [
    "ClientBodyIncomplete",
    "ClientBodyTimeout",
    "ClientLimits",
    "GatewayThreadWorker",
]

HEADER_TIMEOUT_ENV = "GATEWAY_CLIENT_HEADER_TIMEOUT"
BODY_TIMEOUT_ENV = "GATEWAY_CLIENT_BODY_TIMEOUT"
BODY_MIN_RATE_ENV = "GATEWAY_CLIENT_BODY_MIN_RATE"

# Request bytes (head and body) the event loop gathers before a thread takes over anyway:
# typical heads are under 8 KiB and annotation bodies a few KiB, and it bounds the loop's
# memory (worker_connections x 64 KiB at worst).
GATHER_CAP = 64 * 1024
# What util.close_graceful lingers for, done without blocking the main loop.
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 64 * 1024
# A recv() with no budget left still returns bytes that already arrived.
_LAST_CHANCE = 0.001
_SUMMARY_EVERY = 60.0
_SWEEP_EVERY = 0.2


class ClientBodyTimeout(TimeoutError, RequestTimeout):
    """The client stopped sending its request body in time.

    A `TimeoutError` for code that reads sockets (the pipeline answers 408 and logs a
    denial), and werkzeug's `RequestTimeout` so Flask views answer 408 instead of 500.
    """

    def __init__(self, message: str) -> None:
        TimeoutError.__init__(self, errno.ETIMEDOUT, message)
        self.description = message
        self.response = None

    def __str__(self) -> str:
        return str(self.description)


class ClientBodyIncomplete(ConnectionResetError, ClientDisconnected):
    """The connection ended before the body its headers announced.

    A `ConnectionResetError` (gunicorn logs it as a client going away, without a
    traceback) and werkzeug's `ClientDisconnected` (400) for Flask views.
    """

    def __init__(self, message: str) -> None:
        ConnectionResetError.__init__(self, errno.ECONNRESET, message)
        self.description = message
        self.response = None

    def __str__(self) -> str:
        return str(self.description)


_CLIENT_BODY_ERRORS = (ClientBodyTimeout, ClientBodyIncomplete)


@dataclass(frozen=True)
class ClientLimits:
    """How long a client may take to send its request (seconds; bytes/s for the rate)."""

    header_timeout: float = 10.0
    body_timeout: float = 10.0
    body_min_rate: float = 8192.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientLimits:
        """Read the GATEWAY_CLIENT_* variables; ValueError names a bad one."""
        env = os.environ if environ is None else environ
        defaults = cls()

        def number(name: str, default: float, *, zero_ok: bool = False) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number") from None
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"{name}={raw!r} must be finite")
            if value < 0 or (value == 0 and not zero_ok):
                raise ValueError(f"{name}={raw!r} must be positive")
            return value

        return cls(
            header_timeout=number(HEADER_TIMEOUT_ENV, defaults.header_timeout),
            body_timeout=number(BODY_TIMEOUT_ENV, defaults.body_timeout),
            body_min_rate=number(BODY_MIN_RATE_ENV, defaults.body_min_rate, zero_ok=True),
        )


# --- one connection ----------------------------------------------------------------------

_HEAD, _BODY = "head", "body"


class _ClientSocket:
    """The socket as gunicorn's request parser sees it: every recv() carries the deadline
    of the phase the request is in. Only the parser reads through it; responses are
    written to the real socket, which is left blocking with no timeout between reads."""

    def __init__(self, sock: socket.socket, conn: GatewayConn) -> None:
        self._sock = sock
        self._conn = conn
        # The timeout a caller set (gunicorn's body drain sets one), applied on top.
        self._timeout: float | None = None

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout
        self._sock.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self._timeout

    def fileno(self) -> int:
        return self._sock.fileno()

    def recv(self, size: int) -> bytes:
        if self._conn.phase == _BODY:
            return self._recv_body(size)
        return self._recv_head(size)

    def _recv_for(self, size: int, budget: float) -> tuple[bytes | None, bool]:
        """(data, caller's timeout fired); data None when the budget ran out."""
        own = max(budget, _LAST_CHANCE)
        caller = self._timeout
        limit = own if caller is None else min(own, caller)
        self._sock.settimeout(limit)
        try:
            return self._sock.recv(size), False
        except TimeoutError:
            return None, caller is not None and caller <= own
        finally:
            with contextlib.suppress(OSError):
                self._sock.settimeout(self._timeout)

    def _recv_head(self, size: int) -> bytes:
        conn = self._conn
        data, caller_fired = self._recv_for(size, conn.head_deadline - time.monotonic())
        if caller_fired:
            raise TimeoutError("timed out")
        if data is None:
            # gunicorn takes an empty read as a client that went away: no traceback,
            # no answer, the connection is closed.
            conn.head_timed_out = True
            return b""
        return data

    def _recv_body(self, size: int) -> bytes:
        conn = self._conn
        limits = conn.limits
        if conn.body_failed:
            raise ClientBodyIncomplete("request body already failed on this connection")
        budget = limits.body_timeout
        if limits.body_min_rate > 0:
            # Only time spent waiting here counts against the client, not the time the
            # application took between two reads.
            earned = limits.body_timeout + conn.body_received / limits.body_min_rate
            budget = min(budget, earned - conn.body_waited)
        began = time.monotonic()
        data, caller_fired = self._recv_for(size, budget)
        conn.body_waited += time.monotonic() - began
        if caller_fired:
            raise TimeoutError("timed out")
        if data is None:
            conn.body_failed = conn.body_timed_out = True
            raise ClientBodyTimeout(
                f"request body not received in time ({conn.body_received} bytes in "
                f"{conn.body_waited:.1f}s)"
            )
        if not data:
            # Every body read asks only for bytes the headers announced, so the end of
            # the stream here is always a body cut short.
            conn.body_failed = True
            raise ClientBodyIncomplete(
                f"connection closed after {conn.body_received} bytes of the request body"
            )
        conn.body_received += len(data)
        return data


class GatewayConn(TConn):
    """A gthread connection that knows its deadlines and what the event loop read."""

    def __init__(
        self,
        cfg: Any,
        sock: socket.socket,
        client: Any,
        server: Any,
        *,
        limits: ClientLimits,
        linger: Callable[[GatewayConn], None] | None,
    ) -> None:
        super().__init__(cfg, sock, client, server)
        self.limits = limits
        self._linger = linger
        self.reader: _ClientSocket | None = None
        self.phase = _HEAD
        # Missed the header deadline: closed at once, there is no answer to linger for.
        self.head_timed_out = False
        self.body_failed = False
        self.body_timed_out = False
        self.body_received = 0
        self.body_waited = 0.0
        # What the event loop gathers before a thread takes over (see _on_readable).
        self.head = bytearray()
        self.head_end: int | None = None
        self.body_expected: int | None = None
        self.body_began = self.body_progress = 0.0
        self.next_request(time.monotonic() + limits.header_timeout)

    def init(self) -> None:
        super().init()
        if self.reader is None and not self.is_http2 and self.parser is not None:
            unreader = self.parser.unreader
            if isinstance(unreader, SocketUnreader):
                self.reader = _ClientSocket(unreader.sock, self)
                unreader.sock = self.reader
        self.feed_head()

    def feed_head(self) -> None:
        """Hand what the event loop read to the parser, ahead of anything still unread."""
        if self.head and self.parser is not None and not self.is_http2:
            self.parser.unreader.unread(bytes(self.head))
            self.head.clear()

    def next_request(self, deadline: float) -> None:
        self.head_deadline = deadline
        self.head_end = self.body_expected = None

    def loop_deadline(self) -> float:
        """When the event loop gives up on this connection's request."""
        if self.head_end is None:
            return self.head_deadline
        limits = self.limits
        deadline = self.body_progress + limits.body_timeout
        if limits.body_min_rate > 0:
            received = len(self.head) - self.head_end
            earned = limits.body_timeout + received / limits.body_min_rate
            deadline = min(deadline, self.body_began + earned)
        return deadline

    def begin_head(self) -> None:
        self.phase = _HEAD
        if self.reader is not None:
            self.reader.settimeout(None)

    def begin_body(self) -> None:
        self.phase = _BODY
        self.body_received = 0
        self.body_waited = 0.0

    def close(self, graceful: bool = False) -> None:
        graceful = graceful and not self.head_timed_out
        if graceful and self._linger is not None:
            self._linger(self)
            return
        super().close(graceful)


def announced_body(head: bytes | bytearray) -> int | None:
    """The Content-Length of a request head, 0 without one; None when the event loop
    should not wait for the body: chunked, `Expect: 100-continue` (the client waits for
    our answer first), or anything odd. gunicorn's parser still judges the request; this
    only decides how long the event loop keeps gathering before a thread takes over."""
    length = None
    for raw in bytes(head).split(b"\n")[1:]:
        line = raw.rstrip(b"\r")
        if not line:
            break
        name, colon, value = line.partition(b":")
        if not colon:
            return None
        key = name.strip().lower()
        if key in (b"transfer-encoding", b"expect"):
            return None
        if key == b"content-length":
            value = value.strip()
            if length is not None or not value.isdigit():
                return None
            length = int(value)
    return length or 0


_TIMEOUT_BODY = b'{"error":"client_timeout","message":"the request body arrived too slowly"}'
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
    % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


@dataclass
class _Lingering:
    sock: socket.socket
    deadline: float
    drained: int = 0


def _drained(entry: _Lingering) -> bool:
    """Read what the client sent after our FIN; True once it closed (or sent too much)."""
    while entry.drained < LINGER_MAX_BYTES:
        try:
            data = entry.sock.recv(16384)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        if not data:
            return True
        entry.drained += len(data)
    return True


# --- the worker --------------------------------------------------------------------------


class GatewayThreadWorker(ThreadWorker):
    """gunicorn's gthread worker with the client limits of this module."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = ClientLimits.from_env({**os.environ, **(self.cfg.env or {})})
        # The event loop can read plain TCP only; TLS bytes are gunicorn's to read.
        self.gather = not self.cfg.is_ssl
        self.gathering: set[GatewayConn] = set()
        self.lingering: dict[socket.socket, _Lingering] = {}  # insertion = deadline order
        self.header_drops = 0
        self.body_drops = 0
        self._sweep_at = 0.0
        self._summary_at = time.monotonic() + _SUMMARY_EVERY

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        super().check_config(cfg, log)
        try:
            limits = ClientLimits.from_env({**os.environ, **(cfg.env or {})})
        except ValueError as error:
            log.error("gateway worker: %s", error)
            raise SystemExit(1) from None
        log.info(
            "client limits: headers %gs, body %gs between reads and %g B/s on average",
            limits.header_timeout,
            limits.body_timeout,
            limits.body_min_rate,
        )

    # --- event loop: gathering requests -------------------------------------------------

    def accept(self, listener: socket.socket) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = GatewayConn(
            self.cfg,
            client_sock,
            client_addr,
            listener.getsockname(),
            limits=self.limits,
            linger=self._linger if self.gather else None,
        )
        if self.gather:
            self._gather(conn)
            # The request often came with the connection: then no trip through the poller.
            self._on_readable(conn, client_sock)
        else:
            self.enqueue_req(conn)

    def on_client_socket_readable(self, conn: GatewayConn, client: socket.socket) -> None:
        """A kept-alive connection woke up: its next request gets the full header timeout."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        conn.next_request(time.monotonic() + self.limits.header_timeout)
        if self.gather:
            self._gather(conn)
            self._on_readable(conn, client)
        else:
            self.enqueue_req(conn)

    def _gather(self, conn: GatewayConn) -> None:
        self.gathering.add(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _on_readable(self, conn: GatewayConn, _client: Any) -> None:
        """Read what arrived; hand the connection to a thread once its request is in.

        "In" means the head and, for a Content-Length body, the whole body, up to
        GATHER_CAP bytes in all: beyond that a thread reads the rest, under the body
        limits. So a client trickling its headers or a small body never holds a thread.
        """
        try:
            # Never more than the cap in all: that bounds the loop's memory.
            data = conn.sock.recv(GATHER_CAP - len(conn.head))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            # Gone before its request was complete: nothing reached the application.
            self._stop_gathering(conn)
            self._drop(conn)
            return
        now = time.monotonic()
        if conn.head_end is None:
            searched = max(0, len(conn.head) - 2)
            conn.head += data
            # An empty line ends the head (after a bare LF too: the parser will judge).
            crlf = conn.head.find(b"\n\r\n", searched)
            lf = conn.head.find(b"\n\n", searched)
            ends = [(at, at + size) for at, size in ((crlf, 3), (lf, 2)) if at >= 0]
            if ends:
                conn.head_end = min(ends)[1]
                conn.body_expected = announced_body(conn.head[: conn.head_end])
                conn.body_began = conn.body_progress = now
        else:
            conn.head += data
            conn.body_progress = now
        if len(conn.head) >= GATHER_CAP or (
            conn.head_end is not None
            and (conn.body_expected is None or len(conn.head) - conn.head_end >= conn.body_expected)
        ):
            self._stop_gathering(conn)
            conn.data_ready = True
            self.enqueue_req(conn)

    def _stop_gathering(self, conn: GatewayConn) -> None:
        self.gathering.discard(conn)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)

    def _drop(self, conn: GatewayConn) -> None:
        self.nr_conns -= 1
        util.close(conn.sock)

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        self._murder_lingering(now)
        # Deadlines differ per connection (a body earns time as it arrives), so this is
        # a scan, a few times a second rather than after every event.
        if now < self._sweep_at:
            return
        self._sweep_at = now + _SWEEP_EVERY
        stopping = not self.alive
        for conn in list(self.gathering):
            # A stopping worker does not wait for a request that has not even begun.
            if conn.loop_deadline() <= now or (stopping and not conn.head):
                self._stop_gathering(conn)
                self._too_slow(conn)
        self._log_summary(now)

    def _too_slow(self, conn: GatewayConn) -> None:
        if conn.head_end is None:
            # Like a client that went away: no answer, no lingering.
            self.header_drops += 1
            self._drop(conn)
            return
        # The request never reached the application; say why, then close.
        self.body_drops += 1
        self.nr_conns -= 1
        with contextlib.suppress(OSError):
            conn.sock.send(_TIMEOUT_RESPONSE)
        self._linger(conn)

    def murder_keepalived(self, force: bool = False) -> None:
        super().murder_keepalived(force)
        if force:
            for conn in list(self.gathering):
                self._stop_gathering(conn)
                self._drop(conn)
            self._murder_lingering(float("inf"))

    def _log_summary(self, now: float) -> None:
        # One line a minute rather than one per dropped client: under attack that is
        # thousands of lines, and a client that gave up is not an error.
        if now < self._summary_at:
            return
        self._summary_at = now + _SUMMARY_EVERY
        if self.header_drops or self.body_drops:
            self.log.warning(
                "slow clients in the last %ds: %d closed without complete headers within "
                "%gs, %d request bodies too slow",
                int(_SUMMARY_EVERY),
                self.header_drops,
                self.limits.header_timeout,
                self.body_drops,
            )
            self.header_drops = self.body_drops = 0

    # --- event loop: lingering close ----------------------------------------------------

    def _linger(self, conn: GatewayConn) -> None:
        """Half-close and drain what the client still sends, from the event loop.

        gunicorn does this with a blocking recv() of up to 2 s on the main thread; twenty
        clients that keep a `Connection: close` socket open then stall it for 40 s.
        """
        sock = conn.sock
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
        except OSError:
            util.close(sock)
            return
        entry = _Lingering(sock, time.monotonic() + LINGER_SECONDS)
        # Most clients have closed by now: then no trip through the poller is needed.
        if _drained(entry) or len(self.lingering) >= self.worker_connections:
            util.close(sock)
            return
        try:
            self.poller.register(
                sock, selectors.EVENT_READ, partial(self._on_linger_readable, entry)
            )
        except (OSError, ValueError, KeyError):
            util.close(sock)
            return
        self.lingering[sock] = entry

    def _on_linger_readable(self, entry: _Lingering, _sock: Any) -> None:
        if _drained(entry):
            self._end_linger(entry)

    def _end_linger(self, entry: _Lingering) -> None:
        self.lingering.pop(entry.sock, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(entry.sock)
        util.close(entry.sock)

    def _murder_lingering(self, now: float) -> None:
        for entry in list(self.lingering.values()):
            if entry.deadline > now:
                break
            self._end_linger(entry)

    # --- worker threads -----------------------------------------------------------------

    def handle(self, conn: GatewayConn) -> Any:  # type: ignore[override]
        conn.begin_head()
        if conn.initialized:
            conn.feed_head()
        result = super().handle(conn)
        # Counted from worker threads without a lock: a lost increment only blurs the
        # once-a-minute summary.
        if conn.head_timed_out:
            self.header_drops += 1
            return False
        if conn.body_failed:
            self.body_drops += conn.body_timed_out
            return False
        # A pipelined request already read gets its own header deadline from now.
        conn.next_request(time.monotonic() + self.limits.header_timeout)
        return result

    def handle_request(self, req: Any, conn: GatewayConn) -> bool:  # type: ignore[override]
        conn.begin_body()
        try:
            return super().handle_request(req, conn)
        except _CLIENT_BODY_ERRORS as error:
            # The application let it through, so no answer was made: close, quietly.
            self.log.info("request body from %s: %s", _peer(conn), error)
            raise StopIteration() from None

    def _keepalive_after(self, conn: GatewayConn, keepalive: bool) -> bool:  # type: ignore[override]
        if conn.body_failed or conn.head_timed_out:
            return False
        try:
            return bool(super()._keepalive_after(conn, keepalive))
        except _CLIENT_BODY_ERRORS:
            return False


def _peer(conn: TConn) -> str:
    client = conn.client
    if isinstance(client, tuple) and len(client) >= 2:
        return f"{client[0]}:{client[1]}"
    return str(client)
