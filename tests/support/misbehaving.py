"""A scriptable upstream that misbehaves at the byte level (docs/DESIGN.md §8: the upstream is
not trusted either).

`http.server` cannot stall a body half way, cut a chunked body before its last chunk,
answer with a bare 1xx or drop a kept-alive connection without a word, so this server
speaks HTTP/1.1 itself over plain sockets, one thread per connection, keep-alive included.

A test registers a scenario (a callable that writes the answer) under a random key and
sends `?case=<key>` through the gateway; a request without a known case gets a plain,
well-formed answer. Every request the server reads is recorded as a `Hit` (method, path,
case, connection id, its index on that connection, time), so a test can assert e.g. that a
POST reached the upstream exactly once.

Every record and every stream the server emits carries a marker: the `X-Request-Id` the
gateway sent upstream. A client that receives a record whose marker is not the
`X-Request-Id` of its own response got another request's bytes.
"""

from __future__ import annotations

import contextlib
import gzip
import http
import itertools
import json
import secrets
import select
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from urllib.parse import parse_qs

MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class Hit:
    """One request as the server read it."""

    conn_id: int
    index: int  # 0 for the first request on its connection
    method: str
    path: str
    query: str
    case: str | None
    headers: dict[str, str]  # lower-case names
    body: bytes
    time: float

    @property
    def reused(self) -> bool:
        """The request came over a connection that had already carried one."""
        return self.index > 0

    @property
    def marker(self) -> str:
        return self.headers.get("x-request-id", "")


@dataclass
class Exchange:
    """A request and the means to answer it; a scenario writes through `send`."""

    hit: Hit
    sock: socket.socket
    # Set by a scenario: close the connection after this answer, without announcing it.
    close: bool = False
    # Set by a scenario: close the connection, unannounced, once it idles this long.
    idle_close: float | None = None

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


Scenario = Callable[[Exchange], None]
Body = Callable[[Exchange], bytes]


# --- bodies ---------------------------------------------------------------------------------


def record(index: int, marker: str, *, project: str = "proj-1", prefix: str = "fr") -> dict:
    return {
        "id": f"{prefix}-{index:04d}",
        "project": project,
        "marker": marker,
        "text": f"record {index} of the misbehaving upstream",
    }


def records_body(count: int = 5) -> Body:
    def body(exchange: Exchange) -> bytes:
        marker = exchange.hit.marker
        return json.dumps({"records": [record(i, marker) for i in range(count)]}).encode()

    return body


def item_body(exchange: Exchange) -> bytes:
    """One record whose id is the last path segment."""
    record_id = exchange.hit.path.rsplit("/", 1)[-1]
    return json.dumps({**record(0, exchange.hit.marker), "id": record_id}).encode()


def stream_bytes(marker: str, lines: int = 40) -> bytes:
    """What the stream route sends for a request with this marker (tests recompute it)."""
    return b"".join(f"{marker} line {i:05d} {'y' * 60}\n".encode() for i in range(lines))


def stream_body(lines: int = 40) -> Body:
    return lambda exchange: stream_bytes(exchange.hit.marker, lines)


def auto_body(exchange: Exchange) -> bytes:
    """The well-formed body for whichever /fault route the request came to."""
    path = exchange.hit.path
    if path.endswith("/stream"):
        return stream_bytes(exchange.hit.marker)
    if "/items/" in path or path.startswith("/fault/records/"):
        return item_body(exchange)
    return records_body()(exchange)


def raw_body(data: bytes | Callable[[str], bytes]) -> Body:
    """A fixed body, or one computed from the marker only."""
    if isinstance(data, bytes):
        return lambda exchange: data
    return lambda exchange: data(exchange.hit.marker)


@cache
def gzip_bomb(decoded_size: int = 64 * 1024 * 1024) -> bytes:
    """A valid gzip stream of a JSON document `decoded_size` bytes long (mostly blanks)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [compressor.compress(b'{"records":[')]
    block = b" " * (1024 * 1024)
    remaining = decoded_size - len(b'{"records":[]}')
    while remaining > 0:
        piece = block[: min(len(block), remaining)]
        out.append(compressor.compress(piece))
        remaining -= len(piece)
    out.append(compressor.compress(b"]}"))
    out.append(compressor.flush())
    return b"".join(out)


def encode(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data)
    if encoding == "deflate":
        return zlib.compress(data)  # HTTP's "deflate" is the zlib format
    raise ValueError(f"cannot encode {encoding}")


# --- answers ------------------------------------------------------------------------------


def _split(length: int, pieces: int, extra_cut: int | None) -> list[int]:
    """Offsets where the body is split into writes (always ends with `length`)."""
    cuts = {length * i // pieces for i in range(1, pieces)} | {length}
    if extra_cut is not None and 0 < extra_cut < length:
        cuts.add(extra_cut)
    return sorted(c for c in cuts if c > 0) or [0]


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


@dataclass
class Reply:
    """One answer, written exactly as described.

    framing: "length" (Content-Length), "chunked", "eof" (no length, the connection closes to
    end the body, HTTP/1.0 style) or "none" (no body and no length: 1xx, 204, 304).
    cut_at / stall_at are fractions of the body: the connection closes after that much
    (no terminal chunk when chunked), or the body stops for `stall` seconds there.
    """

    body: Body = auto_body
    status: int = 200
    version: str = "HTTP/1.1"
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str | None = "application/json"
    encoding: str | None = None  # "gzip" / "deflate": compress the body and say so
    framing: str = "length"
    pieces: int = 1  # the body goes out in this many writes...
    pause: float = 0.0  # ...this far apart
    head_delay: float = 0.0  # silence before the status line
    interim: tuple[bytes, ...] = ()  # raw informational responses sent first
    cut_at: float | None = None
    stall_at: float | None = None
    stall: float = 0.0
    announce_close: bool = False  # "Connection: close", then close
    body_on_head: bool = False  # answer a HEAD with the body too (which HTTP forbids)

    def __call__(self, exchange: Exchange) -> None:
        if self.head_delay:
            time.sleep(self.head_delay)
        for interim in self.interim:
            exchange.send(interim)
        body = b"" if self.framing == "none" else self.body(exchange)
        if self.encoding:
            body = encode(body, self.encoding)
        exchange.send(self._head(len(body)))
        if exchange.hit.method == "HEAD" and not self.body_on_head:
            exchange.close = self.framing == "eof" or self.announce_close
            return
        self._write_body(exchange, body)

    def _head(self, length: int) -> bytes:
        try:
            phrase = http.HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Whatever"
        lines = [f"{self.version} {self.status} {phrase}"]
        if self.content_type and self.framing != "none":
            lines.append(f"Content-Type: {self.content_type}")
        if self.encoding:
            lines.append(f"Content-Encoding: {self.encoding}")
        lines += [f"{name}: {value}" for name, value in self.headers]
        if self.framing == "length":
            lines.append(f"Content-Length: {length}")
        elif self.framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
        if self.announce_close or (self.framing == "eof" and self.version == "HTTP/1.1"):
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _write_body(self, exchange: Exchange, body: bytes) -> None:
        end = len(body) if self.cut_at is None else int(len(body) * self.cut_at)
        stall_at = None if self.stall_at is None else int(len(body) * self.stall_at)
        start = 0
        if stall_at == 0:
            time.sleep(self.stall)  # headers out, not a byte of the body yet
        offsets = _split(end, self.pieces, stall_at) if body else []
        for number, offset in enumerate(offsets):
            piece = body[start:offset]
            start = offset
            if piece:
                exchange.send(_chunk(piece) if self.framing == "chunked" else piece)
            if offset == stall_at:
                time.sleep(self.stall)
            elif number < len(offsets) - 1 and self.pause:
                time.sleep(self.pause)
        if self.cut_at is not None:
            exchange.close = True
            return
        if self.framing == "chunked":
            exchange.send(b"0\r\n\r\n")
        if self.announce_close or self.framing == "eof" or self.version == "HTTP/1.0":
            exchange.close = True


def drop_if_reused(then: Scenario | None = None) -> Scenario:
    """A stale pooled connection: the first time this scenario's request comes over a
    kept-alive connection, read it and close without a byte of answer. Requests over a
    fresh connection, and every later attempt, get `then`."""
    answer = then or Reply()
    lock = threading.Lock()
    dropped = False

    def scenario(exchange: Exchange) -> None:
        nonlocal dropped
        with lock:
            drop = exchange.hit.reused and not dropped
            dropped = dropped or drop
        if drop:
            exchange.close = True
            return
        answer(exchange)

    return scenario


def close_after(requests: int, then: Scenario | None = None) -> Scenario:
    """Answer, then close the connection unannounced once it has carried `requests`."""
    answer = then or Reply()

    def scenario(exchange: Exchange) -> None:
        answer(exchange)
        if exchange.hit.index + 1 >= requests:
            exchange.close = True

    return scenario


def idle_close(seconds: float, then: Scenario | None = None) -> Scenario:
    """Answer, then close the connection unannounced if no request follows within `seconds`."""
    answer = then or Reply()

    def scenario(exchange: Exchange) -> None:
        answer(exchange)
        exchange.idle_close = seconds

    return scenario


# --- the server -----------------------------------------------------------------------------


class _Reader:
    """Buffered reads off a socket, so `select` can tell whether a request is pending."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buffer += data
        return True

    def line_block(self) -> bytes | None:
        """Everything up to and including the blank line; None on a clean EOF."""
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buffer[: end + 4])
                del self.buffer[: end + 4]
                return head
            if len(self.buffer) > MAX_HEAD:
                raise ValueError("request head too large")
            if not self._fill():
                if self.buffer:
                    raise ValueError("connection closed inside a request head")
                return None

    def exactly(self, length: int) -> bytes:
        while len(self.buffer) < length:
            if not self._fill():
                raise ValueError("connection closed inside a request body")
        data = bytes(self.buffer[:length])
        del self.buffer[:length]
        return data

    def line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if not self._fill():
                raise ValueError("connection closed inside a chunk")
        data = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return data

    def request(self) -> tuple[str, str, dict[str, str], bytes] | None:
        head = self.line_block()
        if head is None:
            return None
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        headers: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            while size := int(self.line().split(b";")[0], 16):
                parts.append(self.exactly(size))
                self.exactly(2)
            while self.line():  # trailers
                pass
            body = b"".join(parts)
        else:
            body = self.exactly(int(headers.get("content-length") or 0))
        return method, target, headers, body


@dataclass
class MisbehavingUpstream:
    """The server; `url` and `log()` make it usable wherever conftest expects a `Proc`."""

    default: Scenario = field(default_factory=Reply)
    _listener: socket.socket | None = None
    _scenarios: dict[str, Scenario] = field(default_factory=dict)
    _hits: list[Hit] = field(default_factory=list)
    _live: set[socket.socket] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _stopping: bool = False

    @property
    def url(self) -> str:
        assert self._listener is not None
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self) -> MisbehavingUpstream:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(512)
        self._listener = listener
        threading.Thread(target=self._accept, name="misbehaving-accept", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping = True
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            live = list(self._live)
        for sock in live:
            _close(sock)

    def register(self, scenario: Scenario) -> str:
        """Store `scenario` under a fresh key; send `?case=<key>` to have it answer."""
        key = secrets.token_hex(8)
        with self._lock:
            self._scenarios[key] = scenario
        return key

    def hits(self, case: str | None = None) -> list[Hit]:
        with self._lock:
            return [hit for hit in self._hits if case is None or hit.case == case]

    def log(self) -> str:
        return "\n".join(
            f"{hit.time:.3f} conn={hit.conn_id}#{hit.index} {hit.method} {hit.path} "
            f"case={hit.case} rid={hit.marker}"
            for hit in self.hits()
        )

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._live.add(sock)
            conn_id = next(self._ids)
            threading.Thread(
                target=self._serve, args=(sock, conn_id), name=f"misbehaving-{conn_id}", daemon=True
            ).start()

    def _serve(self, sock: socket.socket, conn_id: int) -> None:
        reader = _Reader(sock)
        idle: float | None = None
        try:
            for index in itertools.count():
                if idle is not None and not reader.buffer:
                    readable, _, _ = select.select([sock], [], [], idle)
                    if not readable:
                        return  # idle too long: close without a word
                request = reader.request()
                if request is None:
                    return
                method, target, headers, body = request
                path, _, query = target.partition("?")
                case = parse_qs(query).get("case", [None])[0]
                hit = Hit(conn_id, index, method, path, query, case, headers, body, time.time())
                with self._lock:
                    self._hits.append(hit)
                    scenario = self._scenarios.get(case or "", self.default)
                exchange = Exchange(hit, sock)
                scenario(exchange)
                if exchange.close:
                    return
                idle = exchange.idle_close
        except (OSError, ValueError):
            return  # the gateway went away mid-answer, or sent something unparsable
        finally:
            with self._lock:
                self._live.discard(sock)
            _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
