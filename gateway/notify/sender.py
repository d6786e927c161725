"""Deliveries, off every path that matters: a lock is in force before its notification
is even queued, and a slow or failing receiver costs a background thread its time, never
a request, a scan or an admin's command.

One thread per process sends; retries wait in a schedule, so one receiver's back-off
does not hold back another's notifications. A delivery ends at its first 2xx (never
sent again), at a 4xx other than 408/429 (the receiver refuses it: retrying would not
help), or after `max_attempts`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import urllib3

from gateway.anomaly.detectors import severity_at_least
from gateway.metrics import NOTIFICATIONS
from gateway.notify.config import WebhookConfig
from gateway.notify.messages import Notification, json_body, slack_body
from gateway.notify.signing import sign

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 300.0
_RETRIED_STATUSES = frozenset({408, 425, 429})
USER_AGENT = "contractor-gateway-notifier/1"


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    webhook: WebhookConfig = field(compare=False)
    notification: Notification = field(compare=False)
    delivery_id: str = field(compare=False)
    attempt: int = field(default=0, compare=False)


class Notifier:
    """Queue notifications for the configured webhooks and deliver them in the background.

    `enrich(notification)` runs once per notification in the delivery thread before its
    first attempt (a vendor lock's exposure summary and manifest digest are computed
    there, not on the locking path).
    """

    def __init__(
        self,
        webhooks: tuple[WebhookConfig, ...],
        *,
        queue_size: int = 10_000,
        enrich: Callable[[Notification], None] | None = None,
    ) -> None:
        self.webhooks = webhooks
        self._enrich = enrich
        self._inbox: queue.Queue[Notification] = queue.Queue(maxsize=queue_size)
        self._schedule: list[_Delivery] = []
        self._seq = itertools.count()
        self._pools = {hook.name: _pool(hook) for hook in webhooks}
        self._busy = 0  # queued + scheduled + in flight
        self._idle = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, notification: Notification) -> None:
        """Queue for every webhook that wants it; never blocks, never raises."""
        if not any(_wants(hook, notification) for hook in self.webhooks):
            return
        self._start()
        with self._idle:
            self._busy += 1
        try:
            self._inbox.put_nowait(notification)
        except queue.Full:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()
            NOTIFICATIONS.labels(webhook="*", outcome="dropped").inc()
            log.error("notification queue full: %s notification dropped", notification.event)
            return
        self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Wait until every queued notification is delivered or given up; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 0.0) -> None:
        if timeout:
            self.flush(timeout)
        self._stop.set()
        self._wake.set()

    # --- the delivery thread ------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:
            with self._idle:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._take_new()
            now = time.monotonic()
            if self._schedule and self._schedule[0].due <= now:
                self._attempt(heapq.heappop(self._schedule))
                continue
            wait = self._schedule[0].due - now if self._schedule else None
            self._wake.wait(wait)
            self._wake.clear()

    def _take_new(self) -> None:
        while True:
            try:
                notification = self._inbox.get_nowait()
            except queue.Empty:
                return
            if self._enrich is not None:
                try:
                    self._enrich(notification)
                except Exception as error:  # sent without the extras, saying why
                    log.error("notification %s: enrichment failed: %s", notification.event, error)
                    notification.data["enrichment_error"] = type(error).__name__
            hooks = [hook for hook in self.webhooks if _wants(hook, notification)]
            with self._idle:
                self._busy += len(hooks) - 1
                if not hooks:
                    self._idle.notify_all()
            for hook in hooks:
                heapq.heappush(
                    self._schedule,
                    _Delivery(0.0, next(self._seq), hook, notification, uuid.uuid4().hex),
                )

    def _attempt(self, delivery: _Delivery) -> None:
        hook = delivery.webhook
        delivery.attempt += 1
        status: int | None = None
        try:
            body, headers = _request(hook, delivery)
            response = self._pools[hook.name].request(
                "POST",
                hook.url,
                body=body,
                headers=headers,
                timeout=urllib3.Timeout(total=hook.timeout_seconds),
                retries=False,
                redirect=False,
                preload_content=True,
            )
            status = response.status
            problem = None if 200 <= status < 300 else f"HTTP {status}"
        except urllib3.exceptions.HTTPError as error:
            problem = type(error).__name__
        except Exception as error:  # whatever it is, the delivery thread must live on
            log.exception("webhook %s: delivery failed", hook.name)
            problem = type(error).__name__
        if problem is None:
            NOTIFICATIONS.labels(webhook=hook.name, outcome="delivered").inc()
            self._done()
            return
        retryable = status is None or status >= 500 or status in _RETRIED_STATUSES
        if retryable and delivery.attempt < hook.max_attempts:
            delay = min(hook.backoff_seconds * 2 ** (delivery.attempt - 1), MAX_BACKOFF_SECONDS)
            delivery.due = time.monotonic() + delay * random.uniform(0.8, 1.2)
            heapq.heappush(self._schedule, delivery)
            NOTIFICATIONS.labels(webhook=hook.name, outcome="retried").inc()
            log.warning(
                "webhook %s: %s notification %s got %s; retry %d in %.1fs",
                hook.name,
                delivery.notification.event,
                delivery.delivery_id,
                problem,
                delivery.attempt,
                delay,
            )
            return
        NOTIFICATIONS.labels(webhook=hook.name, outcome="failed").inc()
        log.error(
            "webhook %s: %s notification %s not delivered after %d attempts (%s)",
            hook.name,
            delivery.notification.event,
            delivery.delivery_id,
            delivery.attempt,
            problem,
        )
        self._done()

    def _done(self) -> None:
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()


def _wants(hook: WebhookConfig, notification: Notification) -> bool:
    if notification.event not in hook.events:
        return False
    if notification.severity is None:
        return True
    return severity_at_least(notification.severity, hook.min_severity)


def _request(hook: WebhookConfig, delivery: _Delivery) -> tuple[bytes, dict[str, str]]:
    notification = delivery.notification
    if hook.format == "slack":
        payload: dict[str, Any] = slack_body(notification)
    else:
        payload = json_body(notification, delivery.delivery_id)
    body = orjson.dumps(payload)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Gateway-Event": notification.event,
        "X-Gateway-Delivery": delivery.delivery_id,
    }
    if hook.secret:
        timestamp = int(time.time())
        headers["X-Gateway-Timestamp"] = str(timestamp)
        headers["X-Gateway-Signature"] = sign(hook.secret, timestamp, body)
    return body, headers


def _pool(hook: WebhookConfig) -> urllib3.PoolManager:
    if hook.ca_file:
        return urllib3.PoolManager(num_pools=2, maxsize=1, ca_certs=str(hook.ca_file))
    return urllib3.PoolManager(num_pools=2, maxsize=1)
