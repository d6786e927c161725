"""The upstream misbehaves; the gateway still accounts for every record (docs/DESIGN.md §2, §8).

Through the real gateway under gunicorn against the socket-level server of
tests/support/misbehaving.py: bodies split into small writes, chunked, cut, stalled or
encoded against the gateway's `Accept-Encoding: identity`, pooled connections closed without
notice, 1xx/204/304 answers, hostile JSON. Whatever the upstream does, a client gets either
its own records, each with an `allow` row carrying its id and SHA-256, or a JSON error with
exactly one `deny` row: never another request's bytes, never a 500, never a traceback.

Every record the server writes carries the `X-Request-Id` the gateway sent upstream as its
`marker`, so a record that reaches the wrong client is caught.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import orjson
import pytest
import requests

from tests.conftest import Database, Gateway, Proc, launch_gateway
from tests.support.misbehaving import (
    MisbehavingUpstream,
    Reply,
    Scenario,
    close_after,
    drop_if_reused,
    gzip_bomb,
    idle_close,
    raw_body,
    record,
    stream_body,
    stream_bytes,
)

RECORDS = "/fault/projects/proj-1/records"
ITEM = "/fault/projects/proj-1/items/it-0001"
STREAM = "/fault/projects/proj-1/stream"
OWN_PROJECT = "/fault/records/"  # + record id; the record names its own project

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
STALL = 2.6  # the test config gives the upstream a 2.0 s read timeout
CLIENTS = 16
REQUESTS_PER_CLIENT = 5


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[MisbehavingUpstream]:
    upstream = MisbehavingUpstream().start()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory,
    database: Database,
    idp: Proc,
    opaque_idp: Proc,
    server: MisbehavingUpstream,
) -> Iterator[Gateway]:
    """The gateway (2 workers, 8 threads each) in front of the misbehaving server."""
    tmp = tmp_path_factory.mktemp(f"fidelity-{database.kind}")
    gateway = launch_gateway(tmp, database, idp, opaque_idp, server)  # type: ignore[arg-type]
    gateway.token("alice")  # fetched once, before any thread wants it
    yield gateway
    gateway.proc.stop()


@pytest.fixture(autouse=True)
def _gateway_log_stays_clean(gw: Gateway) -> Iterator[None]:
    """No test may leave a traceback or a restarted worker in the gateway's log."""
    before = len(gw.proc.log())
    yield
    new = gw.proc.log()[before:]
    assert "Traceback" not in new, new[-4000:]
    assert "WORKER TIMEOUT" not in new and "Booting worker" not in new, new[-4000:]


# --- helpers ------------------------------------------------------------------------------


def call(
    gw: Gateway,
    server: MisbehavingUpstream,
    path: str,
    scenario: Scenario | None = None,
    *,
    method: str = "GET",
    session: requests.Session | None = None,
    timeout: float = 10.0,
    **kwargs: Any,
) -> tuple[requests.Response, str]:
    """One request as alice; `scenario` answers it upstream. Returns the response and key."""
    key = server.register(scenario) if scenario is not None else ""
    url = gw.url + path + (f"?case={key}" if key else "")
    headers = {"Authorization": f"Bearer {gw.token('alice')}", **kwargs.pop("headers", {})}
    client: Any = session or requests
    response = client.request(method, url, headers=headers, timeout=timeout, **kwargs)
    return response, key


def canonical_sha256(rec: dict) -> str:
    return hashlib.sha256(orjson.dumps(rec, option=orjson.OPT_SORT_KEYS)).hexdigest()


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f"duplicate key in released JSON: {names}"
    return dict(pairs)


def records_of(path: str, response: requests.Response) -> list[dict]:
    """The records a client received, parsed strictly (a duplicate key fails)."""
    body = json.loads(response.content, object_pairs_hook=no_duplicate_keys)
    if "/items/" in path or path.startswith(OWN_PROJECT):
        return [body]
    return body["records"]


def assert_released(gw: Gateway, response: requests.Response, records: list[dict]) -> None:
    """The client's records are its own, and each has one allow/released row (id, SHA-256)."""
    rid = response.headers["X-Request-Id"]
    assert records
    assert {rec.get("marker") for rec in records} == {rid}, "another request's records leaked"
    rows = gw.audit_rows(rid)
    assert {(r.decision, r.reason) for r in rows} == {("allow", "released")}, rows
    assert sorted((r.record_id, r.record_sha256) for r in rows) == sorted(
        (str(rec["id"]), canonical_sha256(rec)) for rec in records
    )


def assert_refused(
    gw: Gateway, response: requests.Response, status: int, error: str, reason: str
) -> None:
    """A JSON error naming the request, and exactly one deny row with this reason."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = response.json()
    rid = response.headers["X-Request-Id"]
    assert set(body) == {"error", "message", "request_id"}
    assert (body["error"], body["request_id"]) == (error, rid)
    rows = gw.audit_rows(rid)
    assert [(r.decision, r.reason, r.record_sha256) for r in rows] == [("deny", reason, None)]


def assert_healthy(gw: Gateway, server: MisbehavingUpstream, times: int = 1) -> None:
    """Plain requests still get their own records (the worker survived, the pool is in step)."""
    for _ in range(times):
        response, _ = call(gw, server, RECORDS, Reply(pieces=2, pause=0.01))
        assert response.status_code == 200, response.text[:500]
        records = records_of(RECORDS, response)
        assert len(records) == 5
        assert_released(gw, response, records)


def wait_rows(gw: Gateway, request_id: str, count: int, timeout: float = 5.0) -> list:
    """Rows written after the response started (a broken stream) may land a moment later."""
    deadline = time.monotonic() + timeout
    while True:
        rows = gw.audit_rows(request_id)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


# --- record routes: every transfer shape ---------------------------------------------------

TRANSFER_SHAPES: dict[str, Reply] = {
    "one-write": Reply(),
    "small-writes-with-pauses": Reply(pieces=8, pause=0.02),
    "chunked": Reply(framing="chunked", pieces=6, pause=0.01),
    "connection-close": Reply(announce_close=True, pieces=3, pause=0.01),
    "http-1.0-until-close": Reply(version="HTTP/1.0", framing="eof", pieces=3, pause=0.01),
    "100-continue-first": Reply(interim=(CONTINUE,)),
    "gzip": Reply(encoding="gzip", pieces=3, pause=0.01),
    "gzip-chunked": Reply(encoding="gzip", framing="chunked", pieces=4),
    "deflate": Reply(encoding="deflate"),
}


@pytest.mark.parametrize("shape", list(TRANSFER_SHAPES))
def test_record_route_releases_every_record_whatever_the_transfer_shape(
    gw: Gateway, server: MisbehavingUpstream, shape: str
) -> None:
    response, key = call(gw, server, RECORDS, TRANSFER_SHAPES[shape])
    assert response.status_code == 200, response.text[:500]
    # Decoded by the gateway: plain JSON, and nothing tells the client otherwise.
    assert "Content-Encoding" not in response.headers
    assert response.headers["Content-Type"].startswith("application/json")
    records = records_of(RECORDS, response)
    assert [rec["id"] for rec in records] == [f"fr-{i:04d}" for i in range(5)]
    assert_released(gw, response, records)
    assert len(server.hits(key)) == 1


def test_single_record_route_over_small_chunks(gw: Gateway, server: MisbehavingUpstream) -> None:
    response, _ = call(gw, server, ITEM, Reply(framing="chunked", pieces=5, pause=0.01))
    assert response.status_code == 200, response.text[:500]
    records = records_of(ITEM, response)
    assert records[0]["id"] == "it-0001"
    assert_released(gw, response, records)


# --- pooled connections under concurrency --------------------------------------------------

Behaviour = Callable[[], tuple[str, Scenario]]

POOLED: dict[str, Behaviour] = {
    # The bug this file was written for: the connection went back to the pool before its
    # body was read, so the next request on it read (or wrote over) the rest.
    "body-in-two-writes-50ms-apart": lambda: (RECORDS, Reply(pieces=2, pause=0.05)),
    "chunked": lambda: (RECORDS, Reply(framing="chunked", pieces=4, pause=0.01)),
    "connection-close": lambda: (RECORDS, Reply(announce_close=True, pieces=2, pause=0.02)),
    "idle-close-after-30ms": lambda: (RECORDS, idle_close(0.03, Reply(pieces=2, pause=0.02))),
    "close-after-3-requests": lambda: (RECORDS, close_after(3, Reply(pieces=2, pause=0.02))),
    "stale-pooled-connection": lambda: (RECORDS, drop_if_reused(Reply(pieces=2, pause=0.02))),
    "item-small-writes": lambda: (ITEM, Reply(pieces=3, pause=0.02)),
    "stream-small-writes": lambda: (
        STREAM,
        Reply(content_type="text/plain", pieces=3, pause=0.02),
    ),
}


def _mixed() -> tuple[str, Scenario]:
    return random.choice(list(POOLED.values()))()


@pytest.mark.parametrize("behaviour", [*POOLED, "mixed"])
def test_concurrent_clients_each_get_exactly_their_own_records(
    gw: Gateway, server: MisbehavingUpstream, behaviour: str
) -> None:
    make = POOLED.get(behaviour, _mixed)
    failures: list[str] = []
    released: list[tuple[requests.Response, list[dict]]] = []
    streamed: list[str] = []
    keys: list[str] = []

    def client(number: int) -> None:
        rng = random.Random(number)
        with requests.Session() as session:
            for _ in range(REQUESTS_PER_CLIENT):
                path, scenario = make()
                try:
                    response, key = call(gw, server, path, scenario, session=session)
                except requests.RequestException as error:
                    failures.append(f"{path}: {error!r}")
                    continue
                keys.append(key)
                rid = response.headers.get("X-Request-Id", "")
                if response.status_code != 200:
                    failures.append(f"{path}: {response.status_code} {response.text[:200]}")
                elif path == STREAM:
                    if response.content != stream_bytes(rid):
                        failures.append(f"{path}: stream bytes of {rid} differ")
                    streamed.append(rid)
                else:
                    records = records_of(path, response)
                    if {rec["marker"] for rec in records} != {rid}:
                        failures.append(f"{path}: {rid} received another request's records")
                    released.append((response, records))
                time.sleep(rng.uniform(0, 0.04))

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    total = CLIENTS * REQUESTS_PER_CLIENT
    assert not failures, f"{len(failures)} of {total} failed, e.g. {failures[:5]}"
    assert len(released) + len(streamed) == total
    for response, records in released:
        assert_released(gw, response, records)
    for rid in streamed:
        assert [(r.decision, r.reason) for r in gw.audit_rows(rid)] == [("allow", "released")]
    hits = [server.hits(key) for key in keys]
    if behaviour == "stale-pooled-connection":
        # The run proves something only if some requests were dropped and retried.
        assert any(len(h) == 2 for h in hits), "no request went over a pooled connection"


# --- stale pooled connections ---------------------------------------------------------------


def _until_reused(
    gw: Gateway, server: MisbehavingUpstream, method: str, **kwargs: Any
) -> tuple[requests.Response, list]:
    """Send drop-if-reused requests until one goes over a pooled connection (each gunicorn
    worker has its own pool, so the first may open a fresh one)."""
    for _ in range(10):
        response, key = call(gw, server, RECORDS, drop_if_reused(), method=method, **kwargs)
        hits = server.hits(key)
        assert hits, response.text[:500]
        if hits[0].reused:
            return response, hits
        assert response.status_code == 200, response.text[:500]
        assert len(hits) == 1
    pytest.fail(f"no {method} went over a pooled connection in 10 attempts")


def test_stale_pooled_connection_is_retried_once_for_a_get(
    gw: Gateway, server: MisbehavingUpstream
) -> None:
    call(gw, server, RECORDS)  # leaves a kept-alive connection in a pool
    response, hits = _until_reused(gw, server, "GET")
    assert response.status_code == 200, response.text[:500]
    assert [hit.method for hit in hits] == ["GET", "GET"]
    assert hits[1].conn_id != hits[0].conn_id
    assert_released(gw, response, records_of(RECORDS, response))


def test_stale_pooled_connection_is_never_retried_for_a_post(
    gw: Gateway, server: MisbehavingUpstream
) -> None:
    call(gw, server, RECORDS)
    body = b'{"label": "positive"}'
    headers = {"Content-Type": "application/json"}
    response, hits = _until_reused(gw, server, "POST", data=body, headers=headers)
    assert hits[0].body == body
    assert_refused(gw, response, 502, "upstream_unreachable", "upstream_unreachable")
    time.sleep(0.3)
    assert len(server.hits(hits[0].case)) == 1, "the POST reached the upstream twice"
    assert_healthy(gw, server)


# --- timeouts and cut bodies ------------------------------------------------------------------


def test_slow_headers_are_504_and_the_late_answer_reaches_no_one(
    gw: Gateway, server: MisbehavingUpstream
) -> None:
    response, _ = call(gw, server, RECORDS, Reply(head_delay=STALL))
    assert_refused(gw, response, 504, "upstream_timeout", "upstream_timeout")
    time.sleep(STALL - 2.0 + 0.4)  # the late answer is on the wire now
    assert_healthy(gw, server, times=4)


def test_record_body_stalling_midway_is_504_and_nothing_released(
    gw: Gateway, server: MisbehavingUpstream
) -> None:
    response, _ = call(gw, server, RECORDS, Reply(pieces=2, stall_at=0.5, stall=STALL))
    assert_refused(gw, response, 504, "upstream_timeout", "upstream_timeout")
    assert "misbehaving" not in response.text
    assert_healthy(gw, server, times=2)


CUT_BODIES: dict[str, Reply] = {
    "content-length-half-sent": Reply(cut_at=0.5),
    "chunked-half-sent": Reply(framing="chunked", pieces=4, cut_at=0.6),
    # Every byte of valid JSON arrived, but not the terminal chunk: still truncated.
    "chunked-without-terminal-chunk": Reply(framing="chunked", pieces=3, cut_at=1.0),
}


@pytest.mark.parametrize("cut", list(CUT_BODIES))
def test_record_body_cut_midway_is_502_truncated(
    gw: Gateway, server: MisbehavingUpstream, cut: str
) -> None:
    response, _ = call(gw, server, RECORDS, CUT_BODIES[cut])
    assert_refused(gw, response, 502, "bad_upstream_response", "upstream_truncated")
    assert "misbehaving" not in response.text
    assert_healthy(gw, server)


# --- encodings the gateway did not ask for -----------------------------------------------------


def test_gzip_bomb_is_502_too_large(gw: Gateway, server: MisbehavingUpstream) -> None:
    bomb = gzip_bomb()  # ~64 KiB on the wire, 64 MiB decoded (max_record_body_bytes: 32 MiB)
    assert len(bomb) < 1024 * 1024
    scenario = Reply(body=raw_body(bomb), headers=(("Content-Encoding", "gzip"),))
    response, _ = call(gw, server, RECORDS, scenario)
    assert_refused(gw, response, 502, "bad_upstream_response", "upstream_too_large")
    assert_healthy(gw, server)


# A gzip header, then a deflate block of the reserved type 11: no decoder gets past it.
CORRUPT_GZIP = gzip.compress(b"")[:10] + b"\x07" + bytes(range(64))


UNDECODABLE: dict[str, tuple[str, Callable[[str], bytes]]] = {
    "br": ("br", lambda marker: bytes(range(256)) * 4),
    "unknown-encoding": ("x-gateway-never-heard-of-it", lambda marker: b'{"records":[]}'),
    "corrupt-gzip": ("gzip", lambda marker: CORRUPT_GZIP),
}


@pytest.mark.parametrize("case", list(UNDECODABLE))
def test_encoding_the_gateway_cannot_decode_is_502(
    gw: Gateway, server: MisbehavingUpstream, case: str
) -> None:
    encoding, body = UNDECODABLE[case]
    scenario = Reply(body=raw_body(body), headers=(("Content-Encoding", encoding),))
    response, _ = call(gw, server, RECORDS, scenario)
    assert_refused(gw, response, 502, "bad_upstream_response", "upstream_encoding")
    assert_healthy(gw, server)


# --- hostile JSON ---------------------------------------------------------------------------


def _records_json(*records: str) -> Callable[[str], bytes]:
    return lambda marker: ('{"records":[' + ",".join(records) + "]}").encode()


HOSTILE_JSON: dict[str, Callable[[str], bytes]] = {
    "nesting-depth-100k": lambda marker: (
        b'{"records":[{"id":"deep-1","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}]}"
    ),
    "nan": _records_json('{"id":"nan-1","score":NaN}'),
    "infinity": _records_json('{"id":"inf-1","score":Infinity}'),
    "minus-infinity": _records_json('{"id":"inf-2","score":-Infinity}'),
    "invalid-utf8": lambda marker: b'{"records":[{"id":"utf-1","text":"\xff\xfe\xc0\xaf"}]}',
    "utf8-bom": lambda marker: (
        b"\xef\xbb\xbf" + json.dumps({"records": [record(0, marker)]}).encode()
    ),
    "id-is-an-object": _records_json('{"id":{"$oid":"5f1d"}}'),
    "id-is-a-float": _records_json('{"id":1.5}'),
    "id-above-2**64": _records_json(f'{{"id":{2**64 + 1}}}'),
    "id-of-30-digits": _records_json(f'{{"id":{10**30}}}'),
}


@pytest.mark.parametrize("case", list(HOSTILE_JSON))
def test_hostile_json_is_502_malformed_and_the_worker_survives(
    gw: Gateway, server: MisbehavingUpstream, case: str
) -> None:
    response, _ = call(gw, server, RECORDS, Reply(body=raw_body(HOSTILE_JSON[case])))
    assert_refused(gw, response, 502, "bad_upstream_response", "upstream_malformed")
    assert_healthy(gw, server)


def test_duplicate_records_key_releases_exactly_what_was_logged(
    gw: Gateway, server: MisbehavingUpstream
) -> None:
    def body(marker: str) -> bytes:
        first = json.dumps(record(0, marker, prefix="dup-first"))
        last = json.dumps(record(1, marker, prefix="dup-last"))
        return f'{{"records":[{first}],"records":[{last}]}}'.encode()

    response, _ = call(gw, server, RECORDS, Reply(body=raw_body(body)))
    assert response.status_code == 200, response.text[:500]
    # Parsed strictly: the released bytes hold no duplicate key, so every client reads the
    # same records, and those are the ones logged.
    records = records_of(RECORDS, response)
    assert len(records) == 1
    assert_released(gw, response, records)


def _dup_record(record_id: str, first: tuple[str, str], last: tuple[str, str]) -> Callable:
    def body(marker: str) -> bytes:
        return (
            f'{{"{first[0]}":"{first[1]}","id":"{record_id}","marker":"{marker}",'
            f'"text":"t","{last[0]}":"{last[1]}"}}'
        ).encode()

    return body


DUPLICATED_FIELD = {
    # (record id in the path, body): alice may read proj-1, not proj-3
    "project-granted-last": (
        "dp-1",
        _dup_record("dp-1", ("project", "proj-3"), ("project", "proj-1")),
    ),
    "project-granted-first": (
        "dp-2",
        _dup_record("dp-2", ("project", "proj-1"), ("project", "proj-3")),
    ),
    "id": ("dp-4", _dup_record("dp-4", ("id", "dp-3"), ("project", "proj-1"))),
}


@pytest.mark.parametrize("case", list(DUPLICATED_FIELD))
def test_duplicate_key_in_a_record_releases_exactly_what_was_decided_and_logged(
    gw: Gateway, server: MisbehavingUpstream, case: str
) -> None:
    record_id, body = DUPLICATED_FIELD[case]
    path = OWN_PROJECT + record_id
    response, _ = call(gw, server, path, Reply(body=raw_body(body)))
    assert response.status_code in (200, 403), response.text[:500]
    rows = gw.audit_rows(response.headers["X-Request-Id"])
    if response.status_code == 403:
        # Decided on proj-3: nothing of the record leaves, and the row says why.
        assert "marker" not in response.text
        assert [(r.decision, r.record_id, r.project) for r in rows] == [
            ("filtered", record_id, "proj-3")
        ]
        return
    records = records_of(path, response)  # strict: no duplicate key in the released bytes
    assert records[0]["project"] == "proj-1"
    assert records[0]["id"] == record_id
    assert_released(gw, response, records)
    assert [r.project for r in rows] == ["proj-1"]


# --- informational and bodiless answers ----------------------------------------------------------


INFORMATIONAL: dict[str, Reply] = {
    # The real 200 right behind the 103 on the same connection: a client that takes the
    # 103 for the answer and pools the connection hands that 200 to the next request.
    "103-then-200": Reply(interim=(EARLY_HINTS,)),
    "102-then-200": Reply(interim=(b"HTTP/1.1 102 Processing\r\n\r\n",)),
    "bare-103": Reply(status=103, framing="none"),
}


@pytest.mark.parametrize("case", list(INFORMATIONAL))
def test_non_100_informational_answer_is_502_protocol_and_the_pool_stays_in_step(
    gw: Gateway, server: MisbehavingUpstream, case: str
) -> None:
    response, _ = call(gw, server, RECORDS, INFORMATIONAL[case], timeout=6)
    assert_refused(gw, response, 502, "bad_upstream_response", "upstream_protocol")
    assert_healthy(gw, server, times=4)


def test_204_on_a_record_route_is_204_with_a_no_records_row(
    gw: Gateway, server: MisbehavingUpstream
) -> None:
    response, _ = call(gw, server, RECORDS, Reply(status=204, framing="none"))
    assert response.status_code == 204
    assert response.content == b""
    rows = gw.audit_rows(response.headers["X-Request-Id"])
    assert [(r.decision, r.reason, r.record_id) for r in rows] == [("allow", "no_records", None)]
    assert_healthy(gw, server)


def test_304_on_a_record_route_is_304_with_one_allow_row(
    gw: Gateway, server: MisbehavingUpstream
) -> None:
    scenario = Reply(status=304, framing="none", headers=(("ETag", '"v1"'),))
    response, _ = call(gw, server, RECORDS, scenario, headers={"If-None-Match": '"v1"'})
    assert response.status_code == 304
    assert response.content == b""
    rows = gw.audit_rows(response.headers["X-Request-Id"])
    assert [(r.decision, r.record_id) for r in rows] == [("allow", None)]
    assert_healthy(gw, server)


HEAD_ANSWERS: dict[str, Reply] = {
    # The GET body's length announced, no body: as HEAD answers are.
    "proper": Reply(),
    # The body sent anyway: those bytes must never be read as the next request's answer.
    "with-a-body": Reply(body_on_head=True),
}


@pytest.mark.parametrize("case", list(HEAD_ANSWERS))
def test_head_on_a_record_route_releases_no_record(
    gw: Gateway, server: MisbehavingUpstream, case: str
) -> None:
    response, key = call(gw, server, RECORDS, HEAD_ANSWERS[case], method="HEAD")
    assert response.status_code == 200
    assert response.content == b""
    assert server.hits(key)[0].method == "HEAD"
    rows = gw.audit_rows(response.headers["X-Request-Id"])
    assert [(r.decision, r.record_id) for r in rows] == [("allow", None)]
    assert_healthy(gw, server, times=4)


# --- streamed routes --------------------------------------------------------------------------

STREAM_SHAPES: dict[str, Reply] = {
    "content-length": Reply(content_type="text/plain"),
    "small-writes": Reply(content_type="text/plain", pieces=6, pause=0.02),
    "chunked": Reply(content_type="text/plain", framing="chunked", pieces=5, pause=0.01),
    "http-1.0-until-close": Reply(content_type="text/plain", version="HTTP/1.0", framing="eof"),
}


@pytest.mark.parametrize("shape", list(STREAM_SHAPES))
def test_stream_route_passes_bytes_through_unchanged(
    gw: Gateway, server: MisbehavingUpstream, shape: str
) -> None:
    response, _ = call(gw, server, STREAM, STREAM_SHAPES[shape])
    assert response.status_code == 200, response.text[:500]
    rid = response.headers["X-Request-Id"]
    assert response.content == stream_bytes(rid)
    rows = gw.audit_rows(rid)
    assert [(r.decision, r.reason) for r in rows] == [("allow", "released")]


# Large enough that the gateway has forwarded a first part when the upstream breaks off.
BIG_STREAM_LINES = 2500  # ~220 KiB


def _big_stream(**kwargs: Any) -> Reply:
    return Reply(body=stream_body(BIG_STREAM_LINES), content_type="text/plain", **kwargs)


BROKEN_STREAMS: dict[str, tuple[Reply, str]] = {
    "stall-content-length": (_big_stream(pieces=4, stall_at=0.6, stall=STALL), "upstream_timeout"),
    "stall-chunked": (
        _big_stream(framing="chunked", pieces=4, stall_at=0.6, stall=STALL),
        "upstream_timeout",
    ),
    "cut-content-length": (_big_stream(pieces=4, cut_at=0.6), "upstream_truncated"),
    "cut-chunked": (_big_stream(framing="chunked", pieces=4, cut_at=0.6), "upstream_truncated"),
}


@pytest.mark.parametrize("case", list(BROKEN_STREAMS))
def test_stream_broken_midway_is_visibly_truncated_and_logged(
    gw: Gateway, server: MisbehavingUpstream, case: str
) -> None:
    scenario, reason = BROKEN_STREAMS[case]
    response, _ = call(gw, server, STREAM, scenario, stream=True)
    assert response.status_code == 200
    rid = response.headers["X-Request-Id"]
    expected = stream_bytes(rid, BIG_STREAM_LINES)
    if scenario.framing == "length":
        assert response.headers["Content-Length"] == str(len(expected))
    else:
        assert response.headers.get("Transfer-Encoding") == "chunked"
    received = bytearray()
    # Fewer bytes than announced, or no terminal chunk: the client cannot mistake it for
    # the whole download.
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for piece in response.iter_content(1024):
            received += piece
    assert 0 < len(received) < len(expected)
    assert expected.startswith(bytes(received))
    rows = wait_rows(gw, rid, 2)
    assert [(r.decision, r.reason) for r in rows] == [
        ("allow", "released"),
        ("deny", f"stream_broken:{reason}"),
    ]
    assert_healthy(gw, server)


SMALL_BROKEN_STREAMS: dict[str, tuple[Reply, int, str, str]] = {
    # Nothing of the body arrives: the client gets a clean JSON error, not a connection
    # closed without a status line (which clients take for a stale connection and retry).
    "stall-before-first-byte": (
        Reply(body=stream_body(40), content_type="text/plain", stall_at=0.0, stall=STALL),
        504,
        "upstream_timeout",
        "upstream_timeout",
    ),
    "cut-before-first-byte": (
        Reply(body=stream_body(40), content_type="text/plain", cut_at=0.0),
        502,
        "bad_upstream_response",
        "upstream_truncated",
    ),
}


@pytest.mark.parametrize("case", list(SMALL_BROKEN_STREAMS))
def test_stream_broken_before_its_first_byte_is_a_json_error(
    gw: Gateway, server: MisbehavingUpstream, case: str
) -> None:
    scenario, status, error, reason = SMALL_BROKEN_STREAMS[case]
    response, _ = call(gw, server, STREAM, scenario)
    assert_refused(gw, response, status, error, reason)
    assert_healthy(gw, server)


def test_trickling_stream_is_passed_on_as_it_arrives(
    gw: Gateway, server: MisbehavingUpstream
) -> None:
    # 8 small pieces 0.25 s apart: the first must reach the client long before the last.
    scenario = Reply(body=stream_body(40), content_type="text/plain", pieces=8, pause=0.25)
    started = time.monotonic()
    response, _ = call(gw, server, STREAM, scenario, stream=True)
    pieces = response.iter_content(16)
    first = next(pieces)
    first_at = time.monotonic() - started
    rest = b"".join(pieces)
    assert first + rest == stream_bytes(response.headers["X-Request-Id"], 40)
    assert first_at < 1.0, f"the first piece took {first_at:.2f}s (the body takes 1.75s)"


# --- too many records (last: expensive for a gateway that logs them all) ------------------------


@cache
def _many_records(count: int) -> bytes:
    return b'{"records":[' + b",".join(b'{"id":%d}' % i for i in range(count)) + b"]}"


@pytest.mark.parametrize(
    ("count", "reason"),
    [
        (10_001, "upstream_too_many_records"),  # one over the route's max_records (10,000)
        (200_000, "upstream_too_many_records"),
        # Over max_json_values (1,000,000) as well: refused before it is parsed.
        (1_000_000, "upstream_too_complex"),
    ],
)
def test_more_records_than_the_route_allows_is_502_and_nothing_logged_per_record(
    gw: Gateway, server: MisbehavingUpstream, count: int, reason: str
) -> None:
    body = _many_records(count)
    assert len(body) < 32 * 1024 * 1024  # under max_record_body_bytes: the count decides
    response, _ = call(gw, server, RECORDS, Reply(body=raw_body(body)), timeout=20)
    assert_refused(gw, response, 502, "bad_upstream_response", reason)
    assert_healthy(gw, server)
