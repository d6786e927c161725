"""Helpers for the hostile-input tests: raw HTTP, hand-built JWS and a fake OIDC issuer.

`requests` normalises paths and drops or merges headers, so the hostile requests go out
over a plain socket with exactly the bytes the test wrote. Tokens that joserfc refuses to
build (`alg: none`, HS256 keyed with an RSA public key) are assembled by hand.
"""

from __future__ import annotations

import base64
import hmac
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import requests
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from tests.support.oidc_client import REDIRECT_URI

Header = tuple[str | bytes, str | bytes]


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


@dataclass
class RawResponse:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def raw_request(
    base_url: str,
    target: str | bytes,
    *,
    method: str = "GET",
    headers: Iterable[Header] = (),
    body: bytes = b"",
    host: str | bytes | None = None,
    timeout: float = 10.0,
) -> RawResponse:
    """Send one request with exactly this request line and these headers; read the answer."""
    parsed = urlparse(base_url)
    assert parsed.hostname and parsed.port
    header_list = list(headers)
    names = {_bytes(name).lower() for name, _ in header_list}
    lines = [_bytes(method) + b" " + _bytes(target) + b" HTTP/1.1"]
    lines.append(b"Host: " + _bytes(host if host is not None else parsed.netloc))
    lines += [_bytes(name) + b": " + _bytes(value) for name, value in header_list]
    if b"connection" not in names:
        lines.append(b"Connection: close")
    if body and b"content-length" not in names:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    payload = b"\r\n".join(lines) + b"\r\n\r\n" + body
    with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout) as sock:
        sock.sendall(payload)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        data = response.read()
        return RawResponse(response.status, response.headers, data)


# --- tokens ---------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def unsigned_token(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A compact JWS with an empty signature, as `alg: none` tokens are sent."""
    return f"{_segment(header)}.{_segment(claims)}."


def hs256_token(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """HS256 over header.claims with `secret` as the HMAC key (the RS256→HS256 confusion)."""
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    signature = hmac.new(secret, signing_input.encode(), "sha256").digest()
    return f"{signing_input}.{b64url(signature)}"


def signed_token(key: RSAKey | ECKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """Signed with `key`, RS256 unless the header names another algorithm."""
    full_header = {"alg": "RS256", **header}
    return jwt.encode(full_header, claims, key, algorithms=[full_header["alg"]])


def access_claims(issuer: str, audience: str, **extra: Any) -> dict[str, Any]:
    """Claims of a valid RFC 9068 access token for alice; `extra` overrides single claims,
    or removes them when given as None."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
        "jti": b64url(now.to_bytes(8, "big")),
        "client_id": "hostile-tests",
    }
    for name, value in extra.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def obtain_tokens_for_client(
    idp_url: str, sub: str, client_id: str, *, nonce: str | None = None
) -> dict[str, Any]:
    """Code flow with client_secret_post, so the client id may contain ':' (an audience URL)."""
    discovery = requests.get(f"{idp_url}/.well-known/openid-configuration", timeout=5).json()
    params = {
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "response_type": "code",
        "scope": "openid email",
        "state": "s",
    }
    if nonce:
        params["nonce"] = nonce
    response = requests.post(
        discovery["authorization_endpoint"],
        params=params,
        data={"sub": sub},
        allow_redirects=False,
        timeout=5,
    )
    assert response.status_code == 302, response.text
    code = parse_qs(urlparse(response.headers["Location"]).query)["code"][0]
    token = requests.post(
        discovery["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "client_id": client_id,
            "client_secret": "secret",
        },
        timeout=5,
    )
    assert token.status_code == 200, token.text
    return token.json()


# --- a fake OIDC issuer the test controls -------------------------------------------------


@dataclass
class FakeIssuer:
    """Discovery document and JWKS served from a thread; every request is recorded.

    Used as a trusted issuer whose signing key the test holds (so tokens with bad claims
    but good signatures can be made), and as an untrusted host that must never be
    contacted by the gateway.
    """

    keys: list[RSAKey]
    hits: list[tuple[str, str]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def netloc(self) -> str:
        return self.url.split("//", 1)[1]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.as_dict(private=False) for key in self.keys]}

    def start(self) -> FakeIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                issuer.hits.append((self.command, self.path))
                if self.path == "/.well-known/openid-configuration":
                    body: dict[str, Any] | None = {
                        "issuer": issuer.url,
                        "jwks_uri": issuer.url + "/jwks",
                        "id_token_signing_alg_values_supported": ["RS256"],
                    }
                elif self.path == "/jwks":
                    body = issuer.jwks()
                else:
                    body = None
                data = json.dumps(body or {"error": "not_found"}).encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_HEAD = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def requests_for(self, path: str) -> int:
        return sum(1 for _, hit in self.hits if hit.split("?", 1)[0] == path)
