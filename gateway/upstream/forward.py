"""One pooled connection set to the upstream; never retries, never follows redirects."""

from __future__ import annotations

from typing import Any

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, TimeoutError

from gateway.config import UpstreamConfig


class UpstreamError(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


class Upstream:
    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self._base_path = urllib3.util.parse_url(config.url).path or ""
        self._base_path = self._base_path.rstrip("/")
        self._pool = urllib3.connection_from_url(
            config.url,
            maxsize=config.pool_size,
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout),
        )

    def send(
        self, method: str, path: str, query: str, headers: dict[str, str], body: Any
    ) -> urllib3.BaseHTTPResponse:
        target = self._base_path + path + (f"?{query}" if query else "")
        try:
            return self._pool.urlopen(
                method,
                target,
                body=body,
                headers=headers,
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=False,
                assert_same_host=False,
                release_conn=True,
            )
        except NewConnectionError:
            # Checked first: urllib3 makes it a subclass of ConnectTimeoutError.
            raise UpstreamError(
                502, "upstream_unreachable", "the dataset service could not be reached"
            ) from None
        except TimeoutError:
            raise UpstreamError(
                504, "upstream_timeout", "the dataset service did not answer in time"
            ) from None
        except HTTPError:
            raise UpstreamError(
                502, "upstream_unreachable", "the dataset service could not be reached"
            ) from None
