"""The gateway in front of a real Label Studio, configured by config/profiles/label-studio.toml.

One Label Studio (installed into its own virtual environment, see
tests/support/label_studio.py) serves the module; the gateway runs on SQLite and on
PostgreSQL. Two projects with tasks, an annotation, a prediction and an uploaded image are
made through Label Studio's API as the lab's service account; `gateway catalogue sync`
then places every task, annotation, prediction and file, and the contractors' requests go
through the gateway only.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from tests.conftest import (
    ROOT,
    UPSTREAM_TOKEN,
    Database,
    Gateway,
    Proc,
    free_port,
    launch_gateway,
    new_database,
)
from tests.support.label_studio import LabelStudio, find_or_install, result, tiny_png

PROFILE = (ROOT / "config" / "profiles" / "label-studio.toml").read_text()
REQUIRED = os.environ.get("GATEWAY_TEST_REQUIRE_LABEL_STUDIO") == "1"


@dataclass
class Seeded:
    tool: LabelStudio
    a: str  # project ids, as the gateway names them
    b: str
    a_tasks: list[int]
    b_tasks: list[int]
    media_task: int
    media_path: str
    annotation: int
    prediction: int


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    binary, why = find_or_install()
    if binary is None:
        if REQUIRED:
            pytest.fail(f"Label Studio is required here but {why}")
        pytest.skip(f"Label Studio cannot be installed on this machine: {why}")
    # The gateway's test config sends `Token <UPSTREAM_TOKEN>`: the service account's token.
    tool = LabelStudio(binary, tmp_path_factory.mktemp("label-studio"), free_port(), UPSTREAM_TOKEN)
    tool.start()
    try:
        a = tool.create_project("Contracts A")
        b = tool.create_project("Contracts B")
        a_tasks = tool.import_tasks(a, ["a-one", "a-two", "a-three"])
        b_tasks = tool.import_tasks(b, ["b-one", "b-two"])
        media_task, media_path = tool.upload_file(a, "dot.png", tiny_png())
        annotation = tool.create_annotation(a_tasks[1])["id"]
        prediction = tool.create_prediction(a_tasks[0])["id"]
        yield Seeded(
            tool, str(a), str(b), a_tasks, b_tasks, media_task, media_path, annotation, prediction
        )
    finally:
        tool.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def ls_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    with new_database(request.param, tmp_path_factory) as db:
        yield db


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory,
    seeded: Seeded,
    ls_db: Database,
    idp: Proc,
    opaque_idp: Proc,
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("label-studio-gateway")
    upstream = Proc(seeded.tool.process, seeded.tool.url, tmp / "unused.log")  # type: ignore[arg-type]
    catalogue = f"""
[catalogue]
upstream = "label-studio"
projects = ["{seeded.a}", "{seeded.b}"]
poll_interval_seconds = 0.2
"""
    gateway = launch_gateway(tmp, ls_db, idp, opaque_idp, upstream, routes=catalogue + PROFILE)
    a, b = seeded.a, seeded.b
    a1, a2, a3 = (str(t) for t in seeded.a_tasks)
    policy = tmp / "ls-policy.csv"
    policy.write_text(
        f"p, role:annotator, {a}, *, read, allow\n"
        f"g, vendor:acme, role:annotator, {a}\n"
        f"p, acme-idp:alice, {a}, {a1}, annotate, allow\n"
        f"p, acme-idp:alice, {a}, {a2}, annotate, allow\n"
        f"p, lab-idp:carol, {b}, {seeded.b_tasks[0]}, read, allow\n"
    )
    gateway.cli("policy", "import", str(policy), "--reason", "label studio test", "--yes")
    del a3
    summary = json.loads(gateway.cli("catalogue", "sync", "--json").stdout)
    assert summary["status"] == "done", summary
    gateway.sync_summary = summary  # type: ignore[attr-defined]
    time.sleep(1.0)  # every worker sees the new policy and the catalogue's kinds
    yield gateway
    gateway.proc.stop()


def call(gw: Gateway, method: str, path: str, sub: str, **kwargs: object) -> requests.Response:
    headers = {**kwargs.pop("headers", {}), "Authorization": f"Bearer {gw.token(sub)}"}  # type: ignore[dict-item]
    response = requests.request(
        method,
        gw.url + path,
        headers=headers,
        timeout=30,
        **kwargs,  # type: ignore[arg-type]
    )
    # Nothing of the service account ever reaches a contractor.
    assert UPSTREAM_TOKEN.encode() not in response.content
    assert UPSTREAM_TOKEN not in str(response.headers)
    assert "set-cookie" not in {name.lower() for name in response.headers}
    return response


def rows(gw: Gateway, response: requests.Response) -> list:
    return gw.audit_rows(response.headers["X-Request-Id"])


def test_sync_places_tasks_annotations_predictions_and_files(gw: Gateway, seeded: Seeded) -> None:
    summary = gw.sync_summary  # type: ignore[attr-defined]
    # One Label Studio serves both backends' gateways: annotations made through the first
    # are in it when the second syncs.
    tasks = [*seeded.a_tasks, seeded.media_task, *seeded.b_tasks]
    annotations = sum(seeded.tool.annotation_count(task) for task in tasks)
    assert annotations >= 1
    assert summary["catalogue"] == {
        "task": 6,
        "annotation": annotations,
        "prediction": 1,
        "media": 1,
    }
    looked = gw.cli("catalogue", "lookup", "--kind", "media", seeded.media_path).stdout
    assert f"project {seeded.a}, task {seeded.media_task}" in looked


def test_reads_per_project_and_per_task(gw: Gateway, seeded: Seeded) -> None:
    listing = call(gw, "GET", f"/api/projects/{seeded.a}/tasks/?page=1&page_size=100", "alice")
    assert listing.status_code == 200, listing.text
    assert sorted(t["id"] for t in listing.json()) == sorted([*seeded.a_tasks, seeded.media_task])
    assert {(r.decision, r.project) for r in rows(gw, listing)} == {("allow", seeded.a)}
    # Project B is not alice's: the page comes back empty, each task logged as withheld.
    other = call(gw, "GET", f"/api/projects/{seeded.b}/tasks/", "alice")
    assert other.status_code == 200 and other.json() == []
    assert sorted(r.reason for r in rows(gw, other)) == ["record_policy_denied"] * 2
    # Carol holds one task of B: she sees it alone.
    b1, b2 = seeded.b_tasks
    mine = call(gw, "GET", f"/api/projects/{seeded.b}/tasks/", "carol")
    assert [t["id"] for t in mine.json()] == [b1]
    assert call(gw, "GET", f"/api/tasks/{b1}/", "carol").status_code == 200
    refused = call(gw, "GET", f"/api/tasks/{b2}/", "carol")
    assert refused.status_code == 403
    assert (rows(gw, refused)[0].project, rows(gw, refused)[0].task) == (seeded.b, str(b2))
    task = call(gw, "GET", f"/api/tasks/{seeded.a_tasks[1]}/", "alice")
    assert task.status_code == 200
    assert [a["id"] for a in task.json()["annotations"]] == [seeded.annotation]


def test_annotations_are_submitted_on_granted_tasks_only(gw: Gateway, seeded: Seeded) -> None:
    tool = seeded.tool
    a1, _, a3 = seeded.a_tasks
    before = {task: tool.annotation_count(task) for task in (a1, a3, seeded.b_tasks[0])}
    body = json.dumps({"result": result("yes")}).encode()
    made = call(
        gw,
        "POST",
        f"/api/tasks/{a1}/annotations/",
        "alice",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert made.status_code == 201, made.text
    annotation = made.json()["id"]
    written = [r for r in rows(gw, made) if r.reason == "written"]
    assert [(r.project, r.task, r.record_id, r.bytes) for r in written] == [
        (seeded.a, str(a1), str(a1), len(body))
    ]
    assert written[0].record_sha256 == hashlib.sha256(body).hexdigest()
    assert tool.annotation_count(a1) == before[a1] + 1
    # The answer was learnt: the new annotation can be read and updated through the gateway.
    time.sleep(0.3)
    patched = call(
        gw,
        "PATCH",
        f"/api/annotations/{annotation}/",
        "alice",
        data=json.dumps({"result": result("no")}),
        headers={"Content-Type": "application/json"},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["result"][0]["value"]["choices"] == ["no"]
    # Not granted (a3: read only; b1: another project): refused, nothing reaches the tool.
    for task in (a3, seeded.b_tasks[0]):
        refused = call(
            gw,
            "POST",
            f"/api/tasks/{task}/annotations/",
            "alice",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        assert refused.status_code == 403
        assert tool.annotation_count(task) == before[task]
    unknown = call(gw, "POST", "/api/tasks/999999/annotations/", "alice", data=body)
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_record"


def test_drafts_and_predictions(gw: Gateway, seeded: Seeded) -> None:
    a1, a2, _ = seeded.a_tasks
    draft = call(
        gw,
        "POST",
        f"/api/tasks/{a2}/drafts",
        "alice",
        data=json.dumps({"result": result("yes"), "lead_time": 1.0}),
        headers={"Content-Type": "application/json"},
    )
    assert draft.status_code == 201, draft.text
    time.sleep(0.3)
    assert call(gw, "GET", f"/api/drafts/{draft.json()['id']}/", "alice").status_code == 200
    predictions = call(gw, "GET", f"/api/predictions/?task={a1}", "bob")
    assert [p["id"] for p in predictions.json()] == [seeded.prediction]
    # Carol may not read project A: a prediction of it is withheld from her.
    withheld = call(gw, "GET", f"/api/predictions/?task={a1}", "carol")
    assert withheld.json() == []


def test_media_is_logged_as_a_record_with_its_hash(gw: Gateway, seeded: Seeded) -> None:
    response = call(gw, "GET", seeded.media_path, "bob")
    assert response.status_code == 200, response.text
    assert response.content == tiny_png()
    assert response.headers["Content-Type"] == "image/png"
    [row] = rows(gw, response)
    assert (row.record_id, row.project, row.task) == (
        seeded.media_path,
        seeded.a,
        str(seeded.media_task),
    )
    assert row.record_sha256 == hashlib.sha256(tiny_png()).hexdigest()
    # The same file through the other project's directory: not where the catalogue has it.
    wrong = seeded.media_path.replace(f"/upload/{seeded.a}/", f"/upload/{seeded.b}/")
    assert call(gw, "GET", wrong, "carol").status_code == 404
    assert call(gw, "GET", seeded.media_path, "carol").status_code == 403


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/projects/{a}/export?exportType=JSON"),
        ("GET", "/api/projects/{a}/exports/"),
        ("PATCH", "/api/projects/{a}/"),
        ("GET", "/api/projects/{a}/"),
        ("GET", "/api/projects/"),
        ("GET", "/api/projects/{a}/members/"),
        ("POST", "/api/projects/{a}/import"),
        ("GET", "/api/current-user/token"),
        ("GET", "/api/current-user/whoami"),
        ("GET", "/api/users/"),
        ("GET", "/api/token/"),
        ("DELETE", "/api/tasks/{task}/"),
        ("GET", "/api/tasks/"),
    ],
)
def test_everything_else_of_label_studio_is_refused(
    gw: Gateway, seeded: Seeded, method: str, path: str
) -> None:
    target = path.format(a=seeded.a, task=seeded.a_tasks[0])
    response = call(gw, method, target, "alice", json={"title": "renamed"})
    assert response.status_code in (403, 405), response.text
    _, data = seeded.tool.request("GET", f"/api/projects/{seeded.a}/")
    assert json.loads(data)["title"] == "Contracts A"


def test_a_vendor_lock_stops_reads_and_writes(gw: Gateway, seeded: Seeded) -> None:
    a1 = seeded.a_tasks[0]
    count = seeded.tool.annotation_count(a1)
    locked = json.loads(
        gw.cli("lock", "vendor", "acme", "--reason", "breach drill", "--json").stdout
    )
    try:
        time.sleep(1.0)
        read = call(gw, "GET", f"/api/tasks/{a1}/", "alice")
        assert read.status_code == 403 and read.json()["error"] == "locked"
        write = call(
            gw,
            "POST",
            f"/api/tasks/{a1}/annotations/",
            "alice",
            json={"result": result("yes")},
        )
        assert write.status_code == 403
        assert seeded.tool.annotation_count(a1) == count
        # Another vendor carries on.
        assert call(gw, "GET", f"/api/tasks/{seeded.b_tasks[0]}/", "carol").status_code == 200
    finally:
        gw.cli("unlock", str(locked["id"]), "--reason", "drill over")
    time.sleep(1.0)
    assert call(gw, "GET", f"/api/tasks/{a1}/", "alice").status_code == 200


def test_exposure_report_divides_by_the_catalogue(gw: Gateway, seeded: Seeded) -> None:
    report = json.loads(gw.cli("audit", "exposure", "--vendor", "acme", "--json").stdout)
    groups = [g for g in report["projects"] if g["project"] == seeded.a]
    assert groups
    for group in groups:
        # Records received out of the catalogue's records of the same project (and task).
        assert group["catalogue_records"] >= group["distinct_records"] > 0
        assert group["share"] == pytest.approx(
            group["distinct_records"] / group["catalogue_records"], abs=0.001
        )
