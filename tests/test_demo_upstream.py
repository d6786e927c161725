"""Unit tests for the bundled sample dataset service (gateway.demo.upstream)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient

from gateway.demo.upstream import MAX_LIMIT, create_upstream_app

TOKEN = "svc-test-token"
AUTH = {"Authorization": f"Token {TOKEN}"}


@pytest.fixture()
def app() -> Flask:
    return create_upstream_app(TOKEN)


@pytest.fixture()
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def get(client: FlaskClient, path: str, **kwargs):
    return client.get(path, headers=AUTH, **kwargs)


def annotate(client: FlaskClient, path: str, body: bytes | dict):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(path, data=data, headers={**AUTH, "Content-Type": "application/json"})


ANNOTATE_URL = "/api/projects/proj-1/tasks/task-2/records/rec-1-2-0042/annotations"


# -- authentication --------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Token wrong"},
        {"Authorization": TOKEN},
        {"Authorization": f"Bearer {TOKEN}"},
        {"Authorization": f"Token {TOKEN}x"},
        {"Authorization": f"token {TOKEN}"},
    ],
)
@pytest.mark.parametrize("path", ["/api/projects", "/api/echo", "/api/garbage", "/nope"])
def test_token_required(client: FlaskClient, headers: dict, path: str) -> None:
    resp = client.get(path, headers=headers)
    assert resp.status_code == 401
    assert resp.mimetype == "application/json"
    assert resp.get_json() == {"error": "unauthorized"}


def test_token_required_for_annotations(client: FlaskClient) -> None:
    resp = client.post(ANNOTATE_URL, data=b'{"label": "positive"}')
    assert resp.status_code == 401


def test_empty_service_token_rejected() -> None:
    with pytest.raises(ValueError):
        create_upstream_app("")


def test_non_ascii_token_header_is_just_unauthorized(client: FlaskClient) -> None:
    resp = client.get("/api/projects", headers={"Authorization": "Token caf\u00e9"})
    assert resp.status_code == 401


# -- listing ---------------------------------------------------------------


def test_list_projects(client: FlaskClient) -> None:
    resp = get(client, "/api/projects")
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    projects = resp.get_json()["projects"]
    assert [p["id"] for p in projects] == ["proj-1", "proj-2", "proj-3"]
    assert all(p["tasks"] == ["task-1", "task-2"] for p in projects)
    assert all(isinstance(p["name"], str) and p["name"] for p in projects)


def test_project_names_are_distinct() -> None:
    app = create_upstream_app(TOKEN, projects=150, tasks_per_project=1, records_per_task=1)
    names = [p["name"] for p in get(app.test_client(), "/api/projects").get_json()["projects"]]
    assert len(set(names)) == 150


def test_list_tasks(client: FlaskClient) -> None:
    resp = get(client, "/api/projects/proj-2/tasks")
    assert resp.status_code == 200
    assert resp.get_json() == {
        "tasks": [
            {"id": "task-1", "project": "proj-2", "records": 300},
            {"id": "task-2", "project": "proj-2", "records": 300},
        ]
    }


def test_task_records_default_page(client: FlaskClient) -> None:
    body = get(client, "/api/projects/proj-1/tasks/task-2/records").get_json()
    assert (body["project"], body["task"]) == ("proj-1", "task-2")
    assert (body["offset"], body["limit"], body["total"]) == (0, 50, 300)
    records = body["records"]
    assert [r["id"] for r in records] == [f"rec-1-2-{n:04d}" for n in range(50)]
    for record in records:
        assert set(record) == {"id", "project", "task", "text", "label", "meta"}
        assert (record["project"], record["task"]) == ("proj-1", "task-2")
        assert 10 <= len(record["text"].split()) <= 30
        assert record["label"] in {None, "positive", "negative", "neutral", "mixed"}
        assert record["meta"]["lang"] == "en"
        assert record["meta"]["source"]
        assert len(record["meta"]["created"]) == 10  # ISO date YYYY-MM-DD


def test_task_records_pagination(client: FlaskClient) -> None:
    url = "/api/projects/proj-1/tasks/task-1/records"
    page = get(client, url, query_string={"offset": 290, "limit": 20}).get_json()
    assert [r["id"] for r in page["records"]] == [f"rec-1-1-{n:04d}" for n in range(290, 300)]
    past_end = get(client, url, query_string={"offset": 1000}).get_json()
    assert past_end["records"] == [] and past_end["total"] == 300
    empty = get(client, url, query_string={"limit": 0}).get_json()
    assert empty["records"] == []


def test_pages_concatenate_to_whole_task(client: FlaskClient) -> None:
    url = "/api/projects/proj-3/tasks/task-1/records"
    ids: list[str] = []
    for offset in range(0, 300, 70):
        page = get(client, url, query_string={"offset": offset, "limit": 70}).get_json()
        ids += [r["id"] for r in page["records"]]
    assert ids == [f"rec-3-1-{n:04d}" for n in range(300)]


def test_limit_is_clamped(client: FlaskClient) -> None:
    app = create_upstream_app(TOKEN, records_per_task=800)
    url = "/api/projects/proj-1/tasks/task-1/records?limit=100000"
    body = get(app.test_client(), url).get_json()
    assert body["limit"] == MAX_LIMIT
    assert len(body["records"]) == MAX_LIMIT


def test_project_records_span_tasks(client: FlaskClient) -> None:
    body = get(client, "/api/projects/proj-2/records?offset=295&limit=10").get_json()
    assert "task" not in body
    assert (body["project"], body["offset"], body["limit"], body["total"]) == (
        "proj-2",
        295,
        10,
        600,
    )
    ids = [r["id"] for r in body["records"]]
    assert ids == [f"rec-2-1-{n:04d}" for n in range(295, 300)] + [
        f"rec-2-2-{n:04d}" for n in range(5)
    ]
    assert [r["task"] for r in body["records"]] == ["task-1"] * 5 + ["task-2"] * 5


@pytest.mark.parametrize(
    "path",
    [
        "/api/projects/proj-4/tasks",
        "/api/projects/proj-0/tasks",
        "/api/projects/proj-01/tasks",
        "/api/projects/nope/tasks",
        "/api/projects/proj-1/tasks/task-3/records",
        "/api/projects/proj-9/tasks/task-1/records",
        "/api/projects/proj-9/records",
        "/api/projects/proj-1/tasks/task-9/export",
        "/api/unknown",
    ],
)
def test_unknown_project_or_task_is_404(client: FlaskClient, path: str) -> None:
    resp = get(client, path)
    assert resp.status_code == 404
    assert resp.mimetype == "application/json"
    assert "error" in resp.get_json()


@pytest.mark.parametrize("param", ["offset", "limit"])
@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "", "+3", " 3", "1_000", "9" * 40])
def test_bad_paging_params_are_400(client: FlaskClient, param: str, value: str) -> None:
    for url in ("/api/projects/proj-1/tasks/task-1/records", "/api/projects/proj-1/records"):
        resp = get(client, url, query_string={param: value})
        assert resp.status_code == 400, (url, param, value)
        assert resp.mimetype == "application/json"
        assert "error" in resp.get_json()


# -- determinism -----------------------------------------------------------


def test_same_seed_gives_same_data() -> None:
    url = "/api/projects/proj-2/tasks/task-1/records?limit=500"
    first = get(create_upstream_app(TOKEN, seed=11).test_client(), url).data
    # The token must not influence the data, only access to it.
    other_client = create_upstream_app("other", seed=11).test_client()
    second = other_client.get(url, headers={"Authorization": "Token other"}).data
    assert first == second
    projects_a = get(create_upstream_app(TOKEN, seed=11).test_client(), "/api/projects").data
    projects_b = get(create_upstream_app(TOKEN, seed=11).test_client(), "/api/projects").data
    assert projects_a == projects_b


def test_different_seed_gives_different_data() -> None:
    url = "/api/projects/proj-1/tasks/task-1/records"
    a = get(create_upstream_app(TOKEN, seed=1).test_client(), url).get_json()["records"]
    b = get(create_upstream_app(TOKEN, seed=2).test_client(), url).get_json()["records"]
    assert [r["id"] for r in a] == [r["id"] for r in b]
    assert [r["text"] for r in a] != [r["text"] for r in b]


def test_records_vary_and_listing_matches_lookup(client: FlaskClient) -> None:
    records = get(client, "/api/projects/proj-1/records?limit=500").get_json()["records"]
    assert len({r["text"] for r in records}) > 450
    assert {r["label"] for r in records} >= {None, "positive", "negative"}
    for record in records[::97]:
        assert get(client, f"/api/records/{record['id']}").get_json() == record


def test_configurable_shape_and_fast_startup() -> None:
    started = time.perf_counter()
    app = create_upstream_app(TOKEN, projects=5, tasks_per_project=4, records_per_task=12_000)
    assert time.perf_counter() - started < 0.5
    client = app.test_client()
    assert len(get(client, "/api/projects").get_json()["projects"]) == 5
    body = get(client, "/api/projects/proj-5/tasks/task-4/records?offset=11999").get_json()
    assert [r["id"] for r in body["records"]] == ["rec-5-4-11999"]


# -- single record ---------------------------------------------------------


def test_get_single_record(client: FlaskClient) -> None:
    resp = get(client, "/api/records/rec-1-2-0042")
    assert resp.status_code == 200
    record = resp.get_json()
    assert (record["id"], record["project"], record["task"]) == ("rec-1-2-0042", "proj-1", "task-2")
    listed = get(client, "/api/projects/proj-1/tasks/task-2/records?offset=42&limit=1")
    assert listed.get_json()["records"] == [record]


@pytest.mark.parametrize(
    "record_id",
    [
        "rec-1-2-0300",
        "rec-4-1-0000",
        "rec-1-3-0000",
        "rec-1-2-42",
        "rec-1-2-00042",
        "rec-01-2-0042",
        "rec-0-1-0000",
        "nope",
        "rec-1-2-",
    ],
)
def test_unknown_record_is_404(client: FlaskClient, record_id: str) -> None:
    resp = get(client, f"/api/records/{record_id}")
    assert resp.status_code == 404
    assert resp.mimetype == "application/json"


# -- annotations -----------------------------------------------------------


def test_submit_annotation(client: FlaskClient) -> None:
    first = annotate(client, ANNOTATE_URL, {"label": "positive", "note": "ok"})
    assert first.status_code == 201
    assert first.mimetype == "application/json"
    body = first.get_json()
    assert body == {
        "record": "rec-1-2-0042",
        "annotation_id": body["annotation_id"],
        "label": "positive",
    }
    second = annotate(
        client,
        "/api/projects/proj-3/tasks/task-1/records/rec-3-1-0000/annotations",
        {"label": "negative"},
    )
    assert second.status_code == 201
    assert second.get_json()["annotation_id"] > body["annotation_id"]


def test_annotations_are_stored(app: Flask, client: FlaskClient) -> None:
    annotate(client, ANNOTATE_URL, {"label": "mixed", "confidence": 0.5})
    stored = app.extensions["demo_upstream"]["annotations"].all()
    assert stored == [
        {
            "annotation_id": 1,
            "record": "rec-1-2-0042",
            "label": "mixed",
            "body": {"label": "mixed", "confidence": 0.5},
        }
    ]


def test_annotation_ids_unique_under_concurrency(app: Flask) -> None:
    def submit(_: int) -> int:
        resp = annotate(app.test_client(), ANNOTATE_URL, {"label": "neutral"})
        assert resp.status_code == 201
        return resp.get_json()["annotation_id"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(submit, range(64)))
    assert sorted(ids) == list(range(1, 65))


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b"{",
        b"[1, 2]",
        b'"label"',
        b"{}",
        b'{"label": 5}',
        b'{"label": ""}',
        b'{"label": null}',
        orjson.dumps({"label": "x" * 201}),
    ],
)
def test_annotation_bad_body_is_400(client: FlaskClient, body: bytes) -> None:
    resp = annotate(client, ANNOTATE_URL, body)
    assert resp.status_code == 400
    assert resp.mimetype == "application/json"
    assert "error" in resp.get_json()


@pytest.mark.parametrize(
    "url",
    [
        # record exists, but in another task / project
        "/api/projects/proj-1/tasks/task-1/records/rec-1-2-0042/annotations",
        "/api/projects/proj-2/tasks/task-2/records/rec-1-2-0042/annotations",
        "/api/projects/proj-1/tasks/task-2/records/rec-1-2-9999/annotations",
        "/api/projects/proj-7/tasks/task-2/records/rec-1-2-0042/annotations",
        "/api/projects/proj-1/tasks/task-7/records/rec-1-2-0042/annotations",
    ],
)
def test_annotation_wrong_record_is_404(client: FlaskClient, url: str) -> None:
    resp = annotate(client, url, {"label": "positive"})
    assert resp.status_code == 404
    assert resp.mimetype == "application/json"


def test_annotation_body_too_large_is_413(client: FlaskClient) -> None:
    resp = annotate(client, ANNOTATE_URL, orjson.dumps({"label": "a", "pad": "x" * 100_000}))
    assert resp.status_code == 413
    assert resp.mimetype == "application/json"


def test_wrong_method_is_json_405(client: FlaskClient) -> None:
    resp = client.delete("/api/projects", headers=AUTH)
    assert resp.status_code == 405
    assert resp.mimetype == "application/json"
    assert "GET" in resp.headers["Allow"]


# -- streaming export ------------------------------------------------------


EXPORT_URL = "/api/projects/proj-1/tasks/task-1/export"


def test_export_streams_chunks(client: FlaskClient) -> None:
    resp = get(client, EXPORT_URL, query_string={"chunks": 3}, buffered=False)
    try:
        assert resp.status_code == 200
        assert resp.mimetype == "application/x-ndjson"
        assert resp.is_streamed
        chunks = list(resp.response)
    finally:
        resp.close()
    assert len(chunks) == 3
    assert chunks[0] == chunks[1] == chunks[2]
    lines = chunks[0].splitlines()
    assert len(lines) == 300
    records = [orjson.loads(line) for line in lines]
    assert [r["id"] for r in records] == [f"rec-1-1-{n:04d}" for n in range(300)]


def test_export_default_is_one_chunk_and_matches_listing(client: FlaskClient) -> None:
    lines = get(client, EXPORT_URL).data.splitlines()
    listed = get(client, "/api/projects/proj-1/tasks/task-1/records?limit=500").get_json()
    assert [orjson.loads(line) for line in lines] == listed["records"]


def test_export_delay_spaces_chunks(client: FlaskClient) -> None:
    resp = get(client, EXPORT_URL, query_string={"chunks": 3, "delay": "0.05"}, buffered=False)
    stream = iter(resp.response)
    started = time.perf_counter()
    next(stream)
    assert time.perf_counter() - started < 0.05  # first chunk is not delayed
    rest = list(stream)
    assert len(rest) == 2
    assert time.perf_counter() - started >= 0.1
    resp.close()


def test_export_can_be_abandoned_early(client: FlaskClient) -> None:
    # A client that disconnects only consumes what it read; the generator is
    # closed without producing the remaining (huge) tail.
    resp = get(client, EXPORT_URL, query_string={"chunks": 10_000, "delay": 1}, buffered=False)
    stream = iter(resp.response)
    assert next(stream)
    resp.close()
    with pytest.raises(StopIteration):
        next(stream)


@pytest.mark.parametrize(
    "query",
    [
        {"chunks": "0"},
        {"chunks": "-1"},
        {"chunks": "x"},
        {"delay": "-0.1"},
        {"delay": "nan"},
        {"delay": "inf"},
        {"delay": "soon"},
    ],
)
def test_export_bad_params_are_400(client: FlaskClient, query: dict) -> None:
    resp = get(client, EXPORT_URL, query_string=query)
    assert resp.status_code == 400
    assert resp.mimetype == "application/json"


# -- test-support endpoints ------------------------------------------------


def test_echo_shows_received_headers(client: FlaskClient) -> None:
    resp = client.get("/api/echo?b=2&a=1&a=3", headers={**AUTH, "X-Custom": "hello"})
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["headers"]["Authorization"] == f"Token {TOKEN}"
    assert body["headers"]["X-Custom"] == "hello"
    assert body["path"] == "/api/echo"
    assert body["query"] == "b=2&a=1&a=3"


def test_redirect_is_not_followed_by_the_service(client: FlaskClient) -> None:
    resp = get(client, "/api/redirect")
    assert resp.status_code == 302
    assert resp.headers["Location"] == "http://example.invalid/"


def test_garbage_claims_json_but_is_not(client: FlaskClient) -> None:
    resp = get(client, "/api/garbage")
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.data == b"not json{{"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(resp.data)
