"""`RequestContext.client_gone`: a closed client is seen, a live or pipelining one is not."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

from gateway.context import RequestContext


def context(sock: socket.socket | None) -> RequestContext:
    return RequestContext("rid", datetime.now(UTC), "GET", "/", "", None, None, client_socket=sock)


def test_client_gone_only_after_the_client_closed() -> None:
    server, client = socket.socketpair()
    with server:
        ctx = context(server)
        assert not ctx.client_gone()
        client.sendall(b"GET / HTTP/1.1\r\n")  # a pipelined request is not a goodbye
        assert not ctx.client_gone()
        assert server.recv(100)  # nothing was consumed by the check
        client.close()
        assert ctx.client_gone()


def test_no_socket_means_no_verdict() -> None:
    assert not context(None).client_gone()


def test_request_ids_are_unique_hex_and_ordered_by_time() -> None:
    import re
    import time

    from gateway.context import new_request_id

    first = [new_request_id() for _ in range(1000)]
    time.sleep(0.002)
    later = new_request_id()
    assert len(set(first)) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{24}", rid) for rid in [*first, later])
    # The time prefix orders ids of different milliseconds, whatever their random part.
    assert all(later > rid for rid in first)
