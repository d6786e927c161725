"""One trusted issuer: its discovery document and its signing keys, fetched lazily and cached.

Keys are refetched when a token names a `kid` we do not hold, but at most once per
`jwks_min_refresh_seconds`: a flood of tokens with made-up key ids costs the IdP one
request per interval, not one per token.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import orjson
import urllib3
from joserfc.jwk import KeySet

from gateway.config import IssuerConfig

log = logging.getLogger(__name__)


class IssuerUnavailable(Exception):
    pass


class Issuer:
    def __init__(self, config: IssuerConfig, http: urllib3.PoolManager) -> None:
        self.config = config
        self._http = http
        # Re-entrant: a key refresh may need to fetch the discovery document first.
        self._lock = threading.RLock()
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._kids: frozenset[str] = frozenset()
        self._last_key_fetch = float("-inf")

    @property
    def keys_loaded(self) -> bool:
        return self._keys is not None

    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            with self._lock:
                if self._metadata is None:
                    document = self._get_json(self.config.discovery)
                    if document.get("issuer", "").rstrip("/") != self.config.issuer:
                        raise IssuerUnavailable(
                            f"discovery document of {self.config.name} names issuer "
                            f"{document.get('issuer')!r}, expected {self.config.issuer!r}"
                        )
                    self._metadata = document
        return self._metadata

    def keys_for(self, kid: str | None) -> KeySet:
        """The key set, refetched (rate-limited) when `kid` is not in it."""
        keys = self._keys
        if keys is not None and (kid is None or kid in self._kids):
            return keys
        with self._lock:
            if self._keys is not None and (kid is None or kid in self._kids):
                return self._keys
            now = time.monotonic()
            if (
                self._keys is None
                or now - self._last_key_fetch >= self.config.jwks_min_refresh_seconds
            ):
                self._last_key_fetch = now
                self._load_keys()
            assert self._keys is not None
            return self._keys

    def _load_keys(self) -> None:
        jwks_uri = self.metadata().get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise IssuerUnavailable(f"issuer {self.config.name} publishes no jwks_uri")
        document = self._get_json(jwks_uri)
        try:
            keys = KeySet.import_key_set(document)
        except Exception as error:
            raise IssuerUnavailable(f"JWKS of {self.config.name} is malformed: {error}") from None
        self._keys = keys
        self._kids = frozenset(k.kid for k in keys.keys if k.kid)
        log.info("loaded %d keys of issuer %s", len(keys.keys), self.config.name)

    def _get_json(self, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(
                "GET", url, timeout=5.0, retries=False, redirect=False, **kwargs
            )
        except urllib3.exceptions.HTTPError as error:
            raise IssuerUnavailable(f"{url}: {type(error).__name__}") from None
        if response.status != 200:
            raise IssuerUnavailable(f"{url} answered {response.status}")
        try:
            document = orjson.loads(response.data)
        except orjson.JSONDecodeError:
            raise IssuerUnavailable(f"{url} did not return JSON") from None
        if not isinstance(document, dict):
            raise IssuerUnavailable(f"{url} did not return a JSON object")
        return document

    def post_form(
        self, url: str, fields: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, Any]:
        try:
            response = self._http.request(
                "POST",
                url,
                fields=fields,
                encode_multipart=False,
                headers=headers,
                timeout=5.0,
                retries=False,
                redirect=False,
            )
        except urllib3.exceptions.HTTPError as error:
            raise IssuerUnavailable(f"{url}: {type(error).__name__}") from None
        return response.status, _json_or_none(response.data)

    def get_with_bearer(self, url: str, token: str) -> tuple[int, Any]:
        try:
            response = self._http.request(
                "GET",
                url,
                headers={"Authorization": f"Bearer {token}"},
                timeout=5.0,
                retries=False,
                redirect=False,
            )
        except urllib3.exceptions.HTTPError as error:
            raise IssuerUnavailable(f"{url}: {type(error).__name__}") from None
        return response.status, _json_or_none(response.data)


def _json_or_none(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
