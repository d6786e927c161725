"""Prometheus metrics of a gateway started as production starts it (`gateway serve`:
gunicorn with gateway/gunicorn.conf.py, two workers sharing counters through the
multiprocess directory): counts exact under concurrency, exposure only to the scraper,
bounded labels, and the Grafana dashboard and alert rules built on names that exist."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    GATEWAY_BIN,
    ROOT,
    UPSTREAM_TOKEN,
    Gateway,
    Proc,
    dedicated_gateway,
    free_port,
)

SCRAPE_TOKEN = "scrape-token-for-the-tests-7f3a9c"
PAGE = "/api/projects/proj-1/tasks/task-1/records?limit=10"
PAGE_ROUTE = "/api/projects/{project}/tasks/{task}/records"
REFUSED = "/api/projects/proj-3/tasks/task-1/records"


@pytest.fixture(scope="module")
def ops_gateway(
    tmp_path_factory: pytest.TempPathFactory, idp: Proc, opaque_idp: Proc, upstream: Proc
) -> Iterator[Gateway]:
    port = free_port()
    extra = f'[metrics]\ntoken = "{SCRAPE_TOKEN}"\nbind = "127.0.0.1:{port}"\n'
    with dedicated_gateway(
        tmp_path_factory, idp, opaque_idp, upstream, "ops-metrics", serve=True, extra=extra
    ) as gateway:
        gateway.metrics_url = f"http://127.0.0.1:{port}/metrics"  # type: ignore[attr-defined]
        yield gateway


def scrape(url: str, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = requests.get(url, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and all((k, v) in sample_labels for k, v in labels.items())
    )


def test_counts_are_exact_across_workers_under_concurrency(ops_gateway: Gateway) -> None:
    before = scrape(ops_gateway.metrics_url)  # type: ignore[attr-defined]
    alice = {"Authorization": f"Bearer {ops_gateway.token('alice')}"}
    plan = ["page"] * 48 + ["refused"] * 24 + ["anonymous"] * 24

    def call(kind: str) -> int:
        path = REFUSED if kind == "refused" else PAGE
        headers = {} if kind == "anonymous" else alice
        return requests.get(ops_gateway.url + path, headers=headers, timeout=15).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = Counter(zip(plan, pool.map(call, plan), strict=True))
    assert statuses == {("page", 200): 48, ("refused", 403): 24, ("anonymous", 401): 24}

    # The workers hand their request counts over once a second.
    deadline = time.monotonic() + 10
    while True:
        after = scrape(ops_gateway.metrics_url)  # type: ignore[attr-defined]
        done = total(after, "gateway_request_duration_seconds_count")
        if done - total(before, "gateway_request_duration_seconds_count") >= 96:
            break
        assert time.monotonic() < deadline, "request counts never arrived"
        time.sleep(0.2)
    time.sleep(1.2)  # and nothing more arrives: counted once
    after = scrape(ops_gateway.metrics_url)  # type: ignore[attr-defined]

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    # Both workers' counts, summed: nothing lost, nothing counted twice.
    assert delta("gateway_requests_total", decision="allow", route=PAGE_ROUTE) == 48
    assert delta("gateway_requests_total", decision="deny", reason="policy_denied") == 24
    assert delta("gateway_requests_total", decision="deny", route="none") == 24
    assert delta("gateway_requests_total", vendor="acme") == 72
    assert delta("gateway_records_total", outcome="released") == 480
    assert delta("gateway_request_duration_seconds_count") == 96
    assert delta("gateway_stage_duration_seconds_count", stage="identify") == 96
    assert delta("gateway_stage_duration_seconds_count", stage="upstream") == 48
    assert delta("gateway_stage_duration_seconds_count", stage="audit_commit") == 48
    # Every access row of those requests (480 records, 48 refusals) went through a commit.
    assert delta("gateway_audit_rows_total") >= 480 + 48
    assert delta("gateway_audit_commit_failures_total") == 0
    assert total(after, "gateway_policy_version") >= 1
    assert time.time() - total(after, "gateway_lock_state_refreshed_timestamp_seconds") < 30
    assert total(after, "gateway_jwks_refreshes_total", issuer="acme-idp", outcome="ok") >= 1


def test_metrics_only_for_the_scraper(ops_gateway: Gateway) -> None:
    url = ops_gateway.url + "/_gateway/metrics"
    anonymous = requests.get(url, timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "unauthorized"
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    # A contractor's token, even an admin's, is not the scrape token.
    for who in ("alice", "ann"):
        refused = requests.get(
            url, headers={"Authorization": f"Bearer {ops_gateway.token(who)}"}, timeout=10
        )
        assert refused.status_code == 403, who
        assert "gateway_requests_total" not in refused.text
    wrong = requests.get(url, headers={"Authorization": f"Bearer {SCRAPE_TOKEN}x"}, timeout=10)
    assert wrong.status_code == 403
    scraped = requests.get(url, headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"}, timeout=10)
    assert scraped.status_code == 200
    assert scraped.headers["Content-Type"].startswith("text/plain")
    assert "gateway_requests_total" in scraped.text
    openmetrics = requests.get(
        url,
        headers={
            "Authorization": f"Bearer {SCRAPE_TOKEN}",
            "Accept": "application/openmetrics-text; version=1.0.0",
        },
        timeout=10,
    )
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")


def test_a_gateway_without_a_scraper_serves_no_metrics(gateway: Gateway) -> None:
    response = gateway.get("/_gateway/metrics", "alice")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_labels_never_name_a_contractor_or_a_record(ops_gateway: Gateway) -> None:
    ops_gateway.get(PAGE, "alice")
    ops_gateway.get("/api/records/rec-2-2-0007", "alice")
    time.sleep(1.5)  # the workers' counts reach the shared files once a second
    text = requests.get(ops_gateway.metrics_url, timeout=10).text  # type: ignore[attr-defined]
    label_values = set(re.findall(r'="([^"]*)"', text))
    for forbidden in ("alice", "acme-idp:alice", "rec-2-2-0007", "proj-1", "task-1"):
        assert not any(forbidden in value for value in label_values), forbidden
    assert "acme" in label_values  # vendors are labels (capped per worker)


# --- the dashboard and the alert rules ------------------------------------------------


def defined_series() -> set[str]:
    """Every series name the gateway's metric families can expose."""
    from prometheus_client import REGISTRY

    import gateway.metrics  # noqa: F401 - defines the families in the default registry

    names = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for family in REGISTRY.collect():
        if family.name.startswith("gateway_"):
            names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def used_series(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in re.findall(r"\bgateway_[a-z0-9_]+", expr)}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "gateway.json").read_text())
    panels = dashboard["panels"]
    assert len(panels) >= 10
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def alert_rules() -> list[dict]:
    document = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_the_dashboard_uses_only_metrics_that_exist(ops_gateway: Gateway) -> None:
    used = used_series(dashboard_expressions())
    defined = defined_series()
    assert used and used <= defined, sorted(used - defined)
    # And the request path's are really exposed by a running gateway.
    ops_gateway.get(PAGE, "alice")
    time.sleep(1.5)
    exposed = {name for name, _ in scrape(ops_gateway.metrics_url)}  # type: ignore[attr-defined]
    request_path = {name for name in used if not name.startswith("gateway_anomaly_")}
    optional = {"gateway_upstream_errors_total"}  # only once an upstream has failed
    assert request_path - optional <= exposed, sorted(request_path - optional - exposed)


def test_the_alert_rules_use_only_metrics_that_exist() -> None:
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    for needed in (
        "GatewayAuditCommitFailures",
        "GatewayLockStateStale",
        "GatewayJwksRefreshFailing",
        "GatewayErrorRatioHigh",
    ):
        assert needed in names
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    used = used_series([rule["expr"] for rule in rules])
    assert used <= defined_series(), sorted(used - defined_series())


def test_the_check_can_fail() -> None:
    assert used_series(["rate(gateway_no_such_thing_total[5m])"]) - defined_series()


# --- the anomaly watch process ----------------------------------------------------------


def test_the_watch_process_serves_its_own_metrics(ops_gateway: Gateway, tmp_path: Path) -> None:
    port = free_port()
    log = open(tmp_path / "watch.log", "wb")  # noqa: SIM115 - closed below
    watch = subprocess.Popen(
        [
            GATEWAY_BIN,
            "anomalies",
            "watch",
            "--interval",
            "1",
            "--metrics-bind",
            f"127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "GATEWAY_CONFIG": str(ops_gateway.config_path),
            "UPSTREAM_TOKEN": UPSTREAM_TOKEN,
        },
    )
    try:
        deadline = time.monotonic() + 30
        rounds = 0.0
        while time.monotonic() < deadline and rounds < 1:
            time.sleep(0.5)
            try:
                samples = scrape(f"http://127.0.0.1:{port}/metrics")
            except requests.RequestException:
                continue
            rounds = total(samples, "gateway_anomaly_round_duration_seconds_count")
        assert rounds >= 1, (tmp_path / "watch.log").read_text()
    finally:
        watch.send_signal(signal.SIGTERM)
        watch.wait(20)
        log.close()
