"""Continuous mode end to end: a canary record fetched through the real gateway is withheld
and alerts at once; a `gateway anomalies watch` process beside it attaches the access row
to that same alert (the auditor sees it over HTTP), later rounds do not duplicate it, and
SIGTERM stops the watcher cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import requests

from tests.conftest import GATEWAY_BIN, ROOT, UPSTREAM_TOKEN, Gateway

PAGE = "/api/projects/proj-1/tasks/task-1/records?offset=120&limit=3"


def canary_alerts(gateway: Gateway, record_id: str) -> list[dict[str, Any]]:
    listed = requests.get(
        gateway.url + "/_gateway/audit/alerts",
        params={"detector": "canary_touch", "limit": "200"},
        headers={"Authorization": f"Bearer {gateway.token('audrey')}"},
        timeout=15,
    )
    assert listed.status_code == 200, listed.text
    return [a for a in listed.json()["alerts"] if record_id in a["explanation"]]


def test_watch_raises_a_canary_alert_seen_over_the_api(gateway: Gateway) -> None:
    first = gateway.get(PAGE, "alice")
    assert first.status_code == 200, first.text
    record_id = first.json()["records"][-1]["id"]
    gateway.cli("anomalies", "canary", "add", record_id, "--reason", "watch test bait")
    watcher = subprocess.Popen(
        [GATEWAY_BIN, "anomalies", "watch", "--interval", "1"],
        cwd=ROOT,
        env={
            **os.environ,
            "GATEWAY_CONFIG": str(gateway.config_path),
            "UPSTREAM_TOKEN": UPSTREAM_TOKEN,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.6)  # every worker re-reads its canaries within the 0.25 s poll
        fetched = gateway.get(PAGE, "alice")
        # Withheld, and alice locked, by the gateway itself ([anomaly] canary_* defaults).
        assert fetched.status_code == 403, fetched.text
        (alert,) = canary_alerts(gateway, record_id)
        assert alert["severity"] == "high" and alert["status"] == "open"
        assert alert["contractor"].endswith(":alice")
        assert alert["evidence"]["request_ids"] == [fetched.headers["X-Request-Id"]]
        # The watcher attaches the access row of that request to the same alert.
        rows = gateway.db.rows(
            "SELECT id, request_id FROM access_log WHERE record_id = :r ORDER BY id", r=record_id
        )
        assert rows[-1][1] == fetched.headers["X-Request-Id"]
        fetched_at = time.monotonic()
        while alert["evidence"]["rows"] != [rows[-1][0]]:
            assert watcher.poll() is None, watcher.communicate()
            assert time.monotonic() - fetched_at < 60, f"no evidence row within 60 s: {alert}"
            time.sleep(0.5)
            (alert,) = canary_alerts(gateway, record_id)
        # Later rounds update the same alert instead of adding another one.
        time.sleep(3)
        assert [a["id"] for a in canary_alerts(gateway, record_id)] == [alert["id"]]
    finally:
        watcher.send_signal(signal.SIGTERM)
        try:
            out, err = watcher.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            watcher.kill()
            raise
        gateway.cli(
            "anomalies", "canary", "remove", record_id, "--reason", "watch test done", check=False
        )
        for lock in gateway.db.rows(
            "SELECT id FROM locks WHERE actor = 'gateway:canary' AND lifted_at IS NULL"
        ):
            gateway.cli("unlock", str(lock[0]), "--reason", "watch test done", check=False)
        deadline = time.monotonic() + 5
        while gateway.get(PAGE, "alice").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert watcher.returncode == 0, err
    rounds = [line for line in out.splitlines() if " scan: " in line]
    assert len(rounds) >= 2, out
    assert "scan failed" not in err, err
