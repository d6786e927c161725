"""Slow clients must not exhaust the worker threads for everyone else.

The gateway runs here as in production, under gunicorn with its own worker class
(gateway.serving.GatewayThreadWorker), but with 1 worker of 2 threads and 2-second client
timeouts (GATEWAY_CLIENT_HEADER_TIMEOUT / GATEWAY_CLIENT_BODY_TIMEOUT), so a handful of
sockets is "more than the threads" and every deadline passes within the test's time.
SQLite only: this is about the serving layer, and one audit backend is enough to see the
denial rows.

Each attack is a few raw loopback sockets, bounded in number and time. With plain
`-k gthread` (GATEWAY_TEST_WORKER_CLASS=gthread) these tests fail: header tricklers and
stalled bodies hold the threads, so legitimate requests time out, and clients that keep
a closed connection open stall gunicorn's main loop.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from tests.conftest import (
    PYTHON,
    TEST_POLICY,
    UPSTREAM_TOKEN,
    Database,
    Gateway,
    Proc,
    free_port,
    gateway_config,
    start,
    wait_ready,
)

WORKER_CLASS = os.environ.get("GATEWAY_TEST_WORKER_CLASS", "gateway.serving.GatewayThreadWorker")
THREADS = 2
HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
# How long past a deadline the gateway may take to act on it (its loop sweeps 5x/s).
SLACK = 2.0
ECHO = "/api/echo"
RECORDS = "/api/projects/proj-1/tasks/task-1/records?limit=2"
# More body than the worker gathers in its event loop (64 KiB): a thread reads the rest.
LARGE_PREFIX = 70_000


@pytest.fixture(scope="module")
def slow_gateway(
    tmp_path_factory: pytest.TempPathFactory, idp: Proc, opaque_idp: Proc, upstream: Proc
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("slow-clients")
    db = Database(f"sqlite:///{tmp / 'gateway.db'}", "sqlite")
    config_path = tmp / "gateway.toml"
    config_path.write_text(
        gateway_config(
            db_url=db.url,
            idp_url=idp.url,
            opaque_idp_url=opaque_idp.url,
            upstream_url=upstream.url,
        )
    )
    gateway = Gateway(None, db, config_path, idp, opaque_idp, upstream)  # type: ignore[arg-type]
    gateway.cli("db", "upgrade")
    (tmp / "policy.csv").write_text(TEST_POLICY)
    gateway.cli("policy", "import", str(tmp / "policy.csv"), "--reason", "test policy")
    port = free_port()
    argv = [
        PYTHON,
        "-m",
        "gunicorn",
        "-k",
        WORKER_CLASS,
        "-w",
        "1",
        "--threads",
        str(THREADS),
        "-b",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "2",
        "gateway.wsgi:app",
    ]
    gateway.proc = start(
        argv,
        f"http://127.0.0.1:{port}",
        tmp / "gateway.log",
        env={
            "GATEWAY_CONFIG": str(config_path),
            "UPSTREAM_TOKEN": UPSTREAM_TOKEN,
            "GATEWAY_CLIENT_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
            "GATEWAY_CLIENT_BODY_TIMEOUT": str(BODY_TIMEOUT),
        },
        ready_path="/_gateway/health",
    )
    wait_ready(gateway.url)
    gateway.token("alice")  # fetched now, not while the threads are under attack
    yield gateway
    gateway.proc.stop()
    db.engine.dispose()


# --- helpers ----------------------------------------------------------------------------


def new_marker() -> str:
    return f"slow{secrets.token_hex(8)}"


def connect(gateway: Gateway) -> socket.socket:
    host, port = gateway.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def post_head(gateway: Gateway, marker: str, length: int) -> bytes:
    return (
        f"POST {ECHO}?m={marker} HTTP/1.1\r\n"
        f"Host: {gateway.url.removeprefix('http://')}\r\n"
        f"Authorization: Bearer {gateway.token('alice')}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


@dataclass
class Answer:
    status: int | None  # None: closed without an answer
    body: bytes
    seconds: float
    closed_after: bool

    def json(self) -> dict:
        return json.loads(self.body)


def read_answer(sock: socket.socket, began: float, timeout: float) -> Answer:
    """The gateway's answer on this socket (or that it closed it), within `timeout` s."""
    sock.settimeout(timeout)
    try:
        first = sock.recv(1, socket.MSG_PEEK)
    except ConnectionResetError:
        first = b""
    except TimeoutError:
        pytest.fail(f"no answer and no close within {timeout}s")
    if not first:
        return Answer(None, b"", time.monotonic() - began, True)
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    seconds = time.monotonic() - began
    return Answer(response.status, body, seconds, is_closed(sock, 3.0))


def is_closed(sock: socket.socket, within: float) -> bool:
    """Does the gateway close this connection within `within` s (reading what it sends)?"""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(4096):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def legitimate_requests_succeed(gateway: Gateway, *, within: float) -> None:
    """A health check and a proxied read, each on a new connection, each within `within` s."""
    for path, headers in (
        ("/_gateway/health", {}),
        (RECORDS, {"Authorization": f"Bearer {gateway.token('alice')}"}),
    ):
        began = time.monotonic()
        try:
            response = requests.get(
                gateway.url + path, headers={**headers, "Connection": "close"}, timeout=within + 3
            )
        except requests.Timeout:
            pytest.fail(f"GET {path}: no answer within {within + 3}s while under attack")
        seconds = time.monotonic() - began
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
        assert seconds < within, f"GET {path} took {seconds:.1f}s under attack"


def assert_never_forwarded(gateway: Gateway, *markers: str) -> None:
    """No request carrying any of `markers` reached the upstream (as in test_hostile)."""
    sentinel = new_marker()
    response = gateway.get(f"{ECHO}?sentinel={sentinel}", "alice")
    assert response.status_code == 200, response.text[:300]
    deadline = time.monotonic() + 5
    log = gateway.upstream.log()
    while sentinel not in log:
        assert time.monotonic() < deadline, "upstream request log is not being written"
        time.sleep(0.05)
        log = gateway.upstream.log()
    for marker in markers:
        assert marker not in log, f"a cut-off request ({marker}) reached the upstream"


def assert_no_traceback(gateway: Gateway) -> None:
    log = gateway.proc.log()
    assert "Traceback" not in log, log[-4000:]


@contextlib.contextmanager
def tricklers(gateway: Gateway, first: bytes, count: int, seconds: float) -> Iterator[list]:
    """`count` sockets that send `first`, then a header line every 0.5 s for `seconds`."""
    socks = [connect(gateway) for _ in range(count)]
    for sock in socks:
        sock.sendall(first)
    stop = threading.Event()

    def trickle() -> None:
        deadline = time.monotonic() + seconds
        while not stop.wait(0.5) and time.monotonic() < deadline:
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X-Slow: 1\r\n")

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield socks
    finally:
        stop.set()
        thread.join(5)
        for sock in socks:
            sock.close()


# --- tests ------------------------------------------------------------------------------


def test_header_tricklers_do_not_starve_legitimate_requests(slow_gateway: Gateway) -> None:
    gateway = slow_gateway
    first = f"GET /_gateway/health HTTP/1.1\r\nHost: {gateway.url[7:]}\r\n".encode()
    began = time.monotonic()
    with tricklers(gateway, first, THREADS * 4, seconds=HEADER_TIMEOUT + 6) as socks:
        time.sleep(0.3)  # every trickler has sent its first bytes
        legitimate_requests_succeed(gateway, within=2.0)
        legitimate_requests_succeed(gateway, within=2.0)
        # And the tricklers themselves are shown the door at the header deadline.
        for sock in socks:
            remaining = began + HEADER_TIMEOUT + SLACK - time.monotonic()
            assert is_closed(sock, max(remaining, 0.1)), "a header trickler was not closed"
    assert_no_traceback(gateway)


def test_slow_small_body_is_answered_408_and_never_forwarded(slow_gateway: Gateway) -> None:
    gateway = slow_gateway
    markers = [new_marker() for _ in range(THREADS * 2)]
    socks = [connect(gateway) for _ in markers]
    began = time.monotonic()
    for sock, marker in zip(socks, markers, strict=True):
        sock.sendall(post_head(gateway, marker, 1000) + b"x" * 10)
    try:
        # More stalled bodies than threads, and the gateway still answers others.
        legitimate_requests_succeed(gateway, within=2.0)
        for sock in socks:
            answer = read_answer(sock, began, BODY_TIMEOUT + SLACK + 1)
            assert answer.status in (408, None), answer
            assert answer.seconds < BODY_TIMEOUT + SLACK + 1, answer
            assert answer.closed_after
            if answer.status == 408:
                assert answer.json()["error"] == "client_timeout"
    finally:
        for sock in socks:
            sock.close()
    assert_never_forwarded(gateway, *markers)
    assert_no_traceback(gateway)


def test_slow_large_body_times_out_in_the_thread_and_is_never_forwarded(
    slow_gateway: Gateway,
) -> None:
    """The part a thread reads: the application sees an exception, never a short body,
    answers 408 and logs a denial; the connection is closed."""
    gateway = slow_gateway
    marker = new_marker()
    with connect(gateway) as sock:
        began = time.monotonic()
        sock.sendall(post_head(gateway, marker, 100_000) + b"x" * LARGE_PREFIX)
        answer = read_answer(sock, began, BODY_TIMEOUT + SLACK + 2)
    assert answer.status == 408, answer
    assert answer.seconds < BODY_TIMEOUT + SLACK + 2, answer
    assert answer.closed_after
    body = answer.json()
    assert body["error"] == "client_timeout", body
    rows = gateway.audit_rows(body["request_id"])
    assert [(row.decision, row.reason) for row in rows] == [("deny", "client_timeout")], rows
    assert_never_forwarded(gateway, marker)
    assert_no_traceback(gateway)


@pytest.mark.parametrize("sent", [100, LARGE_PREFIX], ids=["in-event-loop", "in-thread"])
def test_body_cut_short_is_never_forwarded(slow_gateway: Gateway, sent: int) -> None:
    gateway = slow_gateway
    marker = new_marker()
    with connect(gateway) as sock:
        began = time.monotonic()
        sock.sendall(post_head(gateway, marker, 100_000) + b"x" * sent)
        sock.shutdown(socket.SHUT_WR)
        answer = read_answer(sock, began, BODY_TIMEOUT + SLACK)
    # Closed without an answer (the request never reached the application), or refused
    # by it: never a 2xx or 405 from the upstream.
    assert answer.status in (None, 400), answer
    if answer.status == 400:
        assert answer.json()["error"] == "incomplete_body", answer.body[:300]
    assert_never_forwarded(gateway, marker)
    assert_no_traceback(gateway)


def test_clients_keeping_closed_connections_open_do_not_stall_the_gateway(
    slow_gateway: Gateway,
) -> None:
    """gunicorn lingers on a connection it closes: a blocking read of up to 2 s, in its
    main loop. Ten clients that ask for `Connection: close` and then neither read nor
    close would stall it for 20 s."""
    gateway = slow_gateway
    request = (
        f"GET /_gateway/health HTTP/1.1\r\nHost: {gateway.url[7:]}\r\nConnection: close\r\n\r\n"
    ).encode()
    socks = [connect(gateway) for _ in range(10)]
    try:
        for sock in socks:
            sock.sendall(request)
        time.sleep(0.3)
        legitimate_requests_succeed(gateway, within=2.0)
    finally:
        for sock in socks:
            sock.close()
    assert_no_traceback(gateway)


def test_keep_alive_and_ordinary_bodies_still_work(slow_gateway: Gateway) -> None:
    gateway = slow_gateway
    auth = {"Authorization": f"Bearer {gateway.token('alice')}"}
    with requests.Session() as session:
        for _ in range(3):
            response = session.get(gateway.url + RECORDS, headers=auth, timeout=5)
            assert response.status_code == 200, response.text[:300]
        # A body over the event loop's 64 KiB, sent at once, reaches the upstream whole
        # (the sample service answers 405 to a POST on /api/echo, after reading it).
        marker = new_marker()
        response = session.post(
            f"{gateway.url}{ECHO}?m={marker}", data=b"x" * 200_000, headers=auth, timeout=10
        )
        assert response.status_code == 405, response.text[:300]
    assert_no_traceback(gateway)
