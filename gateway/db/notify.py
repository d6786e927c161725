"""PostgreSQL LISTEN loop shared by the policy and lock propagation threads."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import Engine

log = logging.getLogger(__name__)


def listen_forever(
    engine: Engine,
    channel: str,
    on_change: Callable[[], None],
    stop: threading.Event,
    on_connected: Callable[[bool], None] | None = None,
) -> None:
    """Call `on_change` after each (re)connect and on every notification on `channel`.

    A change committed while the connection was down is caught by the call right after
    reconnecting; callers keep a poll running as well for the time in between.
    """
    import psycopg

    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    while not stop.is_set():
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as connection:
                connection.execute(f"LISTEN {channel}")
                if on_connected:
                    on_connected(True)
                on_change()
                while not stop.is_set():
                    for _ in connection.notifies(timeout=1.0, stop_after=1):
                        on_change()
        except Exception as error:  # reconnect; the caller's poll covers the gap
            log.warning("LISTEN %s connection lost: %s", channel, error)
        if on_connected:
            on_connected(False)
        stop.wait(1.0)
