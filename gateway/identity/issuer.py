"""One trusted issuer: its discovery document and its signing keys, fetched lazily and cached.

Both are refetched when their time is up: `jwks_ttl_seconds`, shortened by the IdP's own
`Cache-Control: max-age` (never below `jwks_min_refresh_seconds`), so a key the IdP
withdraws stops validating within that time. Keys are also refetched when a token names a
`kid` we do not hold, at most once per `jwks_min_refresh_seconds`: a flood of tokens with
made-up key ids costs the IdP one request per interval, not one per token.

When a refresh fails, the keys already held keep serving for `jwks_stale_seconds` past
their time (an IdP outage should not lock every contractor out at once); past that,
tokens of the issuer are refused as unverifiable (503).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

import orjson
import urllib3
from joserfc.jwk import KeySet

from gateway import metrics
from gateway.config import IssuerConfig

log = logging.getLogger(__name__)


_MAX_AGE = re.compile(r"(?:^|,)\s*(?:s-)?max-age\s*=\s*\"?(\d+)", re.IGNORECASE)


class IssuerUnavailable(Exception):
    pass


def cache_lifetime(cache_control: str | None, ttl: float, floor: float) -> float:
    """Seconds a fetched document may be used: the configured TTL, shortened by the
    server's max-age (no-store / no-cache: the floor), never below the floor."""
    lifetime = ttl
    if cache_control:
        directives = cache_control.lower()
        if "no-store" in directives or "no-cache" in directives:
            lifetime = floor
        else:
            match = _MAX_AGE.search(directives)
            if match:
                lifetime = min(lifetime, float(match.group(1)))
    return max(lifetime, floor)


class Issuer:
    def __init__(self, config: IssuerConfig, http: urllib3.PoolManager) -> None:
        self.config = config
        self._http = http
        # Re-entrant: a key refresh may need to fetch the discovery document first.
        self._lock = threading.RLock()
        self._metadata: dict[str, Any] | None = None
        self._metadata_expires = float("-inf")
        self._keys: KeySet | None = None
        self._kids: frozenset[str] = frozenset()
        self._keys_expire = float("-inf")
        self._last_key_fetch = float("-inf")

    @property
    def keys_loaded(self) -> bool:
        return self._keys is not None

    def metadata(self) -> dict[str, Any]:
        if self._metadata is not None and time.monotonic() < self._metadata_expires:
            return self._metadata
        with self._lock:
            now = time.monotonic()
            if self._metadata is not None and now < self._metadata_expires:
                return self._metadata
            try:
                document, lifetime = self._fetch_discovery()
            except IssuerUnavailable as error:
                if self._metadata is None or now >= self._metadata_expires + self._stale:
                    raise
                log.warning("discovery of %s not refreshed, using the last: %s", self.name, error)
                self._metadata_expires = now + self.config.jwks_min_refresh_seconds
                return self._metadata
            self._metadata = document
            self._metadata_expires = now + lifetime
            return document

    def keys_for(self, kid: str | None) -> KeySet:
        """The key set: refetched when its time is up, or (rate-limited) when `kid` is not
        in it; on a failed refresh the last set serves until `jwks_stale_seconds` past
        its time."""
        keys = self._keys
        if (
            keys is not None
            and time.monotonic() < self._keys_expire
            and (kid is None or kid in self._kids)
        ):
            return keys
        with self._lock:
            now = time.monotonic()
            fresh = self._keys is not None and now < self._keys_expire
            if fresh and (kid is None or kid in self._kids):
                return self._keys  # type: ignore[return-value]
            if (
                self._keys is None
                or now - self._last_key_fetch >= self.config.jwks_min_refresh_seconds
            ):
                self._last_key_fetch = now
                try:
                    self._load_keys(now)
                    metrics.JWKS_REFRESHES.labels(issuer=self.name, outcome="ok").inc()
                except IssuerUnavailable as error:
                    metrics.JWKS_REFRESHES.labels(issuer=self.name, outcome="failed").inc()
                    if self._keys is None or now >= self._keys_expire + self._stale:
                        self._keys = None
                        self._kids = frozenset()
                        raise
                    log.warning("keys of %s not refreshed, using the last: %s", self.name, error)
            if self._keys is None or now >= self._keys_expire + self._stale:
                raise IssuerUnavailable(f"keys of {self.name} are past their time")
            return self._keys

    def keys_valid_for(self) -> float:
        """Seconds until the held keys are due for a refresh (a cached validation should
        not outlive them: the key that signed it may be withdrawn by then)."""
        return max(self._keys_expire - time.monotonic(), 0.0)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def _stale(self) -> float:
        return self.config.jwks_stale_seconds

    def _fetch_discovery(self) -> tuple[dict[str, Any], float]:
        document, cache_control = self._get_json_cached(self.config.discovery)
        if document.get("issuer", "").rstrip("/") != self.config.issuer:
            raise IssuerUnavailable(
                f"discovery document of {self.config.name} names issuer "
                f"{document.get('issuer')!r}, expected {self.config.issuer!r}"
            )
        return document, self._lifetime(cache_control)

    def _lifetime(self, cache_control: str | None) -> float:
        return cache_lifetime(
            cache_control, self.config.jwks_ttl_seconds, self.config.jwks_min_refresh_seconds
        )

    def _load_keys(self, now: float) -> None:
        jwks_uri = self.metadata().get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise IssuerUnavailable(f"issuer {self.config.name} publishes no jwks_uri")
        document, cache_control = self._get_json_cached(jwks_uri)
        try:
            keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
        except Exception as error:
            raise IssuerUnavailable(f"JWKS of {self.config.name} is malformed: {error}") from None
        kids = frozenset(k.kid for k in keys.keys if k.kid)
        withdrawn = self._kids - kids
        self._keys = keys
        self._kids = kids
        self._keys_expire = now + self._lifetime(cache_control)
        if withdrawn:
            log.info("issuer %s withdrew keys %s", self.config.name, sorted(withdrawn))
        log.info("loaded %d keys of issuer %s", len(keys.keys), self.config.name)

    def _get_json_cached(self, url: str, **kwargs: Any) -> tuple[dict[str, Any], str | None]:
        """The JSON object at `url` and the response's Cache-Control."""
        response = self._request("GET", url, **kwargs)
        if response.status != 200:
            raise IssuerUnavailable(f"{url} answered {response.status}")
        try:
            document = orjson.loads(response.data)
        except orjson.JSONDecodeError:
            raise IssuerUnavailable(f"{url} did not return JSON") from None
        if not isinstance(document, dict):
            raise IssuerUnavailable(f"{url} did not return a JSON object")
        return document, response.headers.get("Cache-Control")

    def post_form(
        self, url: str, fields: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, Any]:
        response = self._request(
            "POST", url, fields=fields, encode_multipart=False, headers=headers
        )
        return response.status, _json_or_none(response.data)

    def get_with_bearer(self, url: str, token: str) -> tuple[int, Any]:
        response = self._request("GET", url, headers={"Authorization": f"Bearer {token}"})
        return response.status, _json_or_none(response.data)

    def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        """One call to the IdP, tried a second time only when the connection broke before
        any answer (a pooled connection the IdP had closed: its keep-alive ran out). Every
        call here only reads at the IdP, so the second try changes nothing there; a
        timeout or an answer, whatever its status, is not retried."""
        for attempt in (1, 2):
            try:
                return self._http.request(
                    method, url, timeout=5.0, retries=False, redirect=False, **kwargs
                )
            except urllib3.exceptions.ProtocolError as error:
                if attempt == 2:
                    raise IssuerUnavailable(f"{url}: {type(error).__name__}") from None
                log.info("connection to %s broke before an answer; trying once more", url)
            except urllib3.exceptions.HTTPError as error:
                raise IssuerUnavailable(f"{url}: {type(error).__name__}") from None
        raise AssertionError("unreachable")


def _json_or_none(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
