"""Unit tests of the record catalogue: config keys, the worker cache, paging, import lines."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pytest

from gateway.catalogue.config import parse_catalogue_table
from gateway.catalogue.store import CatalogueStore, Placement
from gateway.catalogue.sync import CatalogueError, _import_rows, _Listing
from gateway.catalogue.view import CatalogueUnavailable, CatalogueView
from gateway.config import ConfigError, parse_config
from gateway.db.migrate import upgrade
from gateway.db.session import make_engine
from gateway.route_config import parse_route

BASE = {"path": "/api/tasks/{record}/annotations", "methods": ["POST"], "action": "annotate"}


def route(**extra: Any) -> Any:
    return parse_route({**BASE, **extra}, "routes[0]")


# --- route keys ---------------------------------------------------------------------------


def test_a_write_addressed_by_a_record_may_take_its_project_from_the_catalogue() -> None:
    parsed = route(project_from="catalogue", task_from="catalogue", path_record_kind="task")
    assert (parsed.project_from, parsed.task_from, parsed.path_record_kind) == (
        "catalogue",
        "catalogue",
        "task",
    )


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({}, "path"),  # no project from anywhere
        ({"project_from": "catalog"}, "project_from"),
        ({"project_from": "catalogue", "project": "p"}, "project"),
        ({"path": "/api/tasks/x", "project_from": "catalogue"}, "project_from"),
        ({"path": "/api/{project}/{record}", "project_from": "catalogue"}, "project_from"),
        ({"project_from": "catalogue", "unknown_records": "maybe"}, "unknown_records"),
        ({"project_from": "catalogue", "catalogue": "sometimes"}, "catalogue"),
        ({"project_from": "catalogue", "catalogue_kind": "Task!"}, "catalogue_kind"),
        ({"project_from": "catalogue", "catalogue": "off"}, "project_from"),
        # Learning needs records in the body.
        ({"project_from": "catalogue", "catalogue": "learn"}, "unknown_records"),
        (
            {
                "project_from": "catalogue",
                "catalogue": "learn",
                "unknown_records": "refuse",
                "records": "@",
                "record_id": "id",
            },
            "unknown_records",
        ),
        ({"project_from": "catalogue", "media": True, "records": "@", "record_id": "id"}, "media"),
        ({"project_from": "catalogue", "media": "yes"}, "media"),
    ],
)
def test_contradictory_catalogue_keys_are_refused(extra: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        route(**extra)
    assert error.value.key == f"routes[0].{key}"


def test_learning_is_allowed_on_a_listing_of_a_known_project() -> None:
    parsed = parse_route(
        {
            "path": "/api/projects/{project}/tasks/",
            "action": "read",
            "records": "[*]",
            "record_id": "id",
            "catalogue": "learn",
        },
        "routes[0]",
    )
    assert parsed.unknown_records == "learn"


def test_a_body_that_is_a_list_of_records_is_filtered_in_place() -> None:
    from gateway.records import RecordBody, RecordSpec

    parsed = parse_route(
        {
            "path": "/api/projects/{project}/tasks/",
            "action": "read",
            "records": "[*]",
            "record_id": "id",
        },
        "routes[0]",
    )
    body = RecordBody.parse(RecordSpec.from_route(parsed), b'[{"id": 1}, {"id": 2}, {"id": 3}]')
    assert [r.record_id for r in body.records] == ["1", "2", "3"]
    assert body.render([True, False, True])[0] == b'[{"id":1},{"id":3}]'
    with pytest.raises(ConfigError) as error:
        parse_route(
            {
                "path": "/api/projects/{project}/tasks/",
                "action": "read",
                "records": "[*]",
                "record_id": "id",
                "envelope": ["count"],
            },
            "routes[0]",
        )
    assert error.value.key == "routes[0].envelope"


def test_a_media_route_replaces_upstream_errors_by_default() -> None:
    parsed = parse_route(
        {"path": "/data/upload/{project}/{record}", "action": "read", "media": True}, "r"
    )
    assert parsed.media and parsed.upstream_errors == "replace"


# --- the [catalogue] table ----------------------------------------------------------------

SOURCE = {
    "kind": "task",
    "path": "/api/projects/{project}/tasks/",
    "records": "@",
    "record_id": "id",
}


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"upstream": "Not A Name"}, "catalogue.upstream"),
        ({"cache_size": 0}, "catalogue.cache_size"),
        ({"poll_interval_seconds": -1}, "catalogue.poll_interval_seconds"),
        ({"projects": "p1"}, "catalogue.projects"),
        ({"colour": "blue"}, "catalogue.colour"),
        ({"sources": [{**SOURCE, "path": "/api/tasks/"}]}, "catalogue.sources[0].path"),
        ({"sources": [{**SOURCE, "records": "[["}]}, "catalogue.sources[0].records"),
        (
            {"sources": [{**SOURCE, "page_param": "page", "next": "next"}]},
            "catalogue.sources[0].page_param",
        ),
        ({"sources": [{**SOURCE, "offset_param": "offset"}]}, "catalogue.sources[0].limit_param"),
        ({"sources": [{**SOURCE, "page_size": 0}]}, "catalogue.sources[0].page_size"),
        ({"sources": [{**SOURCE, "query": {"a": [1]}}]}, "catalogue.sources[0].query.a"),
        ({"sources": [{**SOURCE, "kind": ""}]}, "catalogue.sources[0].kind"),
    ],
)
def test_bad_catalogue_tables_are_refused_with_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_catalogue_table(table)
    assert error.value.key == key


def listing(**source: Any) -> _Listing:
    table = parse_catalogue_table({"sources": [{**SOURCE, **source}]})
    config = parse_config(
        {
            "database": {"url": "sqlite://"},
            "issuers": [
                {"name": "i", "issuer": "https://idp.test", "audience": "a", "vendor": "v"}
            ],
            "upstream": {"url": "http://ls.test:8080/base", "headers": {"Authorization": "x"}},
            "routes": [],
        }
    )
    return _Listing(config, table.sources[0], "7")


def test_page_numbers_walk_until_a_short_page() -> None:
    walk = listing(page_param="page", page_size_param="page_size", page_size=2)
    cursor = walk.first_cursor()
    assert walk.target(cursor) == "/base/api/projects/7/tasks/?page=1&page_size=2"
    assert walk.next_cursor(cursor, [], 2) == {"page": 2}
    assert walk.next_cursor({"page": 2}, [], 1) is None
    assert walk.next_cursor({"page": 2}, [], 0) is None


def test_offsets_advance_by_what_was_listed() -> None:
    walk = listing(offset_param="offset", limit_param="limit", page_size=100)
    assert walk.target({"offset": 200}) == "/base/api/projects/7/tasks/?offset=200&limit=100"
    assert walk.next_cursor({"offset": 200}, {}, 100) == {"offset": 300}


def test_next_links_are_followed_only_on_the_upstream() -> None:
    walk = listing(records="results", next="next")
    body = {"next": "http://ls.test:8080/base/api/projects/7/tasks/?page=2", "results": [1]}
    assert walk.next_cursor({"url": None}, body, 1) == {"url": "/base/api/projects/7/tasks/?page=2"}
    assert walk.next_cursor({"url": None}, {"next": None}, 1) is None
    with pytest.raises(CatalogueError, match="another host"):
        walk.next_cursor({"url": None}, {"next": "http://evil.test/steal"}, 1)
    with pytest.raises(CatalogueError, match="relative"):
        walk.next_cursor({"url": None}, {"next": "tasks?page=2"}, 1)


def test_a_listed_record_without_an_id_stops_the_walk() -> None:
    walk = listing(record_task="id")
    assert walk.placements([{"id": 5}, {"id": "x"}]) == {
        "5": Placement("7", "5"),
        "x": Placement("7", "x"),
    }
    with pytest.raises(CatalogueError, match="without a usable id"):
        walk.placements([{"id": 5}, {"name": "no id"}])


# --- import lines -------------------------------------------------------------------------


def test_import_reads_csv_and_json_lines() -> None:
    csv_rows = list(
        _import_rows(io.BytesIO(b"record_id,project,task\nr1,p1,t1\nr2,p2,\n"), "a.csv", "record")
    )
    assert csv_rows == [("record", "r1", Placement("p1", "t1")), ("record", "r2", Placement("p2"))]
    jsonl = (
        b'{"record_id": 5, "project": "p", "kind": "task"}\n\n{"record_id": "m", "project": "p"}\n'
    )
    assert list(_import_rows(io.BytesIO(jsonl), "a.jsonl", "media")) == [
        ("task", "5", Placement("p")),
        ("media", "m", Placement("p")),
    ]


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"id,project\n1,p\n", "a.csv", "header"),
        (b"record_id,project\n1,\n", "a.csv", "line 2"),
        (b'{"record_id": 1}\n', "a.jsonl", "line 1"),
        (b"[1, 2]\n", "a.jsonl", "line 1"),
        (b"{not json\n", "a.jsonl", "line 1"),
        (b'{"record_id": 1, "project": "p", "kind": "Bad Kind"}\n', "a.jsonl", "kind"),
        (b"", "a.txt", ".csv"),
    ],
)
def test_bad_import_lines_are_named(content: bytes, name: str, message: str) -> None:
    with pytest.raises(CatalogueError, match=message):
        list(_import_rows(io.BytesIO(content), name, "record"))


# --- the worker's view --------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> CatalogueStore:
    url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    upgrade(url)
    return CatalogueStore(make_engine(url), "up")


def place(store: CatalogueStore, kind: str, placements: dict[str, Placement]) -> None:
    with store.db.begin() as connection:
        store.upsert(connection, kind, placements, source="import", run_id=None)


def test_the_view_caches_what_it_found_and_asks_the_database_for_the_rest(
    store: CatalogueStore,
) -> None:
    view = CatalogueView(store, cache_size=3)
    view.refresh()
    assert not view.holds("task")
    place(store, "task", {str(i): Placement("p1", str(i)) for i in range(10)})
    view.refresh()
    assert view.holds("task")
    assert view.place("task", ["1", "2", "nope"]) == {
        "1": Placement("p1", "1"),
        "2": Placement("p1", "2"),
    }
    assert (view.lookups, view.misses) == (3, 3)
    view.place("task", ["1", "2"])
    assert view.misses == 3  # both from memory
    # A record added since (by another worker's learning, a sync) is never taken as unknown.
    place(store, "task", {"new": Placement("p2")})
    assert view.place("task", ["new"]) == {"new": Placement("p2")}
    # Bounded: the least recently used go first.
    view.place("task", ["3", "4", "5"])
    assert view.cached() == 3


def test_a_move_reaches_the_view_at_its_next_poll(store: CatalogueStore) -> None:
    place(store, "task", {"r": Placement("p1")})
    view = CatalogueView(store, cache_size=100)
    view.refresh()
    assert view.place("task", ["r"]) == {"r": Placement("p1")}
    place(store, "task", {"r": Placement("p2")})  # a move bumps the kind's version
    assert view.place("task", ["r"]) == {"r": Placement("p1")}  # cached until the poll
    view.refresh()
    assert view.place("task", ["r"]) == {"r": Placement("p2")}


def test_a_view_that_never_read_the_catalogue_refuses_rather_than_guess(tmp_path: Path) -> None:
    broken = CatalogueStore(make_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}"), "up")
    view = CatalogueView(broken, cache_size=10)
    with pytest.raises(CatalogueUnavailable):
        view.holds("task")
    with pytest.raises(CatalogueUnavailable):
        view.place("task", ["r"])


def test_sixteen_threads_share_one_view(store: CatalogueStore) -> None:
    place(store, "task", {str(i): Placement(f"p{i % 4}") for i in range(400)})
    view = CatalogueView(store, cache_size=150)
    view.refresh()
    errors: list[str] = []

    def worker(offset: int) -> None:
        for round_ in range(20):
            ids = [str((offset * 7 + round_ * 13 + k) % 400) for k in range(25)]
            found = view.place("task", ids)
            for record_id in ids:
                if found.get(record_id) != Placement(f"p{int(record_id) % 4}"):
                    errors.append(record_id)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert view.cached() <= 150
