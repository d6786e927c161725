"""What leaves is exactly what was logged, whatever the upstream, the route or the client does.

One test per way the bytes released could differ from the rows written (a hostile-input
review found each against the earlier gateway): duplicate JSON keys, error bodies
carrying records, records outside the selection, records without their project, a query
choosing another project, oversized uploads, amplification, deep nesting, formulas in
manifests, and clients gone before release. All through the real gateway under gunicorn
in front of the socket-level server of tests/support/misbehaving.py.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from tests.conftest import GATEWAY_BIN, ROOT, Database, Gateway, Proc, launch_gateway
from tests.support.misbehaving import MisbehavingUpstream, Reply, Scenario, raw_body, record

RECORDS = "/fault/projects/proj-1/records"
OWN_PROJECT = "/fault/records/"  # + record id; the record names its own project
STREAM = "/fault/projects/proj-1/stream"
INSPECT = "/fault/inspect/projects/proj-1/records"
STRICT = "/fault/strict/projects/proj-1/records"
ENVELOPE = "/fault/envelope/projects/proj-1/records"

EXTRA_ROUTES = """
[[routes]]
methods = ["GET"]
path = "/fault/inspect/projects/{project}/records"
action = "read"
records = "records"
record_id = "id"
upstream_errors = "inspect"

[[routes]]
methods = ["GET"]
path = "/fault/strict/projects/{project}/records"
action = "read"
records = "records"
record_id = "id"
envelope_extra = "refuse"

[[routes]]
methods = ["GET"]
path = "/fault/envelope/projects/{project}/records"
action = "read"
records = "data.items"
record_id = "id"
envelope = ["count", "next", "data.total"]
"""


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
    tmp = tmp_path_factory.mktemp(f"invariants-{database.kind}")
    gateway = launch_gateway(
        tmp,
        database,
        idp,
        opaque_idp,
        server,  # type: ignore[arg-type]
        extra_routes=EXTRA_ROUTES,
    )
    gateway.token("alice")
    yield gateway
    gateway.proc.stop()


@pytest.fixture(autouse=True)
def _no_tracebacks(gw: Gateway) -> Iterator[None]:
    before = len(gw.proc.log())
    yield
    new = gw.proc.log()[before:]
    assert "Traceback" not in new, new[-4000:]


# --- helpers ------------------------------------------------------------------------------


def get(
    gw: Gateway, server: MisbehavingUpstream, path: str, scenario: Scenario, **kwargs: Any
) -> tuple[requests.Response, str]:
    key = server.register(scenario)
    separator = "&" if "?" in path else "?"
    response = requests.get(
        f"{gw.url}{path}{separator}case={key}",
        headers={"Authorization": f"Bearer {gw.token('alice')}"},
        timeout=15,
        **kwargs,
    )
    return response, key


def sha(rec: dict) -> str:
    return hashlib.sha256(orjson.dumps(rec, option=orjson.OPT_SORT_KEYS)).hexdigest()


def strict_json(data: bytes) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        names = [name for name, _ in pairs]
        assert len(names) == len(set(names)), f"duplicate key released: {names}"
        return dict(pairs)

    return json.loads(data, object_pairs_hook=no_duplicates)


def released_rows(gw: Gateway, request_id: str) -> list[tuple[str, str]]:
    return sorted(
        (r.record_id, r.record_sha256)
        for r in gw.audit_rows(request_id)
        if r.decision == "allow" and r.record_id
    )


def json_reply(payload: bytes | str, status: int = 200, **kwargs: Any) -> Reply:
    data = payload.encode() if isinstance(payload, str) else payload
    return Reply(body=raw_body(data), status=status, **kwargs)


def rec(index: int, project: str = "proj-1") -> dict:
    return record(index, "m", project=project, prefix="inv")


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# --- 1. duplicate keys: the client sees what the log holds ------------------------------------


def test_duplicate_records_key_releases_only_the_logged_records(
    gw: Gateway, server: MisbehavingUpstream
) -> None:
    foreign, granted = rec(305, "proj-2"), rec(5)
    body = f'{{"records":[{dumps(foreign)}],"records":[{dumps(granted)}]}}'
    response, _ = get(gw, server, RECORDS, json_reply(body))
    assert response.status_code == 200, response.text
    assert b"inv-0305" not in response.content and b"proj-2" not in response.content
    released = strict_json(response.content)["records"]
    assert released == [granted]
    rid = response.headers["X-Request-Id"]
    assert released_rows(gw, rid) == [(granted["id"], sha(granted))]


def test_duplicate_project_key_on_a_single_record(gw: Gateway, server: MisbehavingUpstream) -> None:
    body = '{"id":"inv-0305","project":"proj-2","text":"x","project":"proj-1"}'
    response, _ = get(gw, server, OWN_PROJECT + "inv-0305", json_reply(body))
    assert response.status_code == 200, response.text
    released = strict_json(response.content)
    assert released == {"id": "inv-0305", "project": "proj-1", "text": "x"}
    rows = gw.audit_rows(response.headers["X-Request-Id"])
    assert [(r.decision, r.project, r.record_sha256) for r in rows] == [
        ("allow", "proj-1", sha(released))
    ]


# --- 2. error answers do not carry records out ----------------------------------------------


@pytest.mark.parametrize(("status", "client_status"), [(404, 404), (302, 502), (500, 502)])
def test_error_body_with_records_is_replaced(
    gw: Gateway, server: MisbehavingUpstream, status: int, client_status: int
) -> None:
    body = dumps({"records": [rec(1, "proj-2")], "detail": "Django Version: 4.2.11 KeyError"})
    reply = json_reply(body, status=status, headers=(("Location", "http://internal:8080/x"),))
    response, _ = get(gw, server, RECORDS, reply, allow_redirects=False)
    assert response.status_code == client_status
    assert response.json()["error"] == "upstream_error"
    assert response.json()["upstream_status"] == status
    assert b"inv-0001" not in response.content and b"Django" not in response.content
    assert "Location" not in response.headers
    rows = gw.audit_rows(response.headers["X-Request-Id"])
    assert [(r.decision, r.reason, r.record_id) for r in rows] == [
        ("allow", f"upstream_{status}", None)
    ]


def test_upstream_crash_page_on_a_streamed_route_is_replaced(
    gw: Gateway, server: MisbehavingUpstream
) -> None:
    page = b"<h1>Server Error</h1><pre>Traceback ... label_studio 1.23.2 Django 4.2</pre>"
    reply = Reply(body=raw_body(page), status=500, content_type="text/html")
    response, _ = get(gw, server, STREAM, reply)
    assert response.status_code == 502
    assert response.json() | {"request_id": None} == {
        "error": "upstream_error",
        "message": "the dataset service answered 500",
        "upstream_status": 500,
        "request_id": None,
    }


def test_inspected_error_body_is_enforced_and_logged(
    gw: Gateway, server: MisbehavingUpstream
) -> None:
    granted = rec(7)
    response, _ = get(gw, server, INSPECT, json_reply(dumps({"records": [granted]}), status=404))
    assert response.status_code == 404
    assert strict_json(response.content)["records"] == [granted]
    assert released_rows(gw, response.headers["X-Request-Id"]) == [(granted["id"], sha(granted))]


# --- 3. only the records and the named envelope leave ---------------------------------------


def test_fields_beside_the_records_are_dropped(gw: Gateway, server: MisbehavingUpstream) -> None:
    granted, foreign = rec(1), rec(2, "proj-2")
    body = dumps({"count": 1, "records": [granted], "related": [foreign], "next": None})
    response, _ = get(gw, server, RECORDS, json_reply(body))
    assert response.status_code == 200
    assert strict_json(response.content) == {"records": [granted]}
    assert released_rows(gw, response.headers["X-Request-Id"]) == [(granted["id"], sha(granted))]


def test_named_envelope_fields_are_released(gw: Gateway, server: MisbehavingUpstream) -> None:
    granted = rec(3)
    body = dumps(
        {
            "count": 1,
            "next": "/page/2",
            "data": {"items": [granted], "total": 1, "related": [rec(4, "proj-2")]},
            "debug": {"sql": "select * from tasks"},
        }
    )
    response, _ = get(gw, server, ENVELOPE, json_reply(body))
    assert response.status_code == 200
    assert strict_json(response.content) == {
        "count": 1,
        "next": "/page/2",
        "data": {"items": [granted], "total": 1},
    }


def test_strict_envelope_refuses_extra_fields(gw: Gateway, server: MisbehavingUpstream) -> None:
    body = dumps({"records": [rec(1)], "related": [rec(2, "proj-2")]})
    response, _ = get(gw, server, STRICT, json_reply(body))
    assert response.status_code == 502
    assert b"inv-0001" not in response.content
    rows = gw.audit_rows(response.headers["X-Request-Id"])
    assert [(r.decision, r.reason) for r in rows] == [("deny", "upstream_unexpected_fields")]


# --- 4. a record without its project is not the path's --------------------------------------


@pytest.mark.parametrize("body", ['{"id":"inv-0009","project":null}', '{"id":"inv-0009"}'])
def test_record_without_project_is_withheld(
    gw: Gateway, server: MisbehavingUpstream, body: str
) -> None:
    response, _ = get(gw, server, OWN_PROJECT + "inv-0009", json_reply(body))
    assert response.status_code == 403
    rows = gw.audit_rows(response.headers["X-Request-Id"])
    assert [(r.decision, r.reason, r.project, r.record_id) for r in rows] == [
        ("filtered", "record_project_missing", None, "inv-0009")
    ]


# --- 5. a query may not choose another project ----------------------------------------------


def test_query_naming_another_project_is_refused_before_the_upstream(
    gw: Gateway, server: MisbehavingUpstream
) -> None:
    response, key = get(gw, server, RECORDS + "?project=proj-2", Reply())
    assert response.status_code == 400
    assert response.json()["error"] == "bad_query"
    assert server.hits(key) == []


def test_fixed_project_route_without_query_params_is_refused_by_check_config(
    gw: Gateway, tmp_path: Path
) -> None:
    config = gw.config_path.read_text() + (
        '\n[[routes]]\nmethods = ["GET"]\npath = "/api/tasks/"\naction = "read"\n'
        'project = "proj-1"\n'
    )
    path = tmp_path / "fixed.toml"
    path.write_text(config)
    result = subprocess.run(
        [GATEWAY_BIN, "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"UPSTREAM_TOKEN": "x", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode != 0
    assert "query_params" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


# --- 6. uploads are read in bounded chunks ---------------------------------------------------


def _worker_peaks(gw: Gateway) -> dict[int, int]:
    """Peak resident memory (kB) of each gunicorn worker of this gateway."""
    master = gw.proc.process.pid
    peaks = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if fields.get("PPid", "").strip() == str(master):
            peaks[int(fields["Pid"])] = int(fields["VmHWM"].split()[0])
    return peaks


def test_chunked_upload_past_the_limit_is_refused_without_buffering(
    gw: Gateway, server: MisbehavingUpstream
) -> None:
    before = _worker_peaks(gw)
    key = server.register(Reply())
    host, port = gw.url.removeprefix("http://").split(":")
    head = (
        f"POST {RECORDS}?case={key} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {gw.token('alice')}\r\nTransfer-Encoding: chunked\r\n"
        "Content-Type: application/json\r\n\r\n"
    ).encode()
    chunk = b"x" * (1024 * 1024)
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    answer = b""
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(head)
        try:
            for _ in range(200):  # 200 MiB, far past the 10 MiB limit
                sock.sendall(framed)
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the gateway may stop reading once it has refused
        sock.settimeout(20)
        try:
            while chunk_read := sock.recv(65536):
                answer += chunk_read
                if b"\r\n\r\n" in answer:
                    break
        except OSError:
            pass
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert server.hits(key) == []
    after = _worker_peaks(gw)
    growth = max(after[pid] - before.get(pid, after[pid]) for pid in after)
    # The whole body would be 200 MiB; the limit is 10 MiB, read in 64 KiB chunks.
    assert growth < 60 * 1024, f"a worker's peak memory grew by {growth} kB"


# --- 7. amplification is refused before it costs ----------------------------------------------


def test_a_million_tiny_records_are_refused_and_others_keep_being_served(
    gw: Gateway, server: MisbehavingUpstream
) -> None:
    body = b'{"records":[' + b",".join(b'{"id":%d}' % i for i in range(1_000_000)) + b"]}"
    before = _worker_peaks(gw)
    results: dict[str, Any] = {}

    def big() -> None:
        results["big"] = get(gw, server, RECORDS, json_reply(body))[0]

    thread = threading.Thread(target=big)
    thread.start()
    latencies = []
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            started = time.monotonic()
            responses = list(pool.map(lambda _: get(gw, server, RECORDS, Reply())[0], range(8)))
            latencies.append(time.monotonic() - started)
            assert [r.status_code for r in responses] == [200] * 8
    thread.join(30)
    big_response = results["big"]
    assert big_response.status_code == 502
    rows = gw.audit_rows(big_response.headers["X-Request-Id"])
    assert [(r.decision, r.reason) for r in rows] == [("deny", "upstream_too_complex")]
    assert max(latencies) < 5, latencies
    after = _worker_peaks(gw)
    growth = max(after[pid] - before.get(pid, after[pid]) for pid in after)
    assert growth < 150 * 1024, f"a worker's peak memory grew by {growth} kB"


# --- 8. deep nesting is a clear 502 ------------------------------------------------------------


def test_record_nested_past_the_serialiser_limit_is_a_502(
    gw: Gateway, server: MisbehavingUpstream
) -> None:
    deep = b'{"records":[{"id":"inv-deep","x":' + b"[" * 300 + b"]" * 300 + b"}]}"
    response, _ = get(gw, server, RECORDS, json_reply(deep))
    assert response.status_code == 502
    assert response.json()["error"] == "bad_upstream_response"
    rows = gw.audit_rows(response.headers["X-Request-Id"])
    assert [(r.decision, r.reason) for r in rows] == [("deny", "upstream_malformed")]


# --- 9. record ids are not formulas in a manifest --------------------------------------------


def test_manifest_csv_quotes_formula_record_ids(
    gw: Gateway, server: MisbehavingUpstream, tmp_path: Path
) -> None:
    ids = ['=HYPERLINK("http://evil.example","x")', "@SUM(A1)", "-2+3", " =1+1", "\uff1d1+1"]
    body = dumps({"records": [{"id": i, "n": n} for n, i in enumerate(ids)]})
    response, _ = get(gw, server, RECORDS, json_reply(body))
    assert response.status_code == 200
    manifest = tmp_path / "exposure.csv"
    gw.cli("audit", "exposure", "--vendor", "acme", "--manifest", str(manifest))
    rows = list(csv.DictReader(io.StringIO(manifest.read_text())))
    cells = {row["record_id"] for row in rows}
    for record_id in ids:
        assert "'" + record_id in cells
        assert record_id not in cells


# --- 10. a client gone before release is not logged as released ------------------------------


def test_client_gone_before_release_is_not_logged_as_released(
    gw: Gateway, server: MisbehavingUpstream
) -> None:
    key = server.register(Reply(head_delay=1.0))
    host, port = gw.url.removeprefix("http://").split(":")
    request = (
        f"GET {RECORDS}?case={key} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {gw.token('alice')}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        time.sleep(0.3)  # the gateway is waiting on the upstream; the client gives up
    deadline = time.monotonic() + 10
    while not server.hits(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    (hit,) = server.hits(key)
    rows: list = []
    while time.monotonic() < deadline:
        rows = gw.audit_rows(hit.marker)
        if rows:
            break
        time.sleep(0.1)
    assert [(r.decision, r.reason, r.record_id) for r in rows] == [("deny", "client_gone", None)]
