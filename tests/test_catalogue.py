"""The record catalogue in front of an upstream with the nested-path IDOR (docs/DESIGN.md §9).

The sample service runs with `--idor`: a record addressed under any project's path is
served, and records carry no project field. Without a catalogue the gateway can only trust
the path (the first test shows the hole, and the log placing the record wrongly); after
`gateway catalogue sync` the same request is refused before the upstream is asked and is
logged under the project the record really belongs to.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

from gateway.catalogue.store import CatalogueStore
from gateway.db.session import make_engine
from tests.conftest import (
    GATEWAY_BIN,
    UPSTREAM_TOKEN,
    Database,
    Gateway,
    Proc,
    free_port,
    launch_gateway,
    new_database,
    start,
)

OTHER = "rec-2-1-0005"  # proj-2's: bob and dave (vendor acme) hold proj-1 only
OWN = "rec-1-1-0005"
NESTED = "/api/projects/proj-1/tasks/task-1/records/{record}"

ROUTES = """
[[routes]]
methods = ["GET"]
path = "/api/projects/{project}/tasks/{task}/records"
action = "read"
records = "records"
record_id = "id"
envelope = ["project", "task", "offset", "limit", "total"]
query_params = ["offset", "limit"]

[[routes]]
methods = ["GET"]
path = "/api/projects/{project}/tasks/{task}/records/{record}"
action = "read"
records = "@"
record_id = "id"

[[routes]]
methods = ["POST"]
path = "/api/projects/{project}/tasks/{task}/records/{record}/annotations"
action = "annotate"

[[routes]]
methods = ["POST"]
path = "/api/records/{record}/annotations"
action = "annotate"
project_from = "catalogue"
task_from = "catalogue"

[[routes]]
methods = ["GET"]
path = "/api/records/{record}"
action = "read"
records = "@"
record_id = "id"
project_from = "catalogue"
task_from = "catalogue"

# A file: logged as one record, its path the id.
[[routes]]
methods = ["GET"]
path = "/api/projects/{project}/tasks/{task}/export"
action = "read"
media = true
catalogue_kind = "export"
query_params = ["chunks"]
"""

CATALOGUE = """
[catalogue]
upstream = "{name}"
projects = ["proj-1", "proj-2", "proj-3"]
poll_interval_seconds = 0.2

[[catalogue.sources]]
kind = "record"
path = "/api/projects/{{project}}/records"
records = "records"
record_id = "id"
record_task = "task"
offset_param = "offset"
limit_param = "limit"
page_size = 250
"""


@pytest.fixture(scope="module")
def idor_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    port = free_port()
    proc = start(
        [GATEWAY_BIN, "demo-upstream", "--idor", "--port", str(port), "--token", UPSTREAM_TOKEN],
        f"http://127.0.0.1:{port}",
        tmp_path_factory.mktemp("idor-upstream") / "up.log",
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def catalogue_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    with new_database(request.param, tmp_path_factory) as db:
        yield db


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory,
    catalogue_db: Database,
    idp: Proc,
    opaque_idp: Proc,
    idor_upstream: Proc,
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("catalogue-gateway")
    gateway = launch_gateway(
        tmp,
        catalogue_db,
        idp,
        opaque_idp,
        idor_upstream,
        routes=ROUTES,
        extra_routes=CATALOGUE.format(name="sample"),
    )
    yield gateway
    gateway.proc.stop()


def call(gw: Gateway, method: str, path: str, sub: str, **kwargs: object) -> requests.Response:
    return requests.request(
        method,
        gw.url + path,
        headers={"Authorization": f"Bearer {gw.token(sub)}"},
        timeout=15,
        **kwargs,  # type: ignore[arg-type]
    )


def rows(gw: Gateway, response: requests.Response) -> list:
    return gw.audit_rows(response.headers["X-Request-Id"])


def test_without_a_catalogue_the_path_is_trusted_and_the_log_is_wrong(gw: Gateway) -> None:
    """The hole the catalogue closes: run first, before any sync."""
    response = gw.get(NESTED.format(record=OTHER), "bob")
    assert response.status_code == 200, response.text
    assert response.json()["id"] == OTHER
    [row] = rows(gw, response)
    assert (row.decision, row.project, row.record_id) == ("allow", "proj-1", OTHER)


def test_sync_walks_every_project_page_by_page(gw: Gateway) -> None:
    result = gw.cli("catalogue", "sync", "--json")
    summary = __import__("json").loads(result.stdout)
    assert summary["status"] == "done"
    assert summary["seen"] == summary["added"] == 1800
    assert (summary["moved"], summary["gone"]) == (0, 0)
    # 600 records per project, 250 a page: three pages each, the last one short.
    assert summary["pages"] == 9
    assert summary["catalogue"] == {"record": 1800}
    again = __import__("json").loads(gw.cli("catalogue", "sync", "--json").stdout)
    assert (again["seen"], again["added"], again["moved"], again["gone"]) == (1800, 0, 0, 0)
    looked = gw.cli("catalogue", "lookup", OTHER, "nope").stdout
    assert f"{OTHER}: project proj-2, task task-1" in looked
    assert "nope: unknown" in looked


@pytest.fixture(scope="module")
def synced(gw: Gateway) -> Gateway:
    gw.cli("catalogue", "sync")
    time.sleep(0.5)  # every worker sees the new kind at its next poll
    return gw


def test_a_record_of_another_project_is_refused_before_the_upstream_and_logged_where_it_is(
    synced: Gateway,
) -> None:
    response = synced.get(NESTED.format(record=OTHER), "bob")
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert OTHER.encode() not in response.content
    [row] = rows(synced, response)
    assert (row.decision, row.reason, row.project, row.task, row.record_id) == (
        "deny",
        "catalogue_mismatch",
        "proj-2",
        "task-1",
        OTHER,
    )
    own = synced.get(NESTED.format(record=OWN), "bob")
    assert own.status_code == 200
    assert [(r.decision, r.project, r.task) for r in rows(synced, own)] == [
        ("allow", "proj-1", "task-1")
    ]
    # The right project but the wrong task in the path is a mismatch too.
    wrong_task = synced.get("/api/projects/proj-1/tasks/task-2/records/" + OWN, "alice")
    assert wrong_task.status_code == 403
    assert rows(synced, wrong_task)[0].reason == "catalogue_mismatch"


def test_a_record_the_catalogue_does_not_know_is_refused(synced: Gateway) -> None:
    unknown = "rec-1-1-0299"
    engine = make_engine(synced.db.url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text("DELETE FROM catalogue_records WHERE record_id = :r"), {"r": unknown}
            )
            CatalogueStore(engine, "sample").bump(connection, "record")
    finally:
        engine.dispose()
    time.sleep(0.6)
    response = synced.get(NESTED.format(record=unknown), "bob")
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_record"
    assert rows(synced, response)[0].reason == "catalogue_unknown"
    # In a listing it is withheld, the others released.
    page = synced.get("/api/projects/proj-1/tasks/task-1/records?offset=298&limit=2", "bob")
    assert page.status_code == 200
    assert [r["id"] for r in page.json()["records"]] == ["rec-1-1-0298"]
    assert sorted((r.record_id, r.decision, r.reason) for r in rows(synced, page)) == [
        ("rec-1-1-0298", "allow", "released"),
        (unknown, "filtered", "catalogue_unknown"),
    ]
    synced.cli("catalogue", "sync", "--project", "proj-1")


def test_a_listing_record_the_catalogue_places_elsewhere_is_withheld(
    synced: Gateway, tmp_path: Path
) -> None:
    moved = "rec-1-1-0010"
    listing = tmp_path / "moved.csv"
    listing.write_text(f"record_id,project,task\n{moved},proj-2,task-1\n")
    result = synced.cli("catalogue", "import", str(listing), "--json")
    assert '"moved": 1' in result.stdout
    time.sleep(0.6)  # the move bumps the kind's version: cached placements are dropped
    page = synced.get("/api/projects/proj-1/tasks/task-1/records?offset=9&limit=3", "bob")
    assert page.status_code == 200
    assert [r["id"] for r in page.json()["records"]] == ["rec-1-1-0009", "rec-1-1-0011"]
    withheld = [r for r in rows(synced, page) if r.decision == "filtered"]
    assert [(r.record_id, r.reason, r.project) for r in withheld] == [
        (moved, "catalogue_mismatch", "proj-2")
    ]
    # The next sync puts it back where the upstream lists it.
    summary = synced.cli("catalogue", "sync", "--project", "proj-1", "--json").stdout
    assert '"moved": 1' in summary


def test_a_write_addressed_by_a_record_takes_its_project_from_the_catalogue(
    synced: Gateway,
) -> None:
    body = b'{"label": "positive"}'
    first = call(synced, "POST", f"/api/records/{OWN}/annotations", "bob", data=body)
    assert first.status_code == 201, first.text
    [row] = rows(synced, first)
    assert (row.decision, row.reason, row.project, row.task, row.record_id) == (
        "allow",
        "written",
        "proj-1",
        "task-1",
        OWN,
    )
    assert row.record_sha256 == hashlib.sha256(body).hexdigest()
    assert row.bytes == len(body)
    refused = call(synced, "POST", f"/api/records/{OTHER}/annotations", "bob", data=body)
    assert refused.status_code == 403
    [denied] = rows(synced, refused)
    assert (denied.decision, denied.project, denied.record_id) == ("deny", "proj-2", OTHER)
    unknown = call(synced, "POST", "/api/records/rec-9-9-0001/annotations", "bob", data=body)
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "unknown_record"
    # Through the nested path of the wrong project: refused before the upstream.
    nested = call(synced, "POST", NESTED.format(record=OTHER) + "/annotations", "bob", data=body)
    assert nested.status_code == 403
    assert rows(synced, nested)[0].reason == "catalogue_mismatch"
    # Annotation ids count every annotation the upstream made: none was made in between.
    second = call(synced, "POST", f"/api/records/{OWN}/annotations", "bob", data=body)
    assert second.json()["annotation_id"] == first.json()["annotation_id"] + 1


def test_a_single_record_route_placed_by_the_catalogue_checks_policy_there(
    synced: Gateway,
) -> None:
    assert synced.get(f"/api/records/{OWN}", "bob").status_code == 200
    response = synced.get(f"/api/records/{OTHER}", "bob")
    assert response.status_code == 403
    [row] = rows(synced, response)
    assert (row.reason, row.project, row.task) == ("policy_denied", "proj-2", "task-1")


def test_sixteen_clients_at_once_get_consistent_answers(synced: Gateway) -> None:
    from concurrent.futures import ThreadPoolExecutor

    paths = [NESTED.format(record=OWN), NESTED.format(record=OTHER)] * 32

    def fetch(path: str) -> tuple[str, int]:
        return path, synced.get(path, "bob").status_code

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(fetch, paths))
    assert {(p, s) for p, s in answers} == {
        (NESTED.format(record=OWN), 200),
        (NESTED.format(record=OTHER), 403),
    }


@pytest.fixture(scope="module")
def learner(
    tmp_path_factory: pytest.TempPathFactory, gw: Gateway, idor_upstream: Proc
) -> Iterator[Gateway]:
    """A second gateway on the same database, keeping its own catalogue by learning."""
    routes = ROUTES.replace(
        'query_params = ["offset", "limit"]',
        'query_params = ["offset", "limit"]\ncatalogue = "learn"',
        1,
    )
    tmp = tmp_path_factory.mktemp("catalogue-learner")
    gateway = launch_gateway(
        tmp,
        gw.db,
        gw.idp,
        gw.opaque_idp,
        idor_upstream,
        routes=routes,
        extra_routes=CATALOGUE.format(name="learnt"),
    )
    gateway._tokens = gw._tokens
    yield gateway
    gateway.proc.stop()


def test_records_seen_on_a_trusted_listing_are_learnt(learner: Gateway) -> None:
    # Nothing learnt yet: the catalogue of this upstream is empty, so the path decides.
    assert learner.get(NESTED.format(record=OWN), "bob").status_code == 200
    page = learner.get("/api/projects/proj-1/tasks/task-1/records?offset=0&limit=20", "bob")
    assert page.status_code == 200
    time.sleep(0.5)
    looked = learner.cli("catalogue", "lookup", "rec-1-1-0003", OTHER).stdout
    # The CLI reads the gateway's config: the learnt catalogue is upstream "learnt".
    assert "rec-1-1-0003: project proj-1, task task-1" in looked
    assert f"{OTHER}: unknown" in looked
    # Now the catalogue exists: a record it does not know is refused on other routes...
    refused = learner.get(NESTED.format(record=OTHER), "bob")
    assert refused.status_code == 404
    # ...and one it learnt is served.
    assert learner.get(NESTED.format(record="rec-1-1-0003"), "bob").status_code == 200


def test_a_media_file_is_one_record_its_path_the_id_its_bytes_hashed(synced: Gateway) -> None:
    path = "/api/projects/proj-1/tasks/task-1/export"
    response = synced.get(path + "?chunks=7", "bob")
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    assert response.content.count(b"\n") == 300 * 7  # the sample repeats it per chunk
    [row] = rows(synced, response)
    assert (row.decision, row.reason, row.record_id, row.project, row.task) == (
        "allow",
        "released",
        path,
        "proj-1",
        "task-1",
    )
    assert row.record_sha256 == hashlib.sha256(response.content).hexdigest()
    assert row.bytes == len(response.content)
    assert synced.get(path.replace("task-1", "task-2"), "bob").status_code == 403


def test_an_interrupted_sync_resumes_after_its_last_committed_page(synced: Gateway) -> None:
    import json

    failed = synced.cli(
        "catalogue", "sync", "--project", "proj-2", "--project", "nope", "--json", check=False
    )
    assert failed.returncode == 1
    summary = json.loads(failed.stdout)
    assert summary["status"] == "failed"
    assert "nope" in summary["error"]
    assert summary["walks"] == {} or "record|nope" not in summary["walks"]
    # Rewind the stored progress of proj-2 to after its first page, as if it had stopped.
    engine = make_engine(synced.db.url)
    try:
        with engine.begin() as connection:
            run_id = summary["run"]
            progress = {
                "record|proj-2": {
                    "done": False,
                    "pages": 1,
                    "seen": 250,
                    "cursor": {"offset": 250},
                }
            }
            connection.execute(
                text("UPDATE catalogue_runs SET progress = :p WHERE id = :id"),
                {"p": json.dumps(progress), "id": run_id},
            )
    finally:
        engine.dispose()
    resumed = json.loads(
        synced.cli(
            "catalogue", "sync", "--project", "proj-2", "--project", "nope", "--json", check=False
        ).stdout
    )
    assert resumed["resumed"] is True and resumed["run"] == run_id
    # proj-2 went on from offset 250: two more pages (250 + 100 records), none walked twice.
    assert resumed["walks"]["record|proj-2"]["pages"] == 3
    assert resumed["walks"]["record|proj-2"]["seen"] == 600
    assert resumed["walks"]["record|proj-2"]["done"] is True
    status = synced.cli("catalogue", "status").stdout
    assert f"run {run_id} sync failed" in status
    assert synced.cli("catalogue", "sync", "--restart", "--json").returncode == 0


def test_exposure_reports_divide_by_the_catalogue(synced: Gateway) -> None:
    import json

    from gateway.lockout.store import exposure_summary

    page = synced.get("/api/projects/proj-1/tasks/task-1/records?offset=100&limit=30", "bob")
    assert page.status_code == 200
    report = json.loads(
        synced.cli("audit", "exposure", "--contractor", "acme-idp:bob", "--json").stdout
    )
    task = next(g for g in report["projects"] if (g["project"], g["task"]) == ("proj-1", "task-1"))
    assert task["catalogue_records"] == 300
    assert task["share"] == round(task["distinct_records"] / 300, 4)
    [project] = [p for p in report["by_project"] if p["project"] == "proj-1"]
    assert project["catalogue_records"] == 600
    assert project["share"] == round(project["distinct_records"] / 600, 4)
    assert project["first_access"] <= project["last_access"]
    received = sum(p["distinct_records"] for p in report["by_project"])
    total = sum(p["catalogue_records"] or 0 for p in report["by_project"])
    assert report["totals"]["catalogue_records"] == total
    assert report["totals"]["share"] == round(report["totals"]["distinct_records"] / total, 4)
    assert received >= report["totals"]["distinct_records"]
    engine = make_engine(synced.db.url)
    try:
        snapshot = exposure_summary(engine, "contractor", "acme-idp:bob", 30, "sample")
        unknown_upstream = exposure_summary(engine, "contractor", "acme-idp:bob", 30, "other")
    finally:
        engine.dispose()
    assert snapshot["catalogue_records"] >= 600
    assert 0 < snapshot["share"] <= 1
    # Without a catalogue for the upstream there is no denominator, and no error.
    assert (unknown_upstream["catalogue_records"], unknown_upstream["share"]) == (None, None)


def test_mismatches_raise_one_high_alert_per_contractor_and_day(synced: Gateway) -> None:
    import json

    probe = synced.get(NESTED.format(record="rec-3-2-0007"), "bob")
    assert probe.status_code == 403
    synced.cli("anomalies", "scan", "--since", "2h", "--quiet")
    synced.cli("anomalies", "scan", "--since", "2h", "--quiet")  # a rescan adds nothing
    alerts = json.loads(
        synced.cli("anomalies", "list", "--detector", "catalogue_mismatch", "--json").stdout
    )
    alerts = alerts["alerts"] if isinstance(alerts, dict) else alerts
    by_contractor = {alert["contractor"]: alert for alert in alerts}
    assert sorted(by_contractor) == ["acme-idp:alice", "acme-idp:bob"]
    bob = by_contractor["acme-idp:bob"]
    assert bob["severity"] == "high"
    assert "proj-2" in bob["explanation"] and "proj-3" in bob["explanation"]
    rows = synced.db.rows(
        "SELECT id FROM access_log WHERE subject = 'bob' AND reason = 'catalogue_mismatch'"
    )
    evidence = bob["evidence"]
    assert set(evidence["rows"]) <= {r.id for r in rows}
    assert len(evidence["rows"]) == min(20, len(rows))
    assert evidence["query"]["contractor"] == "acme-idp:bob"
