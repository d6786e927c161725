"""The console in a real browser: Debian's Chromium driven by Playwright, through the real
sign-in at the lab IdP (a real OIDC provider process), against the gateway under gunicorn.

Main flows (lock then see the exposure, the two-person lift), and the refusals: a
contractor, a missing CSRF token, return URLs leading outside, a session cut by a lock.
Screenshots go to $GATEWAY_CONSOLE_SCREENSHOTS when set (docs/console/ is made so).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.conftest import Gateway, Proc, dedicated_gateway
from tests.test_console_login import CONSOLE, CONSOLE_CONFIG

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REQUIRED = os.environ.get("GATEWAY_TEST_REQUIRE_BROWSER") == "1"

if not Path(CHROMIUM).exists():
    if REQUIRED:
        raise RuntimeError(f"GATEWAY_TEST_REQUIRE_BROWSER=1 but no Chromium at {CHROMIUM}")
    pytest.skip(
        "Chromium not installed (apt-get install chromium): console browser tests skipped",
        allow_module_level=True,
    )

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def console(
    tmp_path_factory: pytest.TempPathFactory, idp: Proc, opaque_idp: Proc, upstream: Proc
) -> Iterator[Gateway]:
    with dedicated_gateway(
        tmp_path_factory,
        idp,
        opaque_idp,
        upstream,
        "console-browser",
        extra=CONSOLE_CONFIG,
        two_person_lift='["vendor", "issuer"]',
    ) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshot(page: Page, name: str) -> None:
    folder = os.environ.get("GATEWAY_CONSOLE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def sign_in(page: Page, gw: Gateway, sub: str, path: str = CONSOLE + "/") -> None:
    """Open a console page; the IdP's login form asks who; back on the page."""
    page.goto(gw.url + path)
    page.fill("input[name=sub]", sub)
    page.click("button[type=submit]:has-text('Authorize')")


def test_admin_signs_in_and_sees_the_overview(page: Page, console: Gateway) -> None:
    console.get("/api/projects/proj-1/tasks/task-1/records", sub="alice")
    sign_in(page, console, "ann")
    expect(page.get_by_test_id("who")).to_contain_text("lab-idp:ann")
    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.get_by_test_id("vendor-row").first).to_contain_text("acme")
    screenshot(page, "overview")


def test_lock_then_exposure_then_two_person_lift(page: Page, console: Gateway) -> None:
    sign_in(page, console, "ann", CONSOLE + "/locks")
    page.select_option("[data-testid=lock-kind]", "vendor")
    page.fill("[data-testid=lock-target]", "acme")
    page.fill("[data-testid=lock-reason]", "vendor breach drill")
    page.click("[data-testid=lock-submit]")
    expect(page.get_by_test_id("lock-state")).to_have_text("active")
    expect(page.get_by_test_id("exposure")).to_contain_text("distinct records")
    screenshot(page, "lock-exposure")
    page.fill("[data-testid=lift-reason]", "drill over")
    page.click("[data-testid=lift-submit]")
    expect(page.get_by_test_id("message")).to_contain_text("awaits a second admin")
    expect(page.get_by_test_id("lock-state")).to_have_text("active")
    # The same admin is offered no approval.
    expect(page.get_by_test_id("approve")).to_have_count(0)
    lock_url = page.url
    page.click("text=Sign out")
    # A second admin approves.
    sign_in(page, console, "adam", CONSOLE + "/locks")
    expect(page.get_by_test_id("lift-request")).to_have_count(1)
    screenshot(page, "kill-switch")
    page.click("[data-testid=approve]")
    expect(page.get_by_test_id("lock-state")).to_have_text("lifted")
    assert page.url.endswith("/approve") or "/locks" in page.url or lock_url
    steps = console.db.rows(
        "SELECT actor, action FROM admin_events WHERE action LIKE 'lock.%' ORDER BY id"
    )
    assert [(s.actor, s.action) for s in steps][-4:] == [
        ("lab-idp:ann", "lock.create"),
        ("lab-idp:ann", "lock.lift_requested"),
        ("lab-idp:adam", "lock.lift_approved"),
        ("lab-idp:adam", "lock.lift"),
    ]


def test_contractor_is_refused(page: Page, console: Gateway) -> None:
    sign_in(page, console, "carol")
    expect(page.get_by_test_id("problem")).to_contain_text("admins and auditors")


def test_an_auditor_cannot_use_the_kill_switch(page: Page, console: Gateway) -> None:
    sign_in(page, console, "audrey", CONSOLE + "/locks")
    expect(page.get_by_test_id("problem")).to_contain_text("admin role")


def test_a_form_without_its_csrf_token_is_refused(page: Page, console: Gateway) -> None:
    sign_in(page, console, "ann", CONSOLE + "/locks")
    page.evaluate(
        "document.querySelectorAll('form.lockform input[name=csrf_token]').forEach(e => e.remove())"
    )
    page.fill("[data-testid=lock-target]", "acme")
    page.fill("[data-testid=lock-reason]", "forged")
    page.click("[data-testid=lock-submit]")
    expect(page.get_by_test_id("problem")).to_contain_text("CSRF")
    assert not console.db.rows("SELECT id FROM locks WHERE reason = 'forged'")


@pytest.mark.parametrize(
    "target",
    ["//evil.example/", "/\\evil.example/", "/%09/evil.example/", "https://lab.evil/",
     "https://evil@lab/"],
)  # fmt: skip
def test_sign_in_stays_in_the_console(page: Page, console: Gateway, target: str) -> None:
    page.goto(console.url + CONSOLE + "/login?next=" + target.replace("%", "%25"))
    page.fill("input[name=sub]", "ann")
    page.click("button[type=submit]:has-text('Authorize')")
    expect(page.locator("h1")).to_have_text("Overview")
    assert page.url == console.url + CONSOLE + "/"


def test_a_lock_on_the_signed_in_admin_ends_the_session(page: Page, console: Gateway) -> None:
    sign_in(page, console, "audrey")
    expect(page.get_by_test_id("who")).to_contain_text("lab-idp:audrey")
    made = console.cli("lock", "contractor", "lab-idp:audrey", "--reason", "drill", "--force",
                       "--json")  # fmt: skip
    lock_id: Any = json.loads(made.stdout)["id"]
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            page.reload()
            if page.get_by_test_id("ended").count():
                break
            time.sleep(0.2)
        expect(page.get_by_test_id("ended")).to_have_attribute("data-reason", "locked")
    finally:
        console.cli("unlock", str(lock_id), "--reason", "drill over")


def test_auditor_finds_a_records_provenance_and_the_exposure(page: Page, console: Gateway) -> None:
    served = console.get("/api/projects/proj-1/tasks/task-1/records", sub="alice")
    assert served.status_code == 200
    record_id = served.json()["records"][0]["id"]
    sign_in(page, console, "audrey", CONSOLE + "/audit")
    page.fill("[data-testid=filter-vendor]", "acme")
    page.click("[data-testid=search]")
    expect(page.get_by_test_id("event-row").first).to_contain_text("acme-idp:alice")
    screenshot(page, "audit-explorer")
    with page.expect_download() as exported:
        page.click("[data-testid=export-csv]")
    assert record_id in Path(exported.value.path()).read_text()
    page.goto(console.url + CONSOLE + "/audit?record=" + record_id)
    page.click(f"a:has-text('{record_id}')")
    expect(page.get_by_test_id("access-row").first).to_contain_text("acme-idp:alice")
    screenshot(page, "record-provenance")
    page.goto(console.url + CONSOLE + "/audit/exposure")
    page.fill("[data-testid=exposure-vendor]", "acme")
    page.click("[data-testid=exposure-submit]")
    expect(page.get_by_test_id("exposure-totals")).to_contain_text("distinct records")
    screenshot(page, "exposure")
    with page.expect_download() as download:
        page.click("[data-testid=manifest]")
    body = Path(download.value.path()).read_text()
    assert record_id in body
    reads = console.db.rows(
        "SELECT action FROM admin_events WHERE actor = 'lab-idp:audrey' AND action LIKE 'audit.%'"
    )
    assert {r.action for r in reads} >= {"audit.query", "audit.record", "audit.exposure"}


def test_auditor_triages_an_alert_and_an_admin_escalates_it(page: Page, console: Gateway) -> None:
    # An alert as `gateway anomalies scan` would raise it (the detectors have their own tests).
    now = "2026-12-04 00:00:00+00:00"
    with console.db.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO anomaly_alerts (dedup_key, detector, severity, contractor, issuer,"
                " subject, vendor, window_start, window_end, detected_at, score, explanation,"
                " evidence, status, notes, created_at, updated_at, last_seen_at) VALUES"
                " ('console-test', 'volume_spike', 'high', 'acme-idp:bob', 'acme-idp', 'bob',"
                " 'acme', :now, :now, :now, 9.5, 'bob read 10x his usual hour',"
                " :evidence, 'open', '', :now, :now, :now)"
            ),
            {"now": now, "evidence": json.dumps({"query": {"contractor": "acme-idp:bob"}})},
        )
    sign_in(page, console, "audrey", CONSOLE + "/alerts")
    expect(page.get_by_test_id("alert-row").first).to_contain_text("volume_spike")
    screenshot(page, "alerts")
    page.click("[data-testid=alert-row] a")
    page.select_option("[data-testid=triage-status]", "acknowledged")
    page.fill("[data-testid=triage-assignee]", "audrey")
    page.click("[data-testid=triage-submit]")
    expect(page.get_by_test_id("alert-status")).to_have_text("acknowledged")
    expect(page.get_by_test_id("evidence-link")).to_have_attribute(
        "href", CONSOLE + "/audit?contractor=acme-idp:bob"
    )
    # An auditor is offered no escalation; an admin locks bob from the alert.
    expect(page.get_by_test_id("escalate-submit")).to_have_count(0)
    alert_url = page.url
    page.click("text=Sign out")
    sign_in(page, console, "ann", alert_url.removeprefix(console.url))
    page.fill("[data-testid=escalate-reason]", "volume spike confirmed")
    page.click("[data-testid=escalate-submit]")
    expect(page.get_by_test_id("lock-state")).to_have_text("active")
    locks = console.db.rows(
        "SELECT id, actor FROM locks WHERE target = 'acme-idp:bob' AND lifted_at IS NULL"
    )
    assert [lock.actor for lock in locks] == ["lab-idp:ann"]
    console.cli("unlock", str(locks[0].id), "--reason", "test over")


def test_a_combined_alert_shows_its_signals_and_a_vendor_alert_locks_only_the_vendor(
    page: Page, console: Gateway
) -> None:
    # Findings as the detectors raise them on the weak-signal scenarios, stored as a scan does.
    from gateway.anomaly.store import upsert_findings
    from tests.test_anomaly_signals import ATTACK_DAY, SCORED_FROM, TEAM, _trickle, run, team

    people = team()
    people[1].extra[ATTACK_DAY] = [_trickle(9, spread=True)]
    for person in people[1:TEAM]:
        person.volume = dict.fromkeys(range(SCORED_FROM, 28), 1.3)
    findings = run(people)
    kinds = {f.detector for f in findings}
    assert {"combined", "vendor_rise"} <= kinds, findings
    upsert_findings(console.db.engine, findings)
    sign_in(page, console, "audrey", CONSOLE + "/alerts?detector=combined")
    page.click("[data-testid=alert-row] a")
    signals = page.get_by_test_id("alert-signals")
    expect(signals).to_contain_text("refusals")
    expect(signals).to_contain_text("refused requests at 9 places")
    screenshot(page, "alert-signals")
    page.goto(console.url + CONSOLE + "/alerts?detector=vendor_rise")
    page.click("[data-testid=alert-row] a")
    expect(page.get_by_test_id("alert-vendor-days")).to_contain_text("CUSUM")
    # An admin may escalate it: to a vendor lock only (a vendor is no contractor).
    alert_url = page.url
    page.click("text=Sign out")
    sign_in(page, console, "ann", alert_url.removeprefix(console.url))
    options = page.locator("select[name=kind] option")
    expect(options).to_have_count(1)
    expect(options).to_have_attribute("value", "vendor")


def test_grant_with_preview_then_explain_then_history(page: Page, console: Gateway) -> None:
    sign_in(page, console, "ann", CONSOLE + "/access")
    before = int(page.get_by_test_id("policy-version").inner_text())
    page.fill("[data-testid=change-sub]", "acme-idp:bob")
    page.fill("[data-testid=change-project]", "proj-2")
    page.select_option("[data-testid=change-action]", "read")
    page.fill("[data-testid=change-reason]", "bob joins proj-2")
    page.click("[data-testid=preview]")
    expect(page.get_by_test_id("change")).to_contain_text("Preview: nothing stored yet")
    expect(page.get_by_test_id("diff")).to_contain_text("+ p, acme-idp:bob, proj-2, *, read, allow")
    expect(page.get_by_test_id("change")).to_contain_text("Projects touched: proj-2")
    assert int(page.get_by_test_id("policy-version").inner_text()) == before
    screenshot(page, "access-preview")
    page.click("[data-testid=commit]")
    expect(page.get_by_test_id("change")).to_contain_text(f"Stored as policy version {before + 1}")
    page.goto(console.url + CONSOLE + "/access/explain")
    page.fill("[data-testid=explain-sub]", "acme-idp:bob")
    page.fill("[data-testid=explain-project]", "proj-2")
    page.select_option("[data-testid=explain-action]", "read")
    page.click("[data-testid=explain-submit]")
    expect(page.get_by_test_id("decision")).to_contain_text("allow")
    screenshot(page, "explain")
    page.goto(console.url + CONSOLE + "/access/history")
    expect(page.get_by_test_id("version-row").first).to_contain_text("bob joins proj-2")
    events = console.db.rows(
        "SELECT actor FROM admin_events WHERE action = 'policy.grant' ORDER BY id DESC LIMIT 1"
    )
    assert events[0].actor == "lab-idp:ann"


def test_a_stale_preview_is_refused_at_commit(page: Page, console: Gateway) -> None:
    sign_in(page, console, "ann", CONSOLE + "/access")
    page.fill("[data-testid=change-sub]", "acme-idp:bob")
    page.fill("[data-testid=change-project]", "proj-3")
    page.select_option("[data-testid=change-action]", "read")
    page.fill("[data-testid=change-reason]", "raced")
    page.click("[data-testid=preview]")
    # Someone else changes the policy between preview and commit.
    console.cli("policy", "grant", "--sub", "acme-idp:alice", "--project", "proj-3",
                "--action", "read", "--reason", "meanwhile", "--actor", "other")  # fmt: skip
    page.click("[data-testid=commit]")
    expect(page.get_by_test_id("problem")).to_contain_text("the policy changed")
    assert not console.db.rows(
        "SELECT id FROM admin_events WHERE reason = 'raced' AND action = 'policy.grant'"
    )


def test_role_definition_is_previewed_then_stored(page: Page, console: Gateway) -> None:
    sign_in(page, console, "ann", CONSOLE + "/access")
    page.locator("form:has([data-testid=role-name]) input[name=project]").fill("proj-2")
    page.fill("[data-testid=role-name]", "reviewer")
    page.fill("[data-testid=role-actions]", "read,review")
    page.locator("form:has([data-testid=role-name]) input[name=reason]").fill("reviewers")
    page.locator("form:has([data-testid=role-name]) button").click()
    expect(page.get_by_test_id("diff")).to_contain_text(
        "+ p, role:reviewer, proj-2, *, review, allow"
    )
    page.click("[data-testid=commit]")
    expect(page.get_by_test_id("change")).to_contain_text("Stored as policy version")
