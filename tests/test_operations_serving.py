"""The gateway as production runs it (`gateway serve`): its logs are JSON lines that name
the request and never a secret, and a SIGHUP reload keeps serving under load."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import requests

from gateway.logs import logging_dict
from gateway.logs.redact import SECRETS
from tests.conftest import UPSTREAM_TOKEN, Gateway, Proc, dedicated_gateway

PAGE = "/api/projects/proj-1/tasks/task-1/records?limit=5"
FORGED_JWT = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImZvcmdlZCJ9."
    "eyJzdWIiOiJtYWxsb3J5IiwiYXVkIjoiaHR0cHM6Ly9nYXRld2F5LnRlc3QifQ."
    "Zm9yZ2VkLXNpZ25hdHVyZS1ieXRlcy1zZWNyZXQ"
)
OPAQUE = "opaque-access-token-value-9d8c7b6a5f4e"
COOKIE = "session=cookie-value-that-is-secret-1234"
CLIENT_SECRET = "gateway-secret"  # the lab IdP's client secret in the test config


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, idp: Proc, opaque_idp: Proc, upstream: Proc
) -> Iterator[Gateway]:
    with dedicated_gateway(
        tmp_path_factory,
        idp,
        opaque_idp,
        upstream,
        "served",
        serve=True,
        env={"GATEWAY_LOG_FORMAT": "json"},
    ) as gateway:
        yield gateway


def log_lines(gateway: Gateway) -> list[dict]:
    lines = []
    for line in gateway.proc.log().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))  # every JSON-looking line parses
    return lines


def test_log_lines_are_json_and_name_the_request(served: Gateway) -> None:
    response = served.get(PAGE, "alice")
    assert response.status_code == 200
    request_id = response.headers["X-Request-Id"]
    time.sleep(0.3)
    lines = log_lines(served)
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]) for line in lines
    )
    # Every line of the request carries its id (a key fetch it caused, say); one is the
    # access line.
    mine = [line for line in lines if line.get("request_id") == request_id]
    access = [line for line in mine if line["logger"] == "gateway.access"]
    assert len(access) == 1
    (line,) = access
    assert (line["subject"], line["vendor"], line["decision"], line["status"]) == (
        "acme-idp:alice",
        "acme",
        "allow",
        200,
    )
    assert line["route"] == "/api/projects/{project}/tasks/{task}/records"
    assert line["duration_ms"] > 0
    # The same id the access log keeps for the records released.
    assert served.audit_rows(request_id)
    # gunicorn's own lines are in the same shape.
    assert any(line["logger"] == "gunicorn.error" for line in lines)


def test_no_secret_reaches_the_logs(served: Gateway) -> None:
    token = served.token("alice")
    attempts = [
        {"Authorization": f"Bearer {token}", "Cookie": COOKIE},
        {"Authorization": f"Bearer {FORGED_JWT}"},
        {"Authorization": f"Bearer {token[:-8]}AAAAAAAA"},  # signature broken
        {"Authorization": f"Bearer {OPAQUE}"},
        {"Authorization": f"Basic {token}"},
        {"Authorization": f"Bearer {token}", "X-Forwarded-For": f"1.2.3.4, {OPAQUE}"},
    ]
    for headers in attempts:
        for path in (PAGE, "/api/projects/proj-3/tasks/task-1/records", "/no/such/route"):
            response = requests.get(served.url + path, headers=headers, timeout=15)
            challenge = response.headers.get("WWW-Authenticate", "")
            for secret in (token, FORGED_JWT, OPAQUE, token[:-8]):
                assert secret not in challenge
                assert secret not in response.text
    time.sleep(0.5)
    log = served.proc.log()
    assert "gateway.access" in log  # the requests were logged
    for secret in (token, token[:40], FORGED_JWT, FORGED_JWT[:30], OPAQUE, "cookie-value-that"):
        assert secret not in log, secret
    for secret in (UPSTREAM_TOKEN, CLIENT_SECRET):
        assert secret not in log, secret


def test_tracebacks_and_arguments_are_redacted_too() -> None:
    """The handler the gateway configures, fed the worst: a secret in an exception message,
    in a format argument, in a DSN and in a header dump."""
    SECRETS.add(["configured-upstream-credential"])
    stream = io.StringIO()
    config = logging_dict("json")
    config["handlers"]["stderr"]["stream"] = stream
    config["root"]["handlers"] = ["stderr"]
    logging.config.dictConfig(config)
    try:
        logger = logging.getLogger("gateway.test.redaction")
        try:
            raise ValueError(f"token rejected: Bearer {FORGED_JWT}")
        except ValueError:
            logger.exception("verification failed for %s", OPAQUE)
        logger.warning(
            "upstream said no to %s", {"Authorization": "Token configured-upstream-credential"}
        )
        logger.warning("database at postgresql://gateway:db-password-123@db.internal/gateway")
        logger.warning("client_secret=%s cookie: %s", CLIENT_SECRET + "-long", COOKIE)
    finally:
        logging.config.dictConfig(logging_dict("text"))
    output = stream.getvalue()
    lines = [json.loads(line) for line in output.splitlines()]
    assert len(lines) == 4
    assert "Traceback" in lines[0]["exc_info"]
    for secret in (FORGED_JWT, "configured-upstream-credential", "db-password-123", COOKIE):
        assert secret not in output, secret
    assert CLIENT_SECRET + "-long" not in output
    assert "[redacted]" in output


def test_a_reload_keeps_serving_under_load(served: Gateway) -> None:
    """SIGHUP: gunicorn re-reads its settings and starts new workers; the old ones finish
    what they hold. Sixteen clients (a connection per request) see no failure."""
    token = served.token("alice")
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                response = requests.get(
                    served.url + PAGE,
                    headers={"Authorization": f"Bearer {token}", "Connection": "close"},
                    timeout=15,
                )
                outcomes[str(response.status_code)] += 1
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
            except requests.RequestException as error:
                outcomes["error"] += 1
                failures.append(repr(error))

    booted_before = served.proc.log().count("Booting worker")
    threads = [threading.Thread(target=client) for _ in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    served_before_reload = sum(outcomes.values())
    os.kill(served.proc.process.pid, signal.SIGHUP)
    deadline = time.monotonic() + 20
    while served.proc.log().count("Booting worker") < booted_before + 2:
        assert time.monotonic() < deadline, "no new workers after SIGHUP"
        time.sleep(0.1)
    time.sleep(3)  # the new workers serve; the old ones have stopped
    stop.set()
    for thread in threads:
        thread.join(30)
    assert served_before_reload > 0
    assert not failures, (outcomes, failures[:5])
    assert outcomes["200"] > served_before_reload
    assert "Handling signal: hup" in served.proc.log()


def test_a_reload_with_a_broken_file_keeps_the_last_good_configuration(served: Gateway) -> None:
    good = served.config_path.read_text()
    booted = served.proc.log().count("Booting worker")
    served.config_path.write_text(good + "\n[server]\nthreads = 0\n")
    try:
        os.kill(served.proc.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while served.proc.log().count("Booting worker") < booted + 2:
            assert time.monotonic() < deadline, served.proc.log()[-2000:]
            time.sleep(0.1)
        assert "configuration not reloaded" in served.proc.log()
        assert "server.threads" in served.proc.log()
        time.sleep(1)
        # The new workers serve with the configuration the master kept.
        for _ in range(10):
            assert served.get(PAGE, "alice").status_code == 200
        assert served.get("/_gateway/ready").status_code == 200
    finally:
        served.config_path.write_text(good)
