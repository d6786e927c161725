"""Unit checks of the operations parts: bounded labels, scrape access, redaction patterns,
log format choice, and the config tables' errors."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from gateway.logs import chosen_format
from gateway.logs.redact import REDACTED, redact
from gateway.metrics import LabelLimit, reason_label
from gateway.metrics.config import MetricsConfig
from gateway.metrics.exposition import ScrapeAccess
from tests.test_unit_config import base_raw


def test_a_label_takes_at_most_its_limit_of_values() -> None:
    vendors = LabelLimit(3)
    assert [vendors(v) for v in ("a", "b", "c", "d", "a", "e")] == [
        "a",
        "b",
        "c",
        "other",
        "a",
        "other",
    ]
    assert vendors(None) == "none"


def test_reasons_lose_the_ids_they_carry() -> None:
    assert reason_label("locked:17") == "locked"
    assert reason_label("stream_broken:upstream_timeout") == "stream_broken"
    assert reason_label("policy_denied") == "policy_denied"
    assert reason_label(None) == "none"


def test_scrape_access_by_token_or_network() -> None:
    token = "a-scrape-token-of-some-length"
    by_token = ScrapeAccess(MetricsConfig(token=token))
    assert by_token.exposed
    assert by_token.allows(f"Bearer {token}", "203.0.113.9")
    assert by_token.allows(f"bearer  {token} ", None)
    assert not by_token.allows(f"Bearer {token}x", "127.0.0.1")
    assert not by_token.allows(f"Basic {token}", "127.0.0.1")
    assert not by_token.allows(None, "127.0.0.1")
    by_network = ScrapeAccess(MetricsConfig(networks=("10.0.0.0/8", "::1/128")))
    assert by_network.allows(None, "10.1.2.3") and by_network.allows(None, "::1")
    # Through a proxy, the peer is the proxy for everyone: never let in by network.
    assert not by_network.allows(None, "10.1.2.3", forwarded=True)
    assert not by_network.allows(None, "192.168.0.1")
    assert not by_network.allows(None, "not-an-address")
    assert not ScrapeAccess(MetricsConfig()).exposed


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer abcdefgh.ijklmnop-qrst", "abcdefgh.ijklmnop-qrst"),
        ("header: bearer c2VjcmV0LXZhbHVlLTEyMw==", "c2VjcmV0LXZhbHVlLTEyMw=="),
        ("basic dXNlcjpwYXNzd29yZA== was refused", "dXNlcjpwYXNzd29yZA=="),
        ("token eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln in the log", "eyJzdWIiOiJ4In0"),
        ("Cookie: gw_session=abc123def456; other=1", "abc123def456"),
        ("set-cookie=gw_session=abc123def456", "abc123def456"),
        ("client_secret=hunter2hunter2 and more", "hunter2hunter2"),
        ('{"password": "p4ssw0rd-value"}', "p4ssw0rd-value"),
        ("postgresql+psycopg://gateway:s3cr3t-pw@db:5432/gw", "s3cr3t-pw"),
        ("api_key: 0123456789abcdef", "0123456789abcdef"),
    ],
)
def test_credentials_are_redacted_by_their_shape(text: str, secret: str) -> None:
    cleaned = redact(text)
    assert secret not in cleaned
    assert REDACTED in cleaned


@pytest.mark.parametrize(
    "text",
    [
        "policy version 7 in force (6 rules)",
        "GET /api/projects/proj-1/tasks/task-1/records 200",
        "loaded 2 keys of issuer acme-idp",
        "the basic check passed",
    ],
)
def test_ordinary_lines_are_left_alone(text: str) -> None:
    assert redact(text) == text


def test_log_format_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_LOG_FORMAT", "text")
    assert chosen_format() == "text"
    assert chosen_format("json") == "json"
    monkeypatch.setenv("GATEWAY_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="json or text"):
        chosen_format()
    monkeypatch.delenv("GATEWAY_LOG_FORMAT")
    assert chosen_format() == "json"  # stderr is not a terminal under pytest


@pytest.mark.parametrize(
    ("tables", "key"),
    [
        ({"metrics": {"bind": "9464"}}, "metrics.bind"),
        ({"metrics": {"token": "short"}}, "metrics.token"),
        ({"metrics": {"networks": ["10.0.0.0/33"]}}, "metrics.networks"),
        ({"metrics": {"vendor_label_limit": 0}}, "metrics.vendor_label_limit"),
        ({"notify": {"webhooks": [{"name": "soc", "url": "https://soc.example/h"}]}}, "secret"),
        (
            {"notify": {"webhooks": [{"name": "s", "url": "ftp://x", "format": "slack"}]}},
            "url",
        ),
        (
            {
                "notify": {
                    "webhooks": [
                        {"name": "s", "url": "https://h.example", "format": "slack"},
                        {"name": "s", "url": "https://i.example", "format": "slack"},
                    ]
                }
            },
            "notify.webhooks",
        ),
        (
            {
                "notify": {
                    "webhooks": [
                        {"name": "s", "url": "https://h.example", "format": "slack", "events": []}
                    ]
                }
            },
            "events",
        ),
        ({"server": {"forwarded_allow_ips": "10.0.0.1"}}, "server.forwarded_allow_ips"),
    ],
)
def test_bad_operations_tables_name_the_key(tables: dict[str, Any], key: str) -> None:
    raw = {**base_raw(), **tables}
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert key in info.value.key or key in str(info.value)


def test_secrets_in_the_operations_tables_are_not_echoed() -> None:
    raw = {**base_raw(), "metrics": {"token": "tiny-secret"}}
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert "tiny-secret" not in str(info.value)


def test_client_chosen_fields_are_redacted_too() -> None:
    import logging

    from gateway.logs.redact import RedactingFilter

    record = logging.LogRecord("gateway.access", logging.INFO, __file__, 1, "GET %s", ("x",), None)
    record.path = "/api/Bearer abcdefghijklmnop/records"
    record.client_ip = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    assert RedactingFilter().filter(record)
    assert "abcdefghijklmnop" not in record.path
    assert "eyJzdWIiOiJ4In0" not in record.client_ip


# --- the IdP calls survive a kept-alive connection the IdP has closed -------------------


def _idp_answering_once_per_connection(answers: bool = True) -> Any:
    """A real HTTP server on a socket that answers the first request of a connection with
    keep-alive promised, and closes the connection on its second request without a word:
    what a client meets when the IdP's keep-alive runs out just as it reuses the
    connection. With `answers` false it never answers at all."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    body = b'{"sub": "carol", "vendor": "globex"}'
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                if conn.recv(65536) and answers:
                    conn.sendall(answer)
                    conn.recv(65536)  # the next request on this connection: hang up

    threading.Thread(target=serve, daemon=True).start()
    return listener


def test_an_idp_connection_closed_before_an_answer_is_tried_once_more() -> None:
    import urllib3

    from gateway.config import IssuerConfig
    from gateway.identity.issuer import Issuer, IssuerUnavailable

    listener = _idp_answering_once_per_connection()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/userinfo"
    config = IssuerConfig(name="lab", issuer="https://idp.example", audience="gw", vendor="lab")
    issuer = Issuer(config, urllib3.PoolManager())
    try:
        # Every call after the first meets its pooled connection hung up on, and must not
        # turn that into "issuer unavailable".
        for _ in range(5):
            assert issuer.get_with_bearer(url, "token")[0] == 200
    finally:
        listener.close()
    dead = _idp_answering_once_per_connection(answers=False)
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}/userinfo"
    try:
        with pytest.raises(IssuerUnavailable):
            issuer.get_with_bearer(dead_url, "token")
    finally:
        dead.close()
