"""Lock, lift and alert notifications to webhooks, checked by a real HTTP receiver on a
local socket: signed JSON (HMAC-SHA256 over timestamp and body, verified here), retried
after a 500 with the same delivery id and never sent again once accepted, a Slack-format
message beside it, and a vendor lock that carries its exposure summary and the SHA-256
of a manifest the auditor can download and check."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from gateway.notify.config import WebhookConfig
from gateway.notify.messages import Notification
from gateway.notify.sender import Notifier
from gateway.notify.signing import SignatureInvalid, sign, verify
from tests.conftest import Gateway, Proc, dedicated_gateway, free_port

SECRET = "webhook-secret-for-the-tests-42"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP server that keeps every request and fails the first attempt of each
    delivery on `/flaky` with a 500."""

    port: int
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def of(self, path: str, event: str | None = None) -> list[Received]:
        with self.lock:
            return [
                r
                for r in self.received
                if r.path == path and (event is None or r.headers.get("x-gateway-event") == event)
            ]

    def wait_for(self, path: str, event: str, count: int, timeout: float = 20) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.of(path, event)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{path}: {len(self.of(path, event))} {event} of {count} arrived")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    state = Receiver(free_port())
    seen: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            delivery = self.headers.get("X-Gateway-Delivery", "")
            with state.lock:
                first = delivery not in seen
                seen.add(delivery)
                status = 500 if self.path == "/flaky" and first else 200
                headers = {k.lower(): v for k, v in self.headers.items()}
                state.received.append(Received(self.path, headers, body, status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", state.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()


@pytest.fixture(scope="module")
def notifying_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    idp: Proc,
    opaque_idp: Proc,
    upstream: Proc,
    receiver: Receiver,
) -> Iterator[Gateway]:
    extra = f"""
[[notify.webhooks]]
name = "soc"
url = "{receiver.url}/flaky"
secret = "{SECRET}"
min_severity = "high"
backoff_seconds = 0.2

[[notify.webhooks]]
name = "slack"
url = "{receiver.url}/slack"
format = "slack"
events = ["lock", "lift"]
"""
    with dedicated_gateway(
        tmp_path_factory, idp, opaque_idp, upstream, "notify", serve=True, extra=extra
    ) as gateway:
        yield gateway


def admin(gateway: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.token('ann')}"}


def check_signed(received: Received) -> None:
    verify(
        SECRET,
        received.headers.get("x-gateway-timestamp"),
        received.headers.get("x-gateway-signature"),
        received.body,
    )


def test_a_vendor_lock_is_announced_signed_retried_once_and_carries_its_exposure(
    notifying_gateway: Gateway, receiver: Receiver
) -> None:
    gateway = notifying_gateway
    for _ in range(3):
        assert gateway.get("/api/projects/proj-1/tasks/task-1/records?limit=5", "alice").ok
    made = requests.post(
        gateway.url + "/_gateway/admin/locks",
        json={"kind": "vendor", "target": "acme", "reason": "vendor breach drill"},
        headers=admin(gateway),
        timeout=30,
    )
    assert made.status_code == 201, made.text
    lock_id = made.json()["id"]

    attempts = receiver.wait_for("/flaky", "lock", 2)
    assert [a.answered for a in attempts] == [500, 200]
    # The same notification, signed anew each time, verified here.
    assert attempts[0].headers["x-gateway-delivery"] == attempts[1].headers["x-gateway-delivery"]
    for attempt in attempts:
        check_signed(attempt)
    body = attempts[1].json()
    assert body["event"] == "lock" and body["id"] == attempts[1].headers["x-gateway-delivery"]
    assert (body["lock"]["id"], body["lock"]["kind"], body["lock"]["target"]) == (
        lock_id,
        "vendor",
        "acme",
    )
    assert body["exposure"]["distinct_records"] >= 5
    assert body["exposure"]["contractors"] >= 1
    manifest = body["manifest"]
    assert manifest["records"] == body["exposure"]["distinct_records"]
    # The responder downloads the manifest the notification names: same bytes, same digest.
    auditor = {"Authorization": f"Bearer {gateway.token('audrey')}"}
    download = requests.get(gateway.url + manifest["download"], headers=auditor, timeout=30)
    assert download.status_code == 200, download.text
    assert hashlib.sha256(download.content).hexdigest() == manifest["sha256"]

    slack = receiver.wait_for("/slack", "lock", 1)
    assert "acme" in slack[0].json()["text"] and "vendor breach drill" in slack[0].json()["text"]
    assert manifest["sha256"] in json.dumps(slack[0].json()["blocks"])

    lifted = requests.post(
        gateway.url + f"/_gateway/admin/locks/{lock_id}/lift",
        json={"reason": "drill over"},
        headers=admin(gateway),
        timeout=30,
    )
    assert lifted.status_code == 200, lifted.text
    lift = receiver.wait_for("/flaky", "lift", 2)
    assert lift[1].json()["lock"]["lift_reason"] == "drill over"
    receiver.wait_for("/slack", "lift", 1)

    # Accepted deliveries are never sent again.
    time.sleep(1.5)
    for event in ("lock", "lift"):
        assert len(receiver.of("/flaky", event)) == 2
        assert len(receiver.of("/slack", event)) == 1


def test_a_lock_from_the_command_line_is_announced_before_it_returns(
    notifying_gateway: Gateway, receiver: Receiver
) -> None:
    before = len(receiver.of("/slack", "lock"))
    made = notifying_gateway.cli(
        "lock", "contractor", "acme-idp:bob", "--reason", "cli drill", "--json"
    )
    lock_id = json.loads(made.stdout)["id"]
    # No waiting: the command flushed its deliveries before exiting.
    announced = receiver.of("/slack", "lock")[before:]
    assert len(announced) == 1 and "cli drill" in announced[0].json()["text"]
    notifying_gateway.cli("unlock", str(lock_id), "--reason", "done")


def test_a_canary_alert_is_announced_by_the_worker_that_saw_it(
    notifying_gateway: Gateway, receiver: Receiver
) -> None:
    gateway = notifying_gateway
    page = gateway.get("/api/projects/proj-1/tasks/task-1/records?offset=100&limit=3", "bob")
    assert page.status_code == 200, page.text
    record_id = page.json()["records"][1]["id"]
    gateway.cli("anomalies", "canary", "add", record_id, "--reason", "notify test")
    time.sleep(0.6)
    tripped = gateway.get("/api/projects/proj-1/tasks/task-1/records?offset=100&limit=3", "bob")
    assert tripped.status_code == 403
    alerts = receiver.wait_for("/flaky", "alert", 2)
    body = alerts[-1].json()
    check_signed(alerts[-1])
    assert body["alert"]["detector"] == "canary_touch"
    assert body["alert"]["severity"] in ("high", "critical")
    # The canary's contractor lock was announced too (slack takes locks, not alerts).
    assert any("canary record" in r.json()["text"] for r in receiver.of("/slack", "lock"))
    assert not receiver.of("/slack", "alert")
    gateway.cli("anomalies", "canary", "remove", record_id, "--reason", "done")


# --- in-process: the sender's rules ----------------------------------------------------


def test_signatures_refuse_tampering_other_keys_and_replays() -> None:
    body = b'{"event":"lock"}'
    now = int(time.time())
    signature = sign(SECRET, now, body)
    verify(SECRET, str(now), signature, body)
    for args in (
        (SECRET, str(now), signature, body + b" "),
        (SECRET + "x", str(now), signature, body),
        (SECRET, str(now - 600), sign(SECRET, now - 600, body), body),
        (SECRET, None, signature, body),
        (SECRET, "soon", signature, body),
    ):
        with pytest.raises(SignatureInvalid):
            verify(*args)  # type: ignore[arg-type]


def test_a_dead_receiver_never_blocks_the_publisher() -> None:
    hook = WebhookConfig(
        name="dead",
        url=f"http://127.0.0.1:{free_port()}/hook",
        secret=SECRET,
        max_attempts=2,
        backoff_seconds=0.05,
        timeout_seconds=1.0,
    )
    notifier = Notifier((hook,), queue_size=50)
    started = time.monotonic()
    for number in range(200):  # more than the queue holds: the rest are dropped, not waited on
        notifier.publish(Notification("lock", {"lock": {"id": number}}))
    assert time.monotonic() - started < 0.5
    assert notifier.flush(30)
    notifier.close()


def test_alerts_below_a_webhooks_severity_are_not_sent(receiver: Receiver) -> None:
    hook = WebhookConfig(
        name="picky", url=f"{receiver.url}/picky", secret=SECRET, min_severity="critical"
    )
    notifier = Notifier((hook,))
    notifier.publish(Notification("alert", {"alert": {"id": 1}}, severity="high"))
    notifier.publish(Notification("alert", {"alert": {"id": 2}}, severity="critical"))
    assert notifier.flush(10)
    sent = receiver.of("/picky")
    assert [r.json()["alert"]["id"] for r in sent] == [2]
    notifier.close()
