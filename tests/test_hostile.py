"""Hostile inputs the gateway must refuse (docs/DESIGN.md §8), end to end over real sockets.

Each test sends the attack as the bytes an attacker would write (raw socket where a client
library would clean it up) and checks the exact refusal: status, the machine-readable
`error`, the denial row in the access log, and — through the upstream's `/api/echo` route
and the upstream's own request log — that nothing hostile ever reached the dataset service.

Tokens with bad claims but *good* signatures come from a second gateway instance (same
database, same upstream) that also trusts `forge-idp`, a fake issuer whose key the test
holds; tokens for the real IdP can only be forged with keys it does not publish.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from tests.conftest import (
    AUDIENCE,
    PYTHON,
    UPSTREAM_TOKEN,
    Gateway,
    Proc,
    free_port,
    gateway_config,
    start,
    wait_ready,
)
from tests.support.hostile import (
    FakeIssuer,
    RawResponse,
    access_claims,
    hs256_token,
    obtain_tokens_for_client,
    raw_request,
    signed_token,
    unsigned_token,
)
from tests.support.oidc_client import obtain_tokens

ECHO = "/api/echo"
RECORDS = "/api/projects/proj-1/tasks/task-1/records"
ASSERTION_ISSUER = "contractor-gateway"
FORGE_KID = "forge-key-1"
FORGE_ISSUER_NAME = "forge-idp"


# --- helpers ----------------------------------------------------------------------------


def new_marker() -> str:
    return f"hostile{secrets.token_hex(8)}"


def bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


def alice(gateway: Gateway) -> tuple[str, str]:
    return bearer(gateway.token("alice"))


def assert_denied(
    gateway: Gateway, response: RawResponse, status: int, error: str, reason: str | None = None
) -> dict[str, Any]:
    """Exact status and `error`, same request id in header and body, one 'deny' row."""
    assert response.status == status, (response.status, response.body[:300])
    body = response.json()
    assert body["error"] == error, body
    request_id = response.header("X-Request-Id")
    assert request_id and body["request_id"] == request_id
    rows = gateway.audit_rows(request_id)
    assert [(r.decision, r.reason) for r in rows] == [("deny", reason or error)]
    return body


def assert_invalid_token(gateway: Gateway, response: RawResponse) -> None:
    assert_denied(gateway, response, 401, "invalid_token")
    challenge = response.header("WWW-Authenticate") or ""
    assert challenge.startswith("Bearer "), challenge
    assert 'error="invalid_token"' in challenge, challenge


def assert_never_forwarded(gateway: Gateway, *markers: str) -> None:
    """No request carrying any of `markers` reached the upstream.

    A legitimate request sent afterwards must show up in the upstream's request log
    first, so a missing marker means "never sent", not "not logged yet".
    """
    sentinel = new_marker()
    response = raw_request(gateway.url, f"{ECHO}?sentinel={sentinel}", headers=[alice(gateway)])
    assert response.status == 200, response.body[:300]
    deadline = time.monotonic() + 5
    log = gateway.upstream.log()
    while sentinel not in log:
        assert time.monotonic() < deadline, "upstream request log is not being written"
        time.sleep(0.05)
        log = gateway.upstream.log()
    for marker in markers:
        assert marker not in log, f"a hostile request ({marker}) reached the upstream"


def echo(response: RawResponse) -> dict[str, Any]:
    """What the upstream received, lower-cased header names."""
    assert response.status == 200, response.body[:300]
    seen = response.json()
    seen["headers"] = {name.lower(): value for name, value in seen["headers"].items()}
    return seen


def verify_assertion(gateway: Gateway, assertion: str) -> dict[str, Any]:
    keys = KeySet.import_key_set(raw_request(gateway.url, "/_gateway/jwks.json").json())
    # "Ed25519" is RFC 9864's fully specified name for what "EdDSA" means here.
    token = jwt.decode(assertion, keys, algorithms=["Ed25519", "EdDSA"])
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": ASSERTION_ISSUER},
        aud={"essential": True, "value": gateway.upstream.url},
        exp={"essential": True},
    ).validate(token.claims)
    return token.claims


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def attacker_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "attacker-key"})


@pytest.fixture(scope="module")
def untrusted_host(attacker_key: RSAKey) -> Iterator[FakeIssuer]:
    """A well-formed OIDC issuer the gateway does not trust: it must never be contacted."""
    issuer = FakeIssuer([attacker_key]).start()
    yield issuer
    issuer.stop()


@pytest.fixture(autouse=True)
def _untrusted_host_is_never_contacted(untrusted_host: FakeIssuer) -> Iterator[None]:
    before = len(untrusted_host.hits)
    yield
    assert untrusted_host.hits[before:] == [], "the gateway contacted an untrusted host"


@pytest.fixture(scope="module")
def idp_public_jwk(gateway: Gateway) -> dict[str, Any]:
    keys = raw_request(gateway.idp.url, "/jwks").json()["keys"]
    assert len(keys) == 1 and keys[0]["kid"]
    return keys[0]


@pytest.fixture(scope="module")
def forge_issuer() -> Iterator[FakeIssuer]:
    issuer = FakeIssuer([RSAKey.generate_key(2048, parameters={"kid": FORGE_KID})]).start()
    yield issuer
    issuer.stop()


@pytest.fixture(scope="module")
def forge_gateway(
    gateway: Gateway, forge_issuer: FakeIssuer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A second instance on the same database and upstream that also trusts `forge-idp`,
    bound to vendor acme (which may read proj-1)."""
    tmp = tmp_path_factory.mktemp(f"forge-gateway-{gateway.db.kind}")
    config = gateway_config(
        db_url=gateway.db.url,
        idp_url=gateway.idp.url,
        opaque_idp_url=gateway.opaque_idp.url,
        upstream_url=gateway.upstream.url,
    )
    config += f"""
[[issuers]]
name = "{FORGE_ISSUER_NAME}"
issuer = "{forge_issuer.url}"
audience = "{AUDIENCE}"
vendor = "acme"
jwks_min_refresh_seconds = 30
"""
    config_path = tmp / "gateway.toml"
    config_path.write_text(config)
    port = free_port()
    argv = [
        PYTHON,
        "-m",
        "gunicorn",
        "-k",
        "gateway.serving.GatewayThreadWorker",
        "-w",
        "1",
        "--threads",
        "4",
    ]
    argv += ["-b", f"127.0.0.1:{port}", "--graceful-timeout", "2", "gateway.wsgi:app"]
    proc: Proc = start(
        argv,
        f"http://127.0.0.1:{port}",
        tmp / "gateway.log",
        env={"GATEWAY_CONFIG": str(config_path), "UPSTREAM_TOKEN": UPSTREAM_TOKEN},
        ready_path="/_gateway/health",
    )
    try:
        wait_ready(proc.url)
        yield Gateway(
            proc, gateway.db, config_path, gateway.idp, gateway.opaque_idp, gateway.upstream
        )
    finally:
        proc.stop()


# --- 1. path tricks -----------------------------------------------------------------------

PATH_TRICKS = {
    "dot-dot": "/api/x/../echo",
    "dot": "/api/./echo",
    "encoded-dot-dot": "/api/x/%2e%2e/echo",
    "encoded-dot-dot-mixed-case": "/api/x/%2E%2e/echo",
    "encoded-dot": "/api/%2e/echo",
    "double-encoded-dot-dot": "/api/x/%252e%252e/echo",
    "encoded-slash": "/api%2fecho",
    "encoded-slash-upper": "/api%2Fecho",
    "double-encoded-slash": "/api%252fecho",
    "leading-double-slash": "//api/echo",
    "inner-double-slash": "/api//echo",
    "backslash": "/api\\echo",
    "encoded-backslash": "/api%5cecho",
    "encoded-backslash-upper": "/api%5Cecho",
    "jsessionid": "/api/echo;jsessionid=x",
    "tomcat-dot-dot-semicolon": "/api/projects/proj-1/tasks/task-1/records/..;/../..",
    "encoded-nul": "/api/echo%00",
    "encoded-nul-before-suffix": "/api/echo%00.json",
    "non-utf8": "/api/echo%ff",
    "overlong-utf8-slash": "/api%c0%afecho",
    "overlong-path": "/api/echo/" + "a" * 3000,
    "absolute-form-dot-dot": "http://gateway.example/api/x/../echo",
}


@pytest.mark.parametrize("trick", list(PATH_TRICKS))
def test_path_trick_is_400_bad_path_logged_and_never_forwarded(
    gateway: Gateway, trick: str
) -> None:
    marker = new_marker()
    response = raw_request(
        gateway.url, f"{PATH_TRICKS[trick]}?m={marker}", headers=[alice(gateway)]
    )
    assert_denied(gateway, response, 400, "bad_path")
    assert_never_forwarded(gateway, marker)


def test_path_longer_than_the_server_accepts_is_refused_and_never_forwarded(
    gateway: Gateway,
) -> None:
    marker = new_marker()
    response = raw_request(
        gateway.url, f"/api/echo/{'a' * 5000}?m={marker}", headers=[alice(gateway)]
    )
    assert response.status in (400, 414)
    assert_never_forwarded(gateway, marker)


def test_path_trick_is_refused_before_the_token_is_looked_at(gateway: Gateway) -> None:
    response = raw_request(gateway.url, "/api/x/%2e%2e/echo")
    assert_denied(gateway, response, 400, "bad_path")


# --- 2. query and fragment confusion ------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    ["project=proj-3", "limit=1&limit=500", "offset=0&Limit=5", "limit=5&project=proj-3"],
    ids=["param-not-allowed", "repeated-param", "case-variant-name", "smuggled-after-allowed"],
)
def test_query_outside_the_route_allow_list_is_400_bad_query(gateway: Gateway, query: str) -> None:
    marker = new_marker()
    response = raw_request(gateway.url, f"{RECORDS}?{query}&m{marker}=1", headers=[alice(gateway)])
    assert_denied(gateway, response, 400, "bad_query")
    assert_never_forwarded(gateway, marker)


@pytest.mark.parametrize(
    "target",
    [f"{RECORDS}%3Fproject=proj-3", f"{RECORDS}%3fproject=proj-3", f"{ECHO}%3Fm=MARK"],
    ids=["records-upper", "records-lower", "echo"],
)
def test_encoded_question_mark_in_path_is_400(gateway: Gateway, target: str) -> None:
    marker = new_marker()
    response = raw_request(gateway.url, target.replace("MARK", marker), headers=[alice(gateway)])
    assert_denied(gateway, response, 400, "bad_path")
    assert_never_forwarded(gateway, marker)


@pytest.mark.parametrize(
    "target",
    [f"{ECHO}#MARK", f"{ECHO}?m=MARK#frag", f"{RECORDS}?limit=5#&project=proj-3&m=MARK"],
    ids=["in-path", "after-query", "inside-allow-listed-query"],
)
def test_fragment_anywhere_in_the_request_target_is_400(gateway: Gateway, target: str) -> None:
    # A request target never carries a fragment (RFC 9112 §3.2); the upstream would drop
    # whatever follows '#', so it would act on a different query than the gateway checked.
    marker = new_marker()
    response = raw_request(gateway.url, target.replace("MARK", marker), headers=[alice(gateway)])
    assert_denied(gateway, response, 400, "bad_path")
    assert_never_forwarded(gateway, marker)


def test_absolute_form_target_goes_only_to_the_upstream_and_is_policy_checked(
    gateway: Gateway, untrusted_host: FakeIssuer
) -> None:
    evil = f"http://{untrusted_host.netloc}"
    allowed = raw_request(
        gateway.url, f"{evil}{ECHO}?x=1", headers=[alice(gateway)], host=untrusted_host.netloc
    )
    seen = echo(allowed)
    assert seen["path"] == ECHO and seen["query"] == "x=1"
    assert seen["headers"]["host"] == gateway.upstream.url.split("//", 1)[1]
    assert untrusted_host.netloc not in json.dumps(seen)

    refused = raw_request(gateway.url, f"{evil}{ECHO}", headers=[bearer(gateway.token("carol"))])
    assert refused.status == 403 and refused.json()["error"] == "forbidden"
    rows = gateway.audit_rows(refused.header("X-Request-Id"))
    assert [(r.decision, r.subject, r.project) for r in rows] == [("deny", "carol", "proj-1")]

    anonymous = raw_request(gateway.url, f"{evil}{ECHO}")
    assert_denied(gateway, anonymous, 401, "invalid_request")
    assert untrusted_host.hits == []


# --- 3. forwarded-header spoofing, client identity headers, hop-by-hop ------------------

SPOOFED_HEADERS = [
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Port", "6666"),
    ("X-Forwarded-Prefix", "/spoofed"),
    ("Forwarded", "for=6.6.6.6;host=evil.example;proto=https"),
    ("X-Real-IP", "6.6.6.6"),
    ("X-Client-IP", "6.6.6.6"),
    ("True-Client-IP", "6.6.6.6"),
    ("X-Original-URL", "/api/projects/proj-3/records"),
    ("X-Rewrite-URL", "/api/projects/proj-3/records"),
    ("X-Forwarded-Email", "spoofed-ceo@lab.example"),
    ("X-Forwarded-User", "spoofed-ceo"),
    ("X-Forwarded-Preferred-Username", "spoofed-ceo"),
    ("X-Forwarded-Groups", "spoofed-admins"),
    ("X-Auth-Request-Email", "spoofed-ceo@lab.example"),
    ("X-Auth-Request-User", "spoofed-ceo"),
    ("Remote-User", "spoofed-ceo"),
    ("X-Remote-User", "spoofed-ceo"),
    ("X-User", "spoofed-ceo"),
    ("X-Email", "spoofed-ceo@lab.example"),
    ("X-Vendor", "spoofed-vendor"),
    ("X-Gateway-Assertion", "spoofed.assertion.value"),
    ("X-Request-Id", "spoofed-request-id"),
    ("Cookie", "session=spoofed-session"),
    ("Proxy-Authorization", "Basic c3Bvb2ZlZDpzcG9vZmVk"),
    # Underscore twins: WSGI folds them into the same environ key as the dashed name.
    ("X_Forwarded_Email", "spoofed-ceo@lab.example"),
    ("X_Forwarded_User", "spoofed-ceo"),
    ("X_Forwarded_For", "6.6.6.6"),
    ("X_Auth_Request_Email", "spoofed-ceo@lab.example"),
    ("Remote_User", "spoofed-ceo"),
    ("X_User", "spoofed-ceo"),
    ("X_Gateway_Assertion", "spoofed.assertion.value"),
    ("X_Real_IP", "6.6.6.6"),
]
# Names the gateway sets itself; their values must be the gateway's, never the client's.
GATEWAY_SET = {"host", "authorization", "x-forwarded-for", "x-gateway-assertion", "x-request-id"}


def test_spoofed_forwarding_and_identity_headers_never_reach_the_upstream(
    gateway: Gateway,
) -> None:
    token = gateway.token("alice")
    response = raw_request(
        gateway.url, ECHO, headers=[bearer(token), *SPOOFED_HEADERS], host="evil.example"
    )
    upstream = echo(response)["headers"]
    spoofed_names = {name.lower().replace("_", "-") for name, _ in SPOOFED_HEADERS}
    assert set(upstream) & spoofed_names <= GATEWAY_SET, set(upstream) & spoofed_names
    for name, value in upstream.items():
        for needle in ("6.6.6.6", "evil.example", "spoofed", "6666", token):
            assert needle not in value, (name, value)
    assert upstream["x-forwarded-for"] == "127.0.0.1"
    assert upstream["authorization"] == f"Token {UPSTREAM_TOKEN}"
    request_id = response.header("X-Request-Id")
    assert upstream["x-request-id"] == request_id
    claims = verify_assertion(gateway, upstream["x-gateway-assertion"])
    assert claims["rid"] == request_id
    rows = gateway.db.rows(
        "SELECT client_ip, subject, decision FROM access_log WHERE request_id = :rid",
        rid=request_id,
    )
    assert [tuple(r) for r in rows] == [("127.0.0.1", "alice", "allow")]


def test_upstream_gets_the_service_credential_and_a_verifiable_assertion_never_the_bearer(
    gateway: Gateway,
) -> None:
    token = gateway.token("alice")
    response = raw_request(gateway.url, ECHO, headers=[bearer(token)])
    upstream = echo(response)["headers"]
    assert upstream["authorization"] == f"Token {UPSTREAM_TOKEN}"
    assert all(token not in value for value in upstream.values())
    claims = verify_assertion(gateway, upstream["x-gateway-assertion"])
    assert claims["sub"] == "acme-idp:alice"
    assert claims["vendor"] == "acme"
    assert claims["project"] == "proj-1"
    assert claims["rid"] == response.header("X-Request-Id") == upstream["x-request-id"]
    assert 0 < claims["exp"] - time.time() <= 120


def test_forged_assertion_signed_by_another_key_is_replaced(
    gateway: Gateway, attacker_key: RSAKey
) -> None:
    forged = signed_token(
        attacker_key,
        {"kid": "attacker-key"},
        {"iss": ASSERTION_ISSUER, "aud": gateway.upstream.url, "sub": "lab-idp:ceo"},
    )
    response = raw_request(
        gateway.url, ECHO, headers=[alice(gateway), ("X-Gateway-Assertion", forged)]
    )
    assertion = echo(response)["headers"]["x-gateway-assertion"]
    assert assertion != forged
    assert verify_assertion(gateway, assertion)["sub"] == "acme-idp:alice"


def test_hop_by_hop_and_connection_named_headers_are_dropped(gateway: Gateway) -> None:
    response = raw_request(
        gateway.url,
        ECHO,
        headers=[
            alice(gateway),
            ("Connection", "X-Custom, Accept-Language, close"),
            ("X-Custom", "1"),
            # Allow-listed, but named in Connection: it belongs to this hop only.
            ("Accept-Language", "de"),
            ("Keep-Alive", "timeout=5, max=100"),
            ("TE", "trailers"),
            ("Trailer", "X-Checksum"),
            ("Proxy-Connection", "keep-alive"),
            ("Accept", "application/json"),
        ],
    )
    upstream = echo(response)["headers"]
    for name in ("x-custom", "accept-language", "keep-alive", "te", "trailer", "proxy-connection"):
        assert name not in upstream, name
    assert "x-custom" not in upstream.get("connection", "").lower()
    # An allow-listed header that no Connection token names still gets through.
    assert upstream["accept"] == "application/json"


@pytest.mark.parametrize(
    "upgrade",
    [
        [
            ("Upgrade", "h2c"),
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ],
        [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
    ],
    ids=["h2c", "websocket"],
)
def test_upgrade_requests_are_not_tunnelled(
    gateway: Gateway, upgrade: list[tuple[str, str]]
) -> None:
    response = raw_request(gateway.url, ECHO, headers=[alice(gateway), *upgrade])
    assert response.status != 101
    upstream = echo(response)["headers"]
    for name in ("upgrade", "http2-settings", "sec-websocket-key", "sec-websocket-version"):
        assert name not in upstream, name
    assert "upgrade" not in upstream.get("connection", "").lower()


# --- 4. JWT tricks against the real IdP ----------------------------------------------------


@dataclass
class Forgery:
    idp_url: str
    idp_jwk: dict[str, Any]
    attacker: RSAKey
    untrusted: FakeIssuer

    def claims(self, **extra: Any) -> dict[str, Any]:
        return access_claims(self.idp_url, AUDIENCE, **extra)

    @property
    def kid(self) -> str:
        return self.idp_jwk["kid"]

    def public_pem(self) -> bytes:
        return RSAKey.import_key(self.idp_jwk).as_pem(private=False)


def _hs256_with_public_key_pem(f: Forgery) -> str:
    header = {"alg": "HS256", "typ": "at+jwt", "kid": f.kid}
    return hs256_token(header, f.claims(), f.public_pem())


def _hs256_with_public_key_jwk(f: Forgery) -> str:
    header = {"alg": "HS256", "typ": "at+jwt", "kid": f.kid}
    secret = json.dumps(f.idp_jwk, separators=(",", ":")).encode()
    return hs256_token(header, f.claims(), secret)


def _hs256_with_public_key_n(f: Forgery) -> str:
    header = {"alg": "HS256", "typ": "at+jwt", "kid": f.kid}
    return hs256_token(header, f.claims(), f.idp_jwk["n"].encode())


def _untrusted_issuer(f: Forgery) -> str:
    # The untrusted host serves a perfectly good discovery document and JWKS for this key:
    # a gateway that followed `iss` would accept the token.
    claims = access_claims(f.untrusted.url, AUDIENCE)
    return signed_token(f.attacker, {"typ": "at+jwt", "kid": "attacker-key"}, claims)


def _embedded_jwk(f: Forgery) -> str:
    # The verification key rides in the header (an EC key, so the header stays small
    # enough for a JOSE library to parse it at all); ES256 is an accepted algorithm.
    key = ECKey.generate_key("P-256", parameters={"kid": "attacker-ec"})
    header = {"alg": "ES256", "typ": "at+jwt", "kid": "attacker-ec"}
    header["jwk"] = key.as_dict(private=False)
    return signed_token(key, header, f.claims())


def _jku_and_x5u(f: Forgery) -> str:
    # Both point at the untrusted host, which serves the attacker's key.
    header = {
        "typ": "at+jwt",
        "kid": "attacker-key",
        "jku": f.untrusted.url + "/jwks",
        "x5u": f.untrusted.url + "/cert.pem",
    }
    return signed_token(f.attacker, header, f.claims())


def _id_token(f: Forgery) -> str:
    return obtain_tokens(f.idp_url, "alice")["id_token"]


def _id_token_for_our_audience(f: Forgery) -> str:
    # Real IdP signature, our issuer, our audience: only "it is an ID token" is wrong.
    return obtain_tokens_for_client(f.idp_url, "alice", AUDIENCE, nonce="n-123")["id_token"]


def _id_token_for_our_audience_without_nonce(f: Forgery) -> str:
    return obtain_tokens_for_client(f.idp_url, "alice", AUDIENCE)["id_token"]


def _huge(f: Forgery) -> str:
    claims = f.claims(padding="A" * 5500)
    return signed_token(f.attacker, {"typ": "at+jwt", "kid": f.kid}, claims)


JWT_TRICKS: dict[str, Callable[[Forgery], str]] = {
    "alg-none": lambda f: unsigned_token(
        {"alg": "none", "typ": "at+jwt", "kid": f.kid}, f.claims()
    ),
    "alg-None": lambda f: unsigned_token({"alg": "None", "typ": "at+jwt"}, f.claims()),
    "alg-none-keeping-a-signature": lambda f: (
        unsigned_token({"alg": "none", "typ": "at+jwt", "kid": f.kid}, f.claims()) + "c2lnbmF0dXJl"
    ),
    "hs256-keyed-with-idp-public-pem": _hs256_with_public_key_pem,
    "hs256-keyed-with-idp-public-jwk": _hs256_with_public_key_jwk,
    "hs256-keyed-with-idp-modulus": _hs256_with_public_key_n,
    "attacker-key-unknown-kid": lambda f: signed_token(
        f.attacker, {"typ": "at+jwt", "kid": "attacker-key"}, f.claims()
    ),
    "attacker-key-idp-kid": lambda f: signed_token(
        f.attacker, {"typ": "at+jwt", "kid": f.kid}, f.claims()
    ),
    "attacker-key-no-kid": lambda f: signed_token(f.attacker, {"typ": "at+jwt"}, f.claims()),
    "untrusted-issuer": _untrusted_issuer,
    "embedded-jwk": _embedded_jwk,
    "jku-and-x5u-to-attacker": _jku_and_x5u,
    "id-token-of-code-flow": _id_token,
    "id-token-with-our-audience": _id_token_for_our_audience,
    "id-token-with-our-audience-no-nonce": _id_token_for_our_audience_without_nonce,
    "dpop-proof-type": lambda f: signed_token(
        f.attacker, {"typ": "dpop+jwt", "kid": f.kid}, f.claims()
    ),
    "non-base64-segments": lambda f: "abcde.fghij.klmno",
    "json-array-header": lambda f: "WzEsMiwzXQ.eyJhIjoxfQ.c2lnbmF0dXJl",
    "garbage-characters": lambda f: "not a jwt <script>",
    "garbage-opaque": lambda f: "x" * 40,
    "huge": _huge,
}


@pytest.fixture(scope="module")
def forgery(
    gateway: Gateway,
    idp_public_jwk: dict[str, Any],
    attacker_key: RSAKey,
    untrusted_host: FakeIssuer,
) -> Forgery:
    return Forgery(gateway.idp.url, idp_public_jwk, attacker_key, untrusted_host)


@pytest.mark.parametrize("trick", list(JWT_TRICKS))
def test_jwt_trick_is_401_invalid_token(gateway: Gateway, forgery: Forgery, trick: str) -> None:
    token = JWT_TRICKS[trick](forgery)
    marker = new_marker()
    response = raw_request(gateway.url, f"{ECHO}?m={marker}", headers=[bearer(token)])
    assert_invalid_token(gateway, response)
    assert_never_forwarded(gateway, marker)


def test_real_access_token_passes(gateway: Gateway) -> None:
    # The control for the tricks above: same route, same IdP, a genuine token.
    response = raw_request(gateway.url, ECHO, headers=[alice(gateway)])
    assert response.status == 200


@pytest.mark.parametrize(
    "authorization",
    [None, "Basic YWxpY2U6cGFzc3dvcmQ=", "Token abcdefabcdefabcdef", "Bearer", "Bearer   "],
    ids=["missing", "basic", "other-scheme", "bearer-without-token", "bearer-blank"],
)
def test_missing_or_non_bearer_authorization_is_401_invalid_request(
    gateway: Gateway, authorization: str | None
) -> None:
    headers = [("Authorization", authorization)] if authorization is not None else []
    marker = new_marker()
    response = raw_request(gateway.url, f"{ECHO}?m={marker}", headers=headers)
    assert_denied(gateway, response, 401, "invalid_request")
    assert (response.header("WWW-Authenticate") or "").startswith("Bearer ")
    assert_never_forwarded(gateway, marker)


def test_token_larger_than_any_header_the_server_takes_is_refused(gateway: Gateway) -> None:
    marker = new_marker()
    response = raw_request(gateway.url, f"{ECHO}?m={marker}", headers=[bearer("A" * 20_000)])
    assert response.status in (400, 401, 431)
    assert_never_forwarded(gateway, marker)


# --- 4b. JWT claim tricks with a good signature (forge-idp) ---------------------------------


def _forge(forge_issuer: FakeIssuer, header: dict[str, Any] | None = None, **claims: Any) -> str:
    key = forge_issuer.keys[0]
    full_header = {"typ": "at+jwt", "kid": FORGE_KID, **(header or {})}
    return signed_token(
        key, full_header, access_claims(forge_issuer.url, AUDIENCE, **{"sub": "mallory", **claims})
    )


def test_forge_issuer_control_token_is_accepted(
    forge_gateway: Gateway, forge_issuer: FakeIssuer
) -> None:
    response = raw_request(forge_gateway.url, ECHO, headers=[bearer(_forge(forge_issuer))])
    claims = verify_assertion(forge_gateway, echo(response)["headers"]["x-gateway-assertion"])
    assert (claims["sub"], claims["vendor"]) == (f"{FORGE_ISSUER_NAME}:mallory", "acme")


def _forge_pem(forge_issuer: FakeIssuer) -> bytes:
    return forge_issuer.keys[0].as_pem(private=False)


CLAIM_TRICKS: dict[str, Callable[[FakeIssuer], str]] = {
    "expired-beyond-leeway": lambda i: _forge(
        i, exp=int(time.time()) - 300, iat=int(time.time()) - 900
    ),
    "not-yet-valid": lambda i: _forge(i, nbf=int(time.time()) + 600),
    "issued-for-another-audience": lambda i: _forge(i, aud="https://other-gateway.example"),
    "audience-list-without-us": lambda i: _forge(i, aud=["https://other-gateway.example"]),
    "no-audience": lambda i: _forge(i, aud=None),
    "no-expiry": lambda i: _forge(i, exp=None),
    "no-subject": lambda i: _forge(i, sub=None),
    "dpop-proof-type": lambda i: _forge(i, {"typ": "dpop+jwt"}),
    # Good signatures by the issuer's own key, in algorithms the issuer is not configured for.
    "alg-outside-allow-list-rs512": lambda i: _forge(i, {"alg": "RS512"}),
    "alg-outside-allow-list-ps256": lambda i: _forge(i, {"alg": "PS256"}),
    "id-token-shape": lambda i: _forge(i, {"typ": "JWT"}, nonce="n", at_hash="abc"),
    "alg-none": lambda i: unsigned_token(
        {"alg": "none", "typ": "at+jwt", "kid": FORGE_KID},
        access_claims(i.url, AUDIENCE, sub="mallory"),
    ),
    "hs256-keyed-with-public-pem": lambda i: hs256_token(
        {"alg": "HS256", "typ": "at+jwt", "kid": FORGE_KID},
        access_claims(i.url, AUDIENCE, sub="mallory"),
        _forge_pem(i),
    ),
    "hs256-keyed-with-public-jwk": lambda i: hs256_token(
        {"alg": "HS256", "typ": "at+jwt", "kid": FORGE_KID},
        access_claims(i.url, AUDIENCE, sub="mallory"),
        json.dumps(i.keys[0].as_dict(private=False), separators=(",", ":")).encode(),
    ),
}


@pytest.mark.parametrize("trick", list(CLAIM_TRICKS))
def test_validly_signed_token_with_bad_claims_is_401_invalid_token(
    forge_gateway: Gateway, forge_issuer: FakeIssuer, trick: str
) -> None:
    marker = new_marker()
    token = CLAIM_TRICKS[trick](forge_issuer)
    response = raw_request(forge_gateway.url, f"{ECHO}?m={marker}", headers=[bearer(token)])
    assert_invalid_token(forge_gateway, response)
    assert_never_forwarded(forge_gateway, marker)


def test_key_of_one_trusted_issuer_does_not_sign_for_another(
    forge_gateway: Gateway, forge_issuer: FakeIssuer
) -> None:
    # Signed by forge-idp's key, claiming to come from the real IdP (as alice of acme-idp).
    claims = access_claims(forge_gateway.idp.url, AUDIENCE, sub="alice")
    token = signed_token(forge_issuer.keys[0], {"typ": "at+jwt", "kid": FORGE_KID}, claims)
    response = raw_request(forge_gateway.url, ECHO, headers=[bearer(token)])
    assert_invalid_token(forge_gateway, response)


# --- 5. unknown-kid flood ------------------------------------------------------------------


def _flood(gateway: Gateway, issuer_url: str, key: RSAKey, count: int = 50) -> None:
    for _ in range(count):
        token = signed_token(
            key,
            {"typ": "at+jwt", "kid": secrets.token_urlsafe(12)},
            access_claims(issuer_url, AUDIENCE),
        )
        response = raw_request(gateway.url, ECHO, headers=[bearer(token)])
        assert response.status == 401, response.body[:300]
        assert response.json()["error"] == "invalid_token"


def test_unknown_kid_flood_costs_the_idp_a_bounded_number_of_jwks_fetches(
    gateway: Gateway, attacker_key: RSAKey
) -> None:
    def jwks_fetches() -> int:
        return gateway.idp.log().count("GET /jwks ")

    before = jwks_fetches()
    _flood(gateway, gateway.idp.url, attacker_key)
    time.sleep(0.3)
    # 2 workers, jwks_min_refresh_seconds = 30: at most one fetch per worker per interval,
    # two if the flood happens to straddle an interval boundary.
    assert jwks_fetches() - before <= 4


def test_unknown_kid_flood_on_one_worker_fetches_jwks_at_most_once_per_interval(
    forge_gateway: Gateway, forge_issuer: FakeIssuer, attacker_key: RSAKey
) -> None:
    before = forge_issuer.requests_for("/jwks")
    _flood(forge_gateway, forge_issuer.url, attacker_key)
    assert forge_issuer.requests_for("/jwks") - before <= 2


# --- 6. internal endpoints ---------------------------------------------------------------


def test_health_is_answered_by_the_gateway_itself(gateway: Gateway) -> None:
    for headers in ([], [alice(gateway)]):
        response = raw_request(gateway.url, "/_gateway/health", headers=headers)
        assert response.status == 200
        assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "target",
    [
        "/_gateway/anything",
        "/_gateway/api/echo",
        "/_gateway/../api/echo",
        "/_gateway/%2e%2e/api/echo",
        "/_gateway/..%2fapi/echo",
        "/_gateway%2f..%2fapi/echo",
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unknown_internal_path_is_404_and_never_forwarded(
    gateway: Gateway, target: str, method: str
) -> None:
    marker = new_marker()
    response = raw_request(
        gateway.url, f"{target}?m={marker}", method=method, headers=[alice(gateway)], body=b"{}"
    )
    assert response.status == 404, response.body[:300]
    assert response.json()["error"] == "not_found"
    assert_never_forwarded(gateway, marker)


@pytest.mark.parametrize(
    "target", ["/%5fgateway/health", "/%5Fgateway/anything", "/%5f%67ateway/x"]
)
def test_encoded_reserved_prefix_is_internal_or_refused_never_forwarded(
    gateway: Gateway, target: str
) -> None:
    marker = new_marker()
    response = raw_request(gateway.url, f"{target}?m={marker}", headers=[alice(gateway)])
    body = response.json()
    if response.status == 200:
        assert body == {"status": "ok"}
    else:
        assert response.status in (400, 403, 404)
        assert body["error"] in ("bad_path", "unknown_route", "not_found")
    assert_never_forwarded(gateway, marker)


@pytest.mark.parametrize("target", ["/_gateway", "/_gateway//health", "/_gateway//jwks.json"])
def test_internal_endpoints_never_redirect_to_the_client_supplied_host(
    gateway: Gateway, target: str
) -> None:
    response = raw_request(gateway.url, target, host="evil.example")
    assert response.header("Location") is None, response.header("Location")
    assert response.status == 404, response.status
    assert response.json()["error"] == "not_found"


def test_ready_reveals_no_urls_secrets_or_versions(gateway: Gateway) -> None:
    response = raw_request(gateway.url, "/_gateway/ready")
    assert response.status == 200
    text = response.body.decode()
    for secret in ("://", "127.0.0.1", "localhost", "sqlite", "postgres", "Token", UPSTREAM_TOKEN):
        assert secret not in text, secret
    for proc in (gateway.idp, gateway.opaque_idp, gateway.upstream):
        assert proc.url.rsplit(":", 1)[1] not in text
    assert not re.search(r"\d+\.\d+", text), text
    for name in ("Server", "X-Powered-By", "Via"):
        value = response.header(name) or ""
        assert not re.search(r"\d+\.\d+", value), (name, value)


# --- 7. magic health-check user agents ------------------------------------------------------


@pytest.mark.parametrize("user_agent", ["kube-probe/1.29", "ELB-HealthChecker/2.0", "GoogleHC/1.0"])
@pytest.mark.parametrize("path", [ECHO, f"{RECORDS}?limit=1"], ids=["echo", "records"])
def test_health_check_user_agents_get_no_free_pass(
    gateway: Gateway, user_agent: str, path: str
) -> None:
    marker = new_marker()
    sep = "&" if "?" in path else "?"
    response = raw_request(
        gateway.url,
        f"{path}{sep}m{marker}=1",
        headers=[("User-Agent", user_agent), ("X-Forwarded-For", "10.0.0.1")],
    )
    assert_denied(gateway, response, 401, "invalid_request")
    assert (response.header("WWW-Authenticate") or "").startswith("Bearer ")
    assert_never_forwarded(gateway, marker)


# --- 8. method confusion ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "OPTIONS", "PROPFIND"])
def test_unlisted_method_on_a_data_route_is_405_and_never_forwarded(
    gateway: Gateway, method: str
) -> None:
    marker = new_marker()
    token = gateway.token("alice")
    response = raw_request(
        gateway.url, f"{ECHO}?m={marker}", method=method, headers=[bearer(token)]
    )
    assert_denied(gateway, response, 405, "method_not_allowed")
    assert token.encode() not in response.body
    assert_never_forwarded(gateway, marker)


def test_connect_to_an_authority_is_refused_and_never_forwarded(gateway: Gateway) -> None:
    authority = gateway.upstream.url.split("//", 1)[1]
    before = gateway.upstream.log().count("CONNECT")
    response = raw_request(gateway.url, authority, method="CONNECT", headers=[alice(gateway)])
    assert_denied(gateway, response, 400, "bad_path")
    assert_never_forwarded(gateway)
    assert gateway.upstream.log().count("CONNECT") == before


def test_method_override_headers_are_not_forwarded(gateway: Gateway) -> None:
    overrides = [
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-HTTP-Method", "DELETE"),
        ("X-Method-Override", "DELETE"),
        ("X_HTTP_Method_Override", "DELETE"),
    ]
    response = raw_request(gateway.url, ECHO, headers=[alice(gateway), *overrides])
    seen = echo(response)
    assert seen["method"] == "GET"
    assert not any("method" in name for name in seen["headers"]), seen["headers"]
    assert "DELETE" not in json.dumps(seen)
    rows = gateway.db.rows(
        "SELECT method FROM access_log WHERE request_id = :rid",
        rid=response.header("X-Request-Id"),
    )
    assert [r.method for r in rows] == ["GET"]
