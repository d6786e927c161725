"""The gateway's signing keys out of the database: file signer, registration, rotation with
overlap, pinned verification, the RFC 7797 manifest JWS checked by a standard JOSE
library, and migration 0008 retiring keys whose private half the database held.

Over SQLite, and PostgreSQL when GATEWAY_TEST_POSTGRES is set; the CLI through its real
entry point (click's runner).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jws
from joserfc.jwk import OKPKey
from sqlalchemy import Engine, text

from gateway.audit.exposure import parse_exposure_query
from gateway.audit.manifest import (
    ManifestInvalid,
    ManifestResult,
    signature_document,
    verify_manifest,
)
from gateway.cli import main
from gateway.db.migrate import upgrade
from gateway.db.session import make_engine
from gateway.keys import GatewayKeys, KeysError
from gateway.keys.registry import ensure_registered, register_key, registered_keys
from gateway.keys.ring import KeyRing
from gateway.keys.signer import Ed25519FileSigner, generate_key_file, load_signer
from tests.conftest import _drop_postgres_db, _make_postgres_db, _postgres_server


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    server = name = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'keys.db'}"
    else:
        server = _postgres_server()
        if server is None:
            pytest.skip("PostgreSQL not configured: set GATEWAY_TEST_POSTGRES")
        name = f"gw_keys_{secrets.token_hex(4)}"
        url = _make_postgres_db(server, name)
    upgrade(url)
    engine = make_engine(url)
    yield url, engine
    engine.dispose()
    if server is not None and name is not None:
        _drop_postgres_db(server, name)


def new_signer(directory: Path, name: str = "signing.pem") -> Ed25519FileSigner:
    path = directory / name
    kid = generate_key_file(path)
    signer = Ed25519FileSigner(path)
    assert signer.kid == kid
    return signer


def test_key_file_is_private_and_the_kid_is_its_thumbprint(tmp_path: Path) -> None:
    signer = new_signer(tmp_path)
    assert (tmp_path / "signing.pem").stat().st_mode & 0o777 == 0o600
    assert Ed25519FileSigner(tmp_path / "signing.pem").kid == signer.kid  # same file, same kid
    with pytest.raises(FileExistsError):
        generate_key_file(tmp_path / "signing.pem")  # never overwrites a key
    jwk = signer.public_jwk()
    assert set(jwk) == {"kty", "crv", "x", "kid"} and "d" not in jwk


@pytest.mark.parametrize(
    "content",
    [b"", b"not a key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"],
)
def test_bad_key_files_are_refused_clearly(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(KeysError, match=r"bad\.pem"):
        Ed25519FileSigner(path)
    with pytest.raises(KeysError, match="no signing key"):
        load_signer(None, None, {})
    with pytest.raises(KeysError, match="cannot read"):
        Ed25519FileSigner(tmp_path / "missing.pem")


def test_a_plugged_in_signer_is_used_as_is(tmp_path: Path) -> None:
    signer = load_signer(None, "tests.test_keys:kms_signer", {"seed": "x"})
    assert signer.kid == "kms-key-1"
    with pytest.raises(KeysError, match="did not return a Signer"):
        load_signer(None, "tests.test_keys:not_a_signer", {})
    with pytest.raises(KeysError, match="ModuleNotFoundError"):
        load_signer(None, "no_such_module:factory", {})


class _Kms:
    """Stands in for a KMS client: the private key never leaves this object."""

    kid = "kms-key-1"

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()

    def public_jwk(self) -> dict:
        jwk = OKPKey.import_key(self._key.public_key()).as_dict(private=False)
        return {"kty": "OKP", "crv": "Ed25519", "x": jwk["x"], "kid": self.kid}

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def kms_signer(settings: dict) -> _Kms:
    assert settings == {"seed": "x"}
    return _Kms()


def not_a_signer(settings: dict) -> object:
    return object()


def test_assertions_and_signatures_check_against_the_registered_keys(
    db: tuple[str, Engine], tmp_path: Path
) -> None:
    _, engine = db
    signer = new_signer(tmp_path)
    with pytest.raises(KeysError, match="not registered"):
        ensure_registered(engine, signer, may_register=False)
    ensure_registered(engine, signer)  # registers it
    keys = GatewayKeys(engine, signer, audience="https://data.example")
    token = keys.sign({"sub": "acme-idp:alice"})
    published = OKPKey.import_key(keys.public_jwks(refresh=True)["keys"][0])
    from joserfc import jwt

    claims = jwt.decode(token, published, algorithms=["Ed25519"]).claims
    assert claims["sub"] == "acme-idp:alice" and claims["aud"] == "https://data.example"
    kid, signature = keys.sign_detached(b"payload")
    assert keys.verify_detached(kid, b"payload", signature)
    assert not keys.verify_detached(kid, b"payloaD", signature)
    # Verify-only keys (no signer) cannot sign.
    with pytest.raises(KeysError):
        GatewayKeys(engine, audience="x").sign({})


@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")
def test_manifest_jws_is_checked_by_a_standard_jose_library(
    db: tuple[str, Engine], tmp_path: Path
) -> None:
    _, engine = db
    signer = new_signer(tmp_path)
    register_key(engine, signer)
    keys = GatewayKeys(engine, signer, audience="x")
    manifest = tmp_path / "manifest.csv"
    manifest.write_bytes(b"record_id,project\nr-1,proj-1\n")
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    document = signature_document(
        keys,
        ManifestResult(digest, 1, manifest.stat().st_size),
        parse_exposure_query({"vendor": "acme"}, manifest=True),
    )
    # An outside auditor: the JWKS, `sha256sum`, and joserfc's RFC 7797 support.
    public = OKPKey.import_key(keys.public_jwks(refresh=True)["keys"][0])
    checked = jws.deserialize_compact(
        document["jws"], public, payload=digest.encode(), algorithms=["EdDSA"]
    )
    assert checked.headers() == {"alg": "EdDSA", "b64": False, "crit": ["b64"], "kid": signer.kid}
    with pytest.raises(Exception, match="signature"):
        jws.deserialize_compact(
            document["jws"], public, payload=("0" * 64).encode(), algorithms=["EdDSA"]
        )
    # And the gateway's own check, database keys and pinned keys alike.
    assert verify_manifest(keys.key_ring(), manifest, document) == digest
    pinned = tmp_path / "trusted.jwks.json"
    pinned.write_bytes(orjson.dumps(keys.public_jwks(refresh=True)))
    assert verify_manifest(KeyRing.from_file(pinned), manifest, document) == digest
    forged = {**document, "jws": document["jws"][:-4] + "AAAA"}
    with pytest.raises(ManifestInvalid, match="jws"):
        verify_manifest(keys.key_ring(), manifest, forged)
    other = tmp_path / "other.jwks.json"
    other.write_bytes(orjson.dumps({"keys": [new_signer(tmp_path, "other.pem").public_jwk()]}))
    with pytest.raises(ManifestInvalid, match="not among keys pinned"):
        verify_manifest(KeyRing.from_file(other), manifest, document)


def test_rotation_keeps_old_signatures_and_retires_the_old_key_after_the_overlap(
    db: tuple[str, Engine], tmp_path: Path
) -> None:
    url, engine = db
    old = new_signer(tmp_path, "old.pem")
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[database]
url = "{url}"
[[issuers]]
name = "i"
issuer = "https://idp.example"
audience = "a"
vendor = "v"
[upstream]
url = "http://127.0.0.1:9"
[keys]
signing_key_file = "{tmp_path / "old.pem"}"
"""
    )
    runner = CliRunner()
    env = {"GATEWAY_CONFIG": str(config)}
    result = runner.invoke(main, ["keys", "register"], env=env)
    assert result.exit_code == 0 and f"registered: {old.kid}" in result.output, result.output
    old_keys = GatewayKeys(engine, old, audience="a")
    kid, old_signature = old_keys.sign_detached(b"checkpoint")

    new_path = tmp_path / "new.pem"
    generated = runner.invoke(main, ["keys", "generate", "--out", str(new_path)])
    new_kid = generated.output.split()[0]
    rotated = runner.invoke(
        main,
        ["keys", "rotate", "--new-key-file", str(new_path), "--overlap-hours", "1"],
        env=env,
    )
    assert rotated.exit_code == 0, rotated.output
    listed = json.loads(runner.invoke(main, ["keys", "list", "--json"], env=env).output)
    by_kid = {key["kid"]: key for key in listed}
    assert by_kid[new_kid]["not_after"] is None
    ends = datetime.fromisoformat(by_kid[old.kid]["not_after"].replace("Z", "+00:00"))
    assert timedelta(minutes=59) < ends - datetime.now(UTC) <= timedelta(hours=1)
    # During the overlap both keys are published and the old one still signs.
    published = {k["kid"] for k in GatewayKeys(engine, audience="a").public_jwks()["keys"]}
    assert published == {old.kid, new_kid}
    ensure_registered(engine, old, may_register=False)
    # After it: the old key is refused for signing, and no longer published ...
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE signing_keys SET not_before = :b, not_after = :t WHERE kid = :k"),
            {
                "b": datetime.now(UTC) - timedelta(hours=1),
                "t": datetime.now(UTC) - timedelta(minutes=10),
                "k": old.kid,
            },
        )
    with pytest.raises(KeysError, match="retired"):
        ensure_registered(engine, old)
    published = {k["kid"] for k in GatewayKeys(engine, audience="a").public_jwks()["keys"]}
    assert published == {new_kid}
    # ... but what it signed while valid still verifies, against an exported pin too.
    ring = GatewayKeys(engine, audience="a").key_ring()
    assert ring.check(kid, b"checkpoint", old_signature, datetime.now(UTC) - timedelta(minutes=11))
    # A checkpoint claiming a time after the key's end (beyond the clock slack) does not.
    late = datetime.now(UTC)
    assert not ring.check(kid, b"checkpoint", old_signature, late)
    exported = tmp_path / "trusted.jwks.json"
    out = runner.invoke(main, ["keys", "export-jwks", "--out", str(exported)], env=env)
    assert out.exit_code == 0, out.output
    assert {k["kid"] for k in json.loads(exported.read_text())["keys"]} == {old.kid, new_kid}
    assert all("d" not in k for k in json.loads(exported.read_text())["keys"])


def test_migration_0008_retires_database_held_keys_and_keeps_them_checkable(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'legacy.db'}"
    upgrade(url, "0007")
    engine = make_engine(url)
    legacy = OKPKey.generate_key("Ed25519", parameters={"kid": "legacy-kid"})
    signature = legacy.private_key.sign(b"old checkpoint")  # type: ignore[union-attr]
    created = datetime.now(UTC) - timedelta(days=30)
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO signing_keys (kid, private_jwk, created_at) VALUES (:k, :j, :c)"),
            {"k": "legacy-kid", "j": json.dumps(legacy.as_dict(private=True)), "c": created},
        )
    upgrade(url)
    with engine.connect() as connection:
        columns = {row[1] for row in connection.execute(text("PRAGMA table_info(signing_keys)"))}
        stored = connection.execute(text("SELECT public_jwk FROM signing_keys")).scalar_one()
    assert "private_jwk" not in columns
    assert "d" not in json.loads(stored)
    (key,) = registered_keys(engine)
    assert key.source == "database" and key.not_after is not None
    assert key.not_after <= datetime.now(UTC)
    import base64

    encoded = base64.urlsafe_b64encode(signature).decode().rstrip("=")
    ring = KeyRing.from_registered(registered_keys(engine))
    assert ring.check("legacy-kid", b"old checkpoint", encoded, created + timedelta(days=1))
    engine.dispose()


def test_audit_verify_says_whether_keys_are_pinned(db: tuple[str, Engine], tmp_path: Path) -> None:
    url, engine = db
    if url.startswith("postgresql"):
        pytest.skip("the CLI is exercised once, on SQLite")
    signer = new_signer(tmp_path)
    register_key(engine, signer)
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[database]\nurl = "{url}"\n[[issuers]]\nname = "i"\nissuer = "https://i.example"\n'
        'audience = "a"\nvendor = "v"\n[upstream]\nurl = "http://127.0.0.1:9"\n'
    )
    runner = CliRunner()
    env = {"GATEWAY_CONFIG": str(config)}
    unpinned = runner.invoke(main, ["audit", "verify"], env=env)
    assert unpinned.exit_code == 0 and "NOT pinned" in unpinned.output, unpinned.output
    jwks = tmp_path / "trusted.jwks.json"
    jwks.write_bytes(orjson.dumps({"keys": [signer.public_jwk()]}))
    pinned = runner.invoke(main, ["audit", "verify", "--jwks", str(jwks)], env=env)
    assert pinned.exit_code == 0 and "pinned from" in pinned.output, pinned.output
    assert "NOT pinned" not in pinned.output
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"{}")
    refused = runner.invoke(main, ["audit", "verify", "--jwks", str(garbage)], env=env)
    assert refused.exit_code == 1 and "no Ed25519 JWK" in refused.output
