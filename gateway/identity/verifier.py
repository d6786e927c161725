"""Bearer token → Principal, for JWT access tokens and opaque ones.

A validated token is cached until it expires (opaque ones for a short bounded time),
so the hot path pays a dictionary lookup, not a signature check or an IdP round trip.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

import orjson
import urllib3
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import Key

from gateway.config import IssuerConfig
from gateway.identity.issuer import Issuer, IssuerUnavailable
from gateway.identity.principal import AuthError, Principal

log = logging.getLogger(__name__)

_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9._~+/=-]{16,8192}\Z")
_VENDOR = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}\Z")
_ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt", "jwt"})
# Claims only an OpenID Connect ID token carries; such a token is proof of a login at a
# client, not a grant to call this gateway.
_ID_TOKEN_CLAIMS = ("nonce", "at_hash", "c_hash", "s_hash")
_NEGATIVE_CACHE_SECONDS = 5.0


class TokenVerifier:
    def __init__(
        self,
        issuers: tuple[IssuerConfig, ...],
        *,
        http: urllib3.PoolManager | None = None,
        cache_size: int = 100_000,
    ) -> None:
        self._http = http or urllib3.PoolManager(num_pools=8, maxsize=8)
        self.issuers = [Issuer(config, self._pool_for(config)) for config in issuers]
        self._by_url = {issuer.config.issuer: issuer for issuer in self.issuers}
        self._opaque = [i for i in self.issuers if i.config.opaque_tokens != "reject"]
        self._cache: dict[bytes, tuple[Principal, float]] = {}
        self._rejected: dict[bytes, tuple[AuthError, float]] = {}
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()

    def _pool_for(self, config: IssuerConfig) -> urllib3.PoolManager:
        """An issuer with its own CA bundle gets its own pool; the others share one."""
        if not config.ca_file:
            return self._http
        return urllib3.PoolManager(
            num_pools=2, maxsize=8, cert_reqs="CERT_REQUIRED", ca_certs=config.ca_file
        )

    def authenticate(self, authorization: str | None) -> Principal:
        token = _bearer_token(authorization)
        key = hashlib.sha256(token.encode()).digest()
        now = time.time()
        hit = self._cache.get(key)
        if hit is not None and now < hit[1]:
            return hit[0]
        miss = self._rejected.get(key)
        if miss is not None and now < miss[1]:
            raise miss[0]
        try:
            if token.count(".") == 2:
                principal, valid_until = self._verify_jwt(token, now)
            else:
                principal, valid_until = self._verify_opaque(token, now)
        except AuthError as error:
            if error.status == 401:
                self._remember(self._rejected, key, (error, now + _NEGATIVE_CACHE_SECONDS))
            raise
        self._remember(self._cache, key, (principal, valid_until))
        return principal

    def forget(self, predicate: Any) -> int:
        """Drop cached validations whose principal matches `predicate` (used by locks)."""
        with self._cache_lock:
            doomed = [k for k, (p, _) in self._cache.items() if predicate(p)]
            for k in doomed:
                self._cache.pop(k, None)
        return len(doomed)

    def _remember(self, cache: dict[bytes, Any], key: bytes, value: Any) -> None:
        if len(cache) >= self._cache_size:
            with self._cache_lock:
                now = time.time()
                for k in [k for k, v in cache.items() if v[1] <= now]:
                    cache.pop(k, None)
                if len(cache) >= self._cache_size:
                    cache.clear()
        cache[key] = value

    # --- JWT access tokens -------------------------------------------------------------

    def _verify_jwt(self, token: str, now: float) -> tuple[Principal, float]:
        header_segment, payload_segment, _ = token.split(".")
        header = _b64_json(header_segment, "header")
        unverified = _b64_json(payload_segment, "payload")
        issuer = self._by_url.get(str(unverified.get("iss", "")).rstrip("/"))
        if issuer is None:
            raise AuthError("invalid_token", "token issuer is not trusted")
        config = issuer.config
        alg = header.get("alg")
        if alg not in config.algorithms:
            raise AuthError("invalid_token", f"signing algorithm {alg!r} is not accepted")
        token_type = str(header.get("typ", "JWT")).lower()
        if token_type not in _ACCESS_TOKEN_TYPES:
            raise AuthError(
                "invalid_token", f"token type {header.get('typ')!r} is not an access token"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("invalid_token", "malformed key id")
        key = self._signing_key(issuer, kid)
        try:
            verified = jwt.decode(token, key, algorithms=[alg])
        except JoseError as error:
            raise AuthError("invalid_token", f"signature check failed ({error.error})") from None
        except (ValueError, TypeError):
            raise AuthError("invalid_token", "malformed token") from None
        claims = verified.claims
        registry = jwt.JWTClaimsRegistry(
            leeway=config.leeway_seconds,
            iss={"essential": True, "value": config.issuer},
            aud={"essential": True, "value": config.audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as error:
            raise AuthError("invalid_token", _claims_message(error)) from None
        is_plain_jwt = token_type == "jwt"  # noqa: S105 - a JOSE type name, not a secret
        if is_plain_jwt and any(name in claims for name in _ID_TOKEN_CLAIMS):
            raise AuthError("invalid_token", "an ID token is not accepted as an access token")
        principal = self._principal(config, claims, expires_at=float(claims["exp"]))
        # Not cached past the keys' refresh: the key that signed it may be withdrawn then.
        valid_until = min(
            float(claims["exp"]) + config.leeway_seconds, now + issuer.keys_valid_for()
        )
        return principal, valid_until

    def _signing_key(self, issuer: Issuer, kid: str | None) -> Key:
        try:
            keys = issuer.keys_for(kid)
        except IssuerUnavailable as error:
            log.warning("issuer keys unavailable: %s", error)
            raise AuthError("temporarily_unavailable", "issuer keys are unavailable", 503) from None
        try:
            return keys.get_by_kid(kid)
        except JoseError:
            raise AuthError("invalid_token", "token is signed with an unknown key") from None

    # --- opaque access tokens ----------------------------------------------------------

    def _verify_opaque(self, token: str, now: float) -> tuple[Principal, float]:
        if not self._opaque:
            raise AuthError(
                "invalid_token", "token is not a JWT and no issuer accepts opaque tokens"
            )
        issuer = self._opaque[0]
        config = issuer.config
        try:
            metadata = issuer.metadata()
            endpoint = metadata.get("introspection_endpoint")
            use_introspection = config.opaque_tokens == "introspection" or (
                config.opaque_tokens == "auto" and endpoint and config.client_id
            )
            if use_introspection:
                claims = self._introspect(issuer, str(endpoint), token)
            else:
                claims = self._userinfo(issuer, metadata.get("userinfo_endpoint"), token)
        except IssuerUnavailable as error:
            log.warning("opaque token check failed: %s", error)
            raise AuthError("temporarily_unavailable", "issuer is unavailable", 503) from None
        exp = claims.get("exp")
        valid_until = now + config.opaque_cache_seconds
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            if exp + config.leeway_seconds < now:
                raise AuthError("invalid_token", "token has expired")
            valid_until = min(valid_until, float(exp))
        return self._principal(config, claims, expires_at=valid_until), valid_until

    def _introspect(self, issuer: Issuer, endpoint: str, token: str) -> Mapping[str, Any]:
        config = issuer.config
        credentials = base64.b64encode(
            f"{config.client_id}:{config.client_secret}".encode()
        ).decode()
        status, body = issuer.post_form(
            endpoint,
            {"token": token, "token_type_hint": "access_token"},
            {"Authorization": f"Basic {credentials}"},
        )
        if status != 200 or not isinstance(body, dict):
            raise IssuerUnavailable(f"introspection answered {status}")
        if body.get("active") is not True:
            raise AuthError("invalid_token", "token is not active")
        if "iss" in body and str(body["iss"]).rstrip("/") != config.issuer:
            raise AuthError("invalid_token", "token was issued by another issuer")
        audience = body.get("aud")
        if audience is not None:
            audiences = audience if isinstance(audience, list) else [audience]
            if config.audience not in audiences:
                raise AuthError("invalid_token", "token is not meant for this gateway")
        if body.get("token_type") not in (None, "access_token", "Bearer", "bearer"):
            raise AuthError("invalid_token", "token is not an access token")
        return body

    def _userinfo(self, issuer: Issuer, endpoint: Any, token: str) -> Mapping[str, Any]:
        if not isinstance(endpoint, str):
            raise IssuerUnavailable(f"issuer {issuer.config.name} has no userinfo endpoint")
        status, body = issuer.get_with_bearer(endpoint, token)
        # RFC 6750 says 401, but IdPs also answer 400 or 403 for a token they refuse;
        # only a 5xx or a non-JSON answer means the IdP itself is in trouble.
        if status in (400, 401, 403):
            raise AuthError("invalid_token", "token was not accepted by its issuer")
        if status != 200 or not isinstance(body, dict):
            raise IssuerUnavailable(f"userinfo answered {status}")
        return body

    # --- shared -----------------------------------------------------------------------

    def _principal(
        self, config: IssuerConfig, claims: Mapping[str, Any], *, expires_at: float
    ) -> Principal:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 255:
            raise AuthError("invalid_token", "token has no usable subject")
        if config.vendor is not None:
            vendor = config.vendor
        else:
            vendor = claims.get(config.vendor_claim or "")
            if not isinstance(vendor, str) or not _VENDOR.match(vendor):
                raise AuthError(
                    "invalid_token", f"token has no valid '{config.vendor_claim}' claim"
                )
        # A vendor's IdP could mint itself 'admin'; roles count only from trusted issuers.
        roles_claim = claims.get(config.roles_claim, []) if config.roles_trusted else []
        if isinstance(roles_claim, str):
            roles_claim = roles_claim.split()
        roles = (
            frozenset(r for r in roles_claim if isinstance(r, str))
            if isinstance(roles_claim, list)
            else frozenset()
        )
        email = claims.get("email")
        return Principal(
            issuer=config.name,
            subject=subject,
            vendor=vendor,
            email=email if isinstance(email, str) else None,
            roles=roles,
            expires_at=expires_at,
        )


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("invalid_request", "no bearer token")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("invalid_request", "authorization must be 'Bearer <token>'")
    if not _TOKEN_CHARS.match(token):
        raise AuthError("invalid_token", "malformed token")
    return token


def _b64_json(segment: str, part: str) -> dict[str, Any]:
    try:
        value = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise AuthError("invalid_token", f"malformed token {part}") from None
    if not isinstance(value, dict):
        raise AuthError("invalid_token", f"malformed token {part}")
    return value


def _claims_message(error: JoseError) -> str:
    text = str(error.description or error.error)
    if "exp" in text or error.error == "expired_token":
        return "token has expired"
    return f"token claims rejected: {text}"
