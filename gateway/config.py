"""Gateway configuration: one TOML file, environment overrides, `${ENV}` secrets.

A bad configuration is refused at start with a message that names the key and the
problem, so an operator never finds out about a typo from a 500 at request time.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.anomaly.config import (
    AnomalyConfig,
    AnomalyConfigError,
    parse_anomaly_table,
    resolve_anomaly_paths,
)
from gateway.catalogue.config import CatalogueConfig, parse_catalogue_table
from gateway.configbase import NAME as _NAME
from gateway.configbase import ConfigError, existing_file, read_secret_file
from gateway.configbase import config_bool as _bool
from gateway.configbase import config_str as _str
from gateway.keys.config import KeysConfig, parse_keys_table
from gateway.route_config import RouteConfig, parse_route

# The Casbin model ships inside the package, so an installed wheel finds it.
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "policy" / "model.conf"

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
ALLOWED_ALGORITHMS = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "EdDSA",
        "Ed25519",
    }
)


@dataclass(frozen=True)
class IssuerConfig:
    name: str
    issuer: str
    audience: str
    vendor: str | None = None
    vendor_claim: str | None = None
    roles_claim: str = "roles"
    # Admin/auditor roles are honoured only from issuers the lab trusts for them.
    roles_trusted: bool = False
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA", "Ed25519")
    discovery_url: str | None = None
    leeway_seconds: int = 30
    jwks_min_refresh_seconds: float = 30.0
    # Discovery and JWKS are refetched this often (shorter if the IdP's Cache-Control
    # says so), so a key the IdP withdraws stops validating within it.
    jwks_ttl_seconds: float = 600.0
    # How long past their time the last keys serve while the IdP cannot be reached.
    jwks_stale_seconds: float = 300.0
    # Opaque (non-JWT) access tokens: "auto" uses RFC 7662 introspection when the
    # issuer advertises it and we hold client credentials, else userinfo. Off by default:
    # an opaque token names no issuer, so only one issuer may be asked about them.
    opaque_tokens: str = "reject"
    client_id: str | None = None
    client_secret: str | None = None
    opaque_cache_seconds: float = 60.0
    # CA bundle for the IdP's TLS certificate (default: the system's).
    ca_file: str | None = None

    @property
    def discovery(self) -> str:
        if self.discovery_url:
            return self.discovery_url
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


@dataclass(frozen=True)
class UpstreamConfig:
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    connect_timeout: float = 3.0
    read_timeout: float = 30.0
    pool_size: int = 32
    max_record_body_bytes: int = 32 * 1024 * 1024
    # Upper bound on JSON values in a record body, counted before parsing: parsed, each
    # small value costs ~50-100 bytes of memory, so this bounds a worker's memory.
    max_json_values: int = 1_000_000
    # TLS to an https upstream: the CA bundle that signs its certificate (default: the
    # system's), and the gateway's client certificate and key for mutual TLS.
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None


@dataclass(frozen=True)
class AuditConfig:
    batch_max_rows: int = 5000
    commit_timeout_seconds: float = 10.0
    # Each audit writer signs a checkpoint of its chain head this often, also when idle.
    checkpoint_interval_seconds: float = 10.0
    # `gateway audit prune` without --before removes rows older than this; 0 keeps all.
    retention_days: int = 0


@dataclass(frozen=True)
class PolicyConfig:
    model: str = str(DEFAULT_MODEL_PATH)
    poll_interval_seconds: float = 1.0
    decision_cache_size: int = 200_000
    actions: tuple[str, ...] = ("read", "annotate", "review", "export")
    # An apply or import removing more than this share of the rules must be confirmed.
    max_removal_share: float = 0.2


@dataclass(frozen=True)
class LockoutConfig:
    poll_interval_seconds: float = 0.25
    # Past this long without a confirmed lock state, contractor traffic is refused.
    stale_after_seconds: float = 5.0
    exposure_days: int = 30


@dataclass(frozen=True)
class ProjectConfig:
    """A project admins may grant on; `restricted` ones refuse vendor-wide grants."""

    name: str
    restricted: bool = False


@dataclass(frozen=True)
class GatewaySettings:
    assertion_ttl_seconds: int = 60
    # Number of reverse proxies in front of us whose X-Forwarded-For we believe.
    trusted_proxy_hops: int = 0
    token_cache_size: int = 100_000


@dataclass(frozen=True)
class ServerConfig:
    """`gateway serve`'s gunicorn settings (its flags override them)."""

    bind: str = "127.0.0.1:8080"
    workers: int = 2
    threads: int = 16
    # Seconds an idle client connection is kept: above a pooling proxy's idle timeout.
    keep_alive: int = 5
    # Seconds workers get to finish requests on stop; keep it below the container
    # runtime's stop grace (Docker: 10 s unless --stop-timeout says otherwise).
    graceful_timeout: int = 8
    # Recycle a worker after this many requests (0 = never), +/- up to the jitter.
    max_requests: int = 0
    max_requests_jitter: int = 0


@dataclass(frozen=True)
class Config:
    database_url: str
    issuers: tuple[IssuerConfig, ...]
    upstream: UpstreamConfig
    routes: tuple[RouteConfig, ...]
    audit: AuditConfig = AuditConfig()
    policy: PolicyConfig = PolicyConfig()
    gateway: GatewaySettings = GatewaySettings()
    projects: tuple[ProjectConfig, ...] = ()
    lockout: LockoutConfig = LockoutConfig()
    # Detector thresholds for `gateway anomalies` (validated here, so a bad table stops
    # the gateway and every command at start-up, not the first scan).
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    catalogue: CatalogueConfig = field(default_factory=CatalogueConfig)
    server: ServerConfig = ServerConfig()
    keys: KeysConfig = field(default_factory=KeysConfig)


def expand_env(value: Any, key: str, environ: Mapping[str, str] | None = None) -> Any:
    """Replace `${NAME}` in strings with the environment's value; a missing one is an error."""
    env = os.environ if environ is None else environ
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                raise ConfigError(key, f"environment variable {name} is not set")
            return env[name]

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, f"{key}.{k}", env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{key}[{i}]", env) for i, v in enumerate(value)]
    return value


def apply_env_overrides(raw: dict[str, Any], environ: dict[str, str]) -> None:
    """`GATEWAY_DATABASE__URL=...` overrides `[database] url`; values parse as TOML if they can."""
    for name, text in environ.items():
        if not name.startswith("GATEWAY_") or "__" not in name:
            continue
        path = [part.lower() for part in name[len("GATEWAY_") :].split("__")]
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(path), f"{name} overrides a value that is not a table")
            node = child
        node[path[-1]] = value


def load_config(
    path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None
) -> Config:
    environ = dict(os.environ if environ is None else environ)
    path = path or environ.get("GATEWAY_CONFIG")
    if not path:
        raise ConfigError(
            "GATEWAY_CONFIG", "no configuration file given (--config or GATEWAY_CONFIG)"
        )
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("GATEWAY_CONFIG", f"file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("GATEWAY_CONFIG", f"{path} is not valid TOML: {error}") from None
    resolve_anomaly_paths(raw.get("anomaly"), path)
    apply_env_overrides(raw, environ)
    return parse_config(raw, environ)


def parse_config(raw: dict[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    known = {
        "database",
        "issuers",
        "upstream",
        "routes",
        "audit",
        "policy",
        "gateway",
        "projects",
        "lockout",
        "anomaly",
        "catalogue",
        "server",
        "keys",
    }
    for key in raw:
        if key not in known:
            raise ConfigError(key, f"unknown section (expected one of {sorted(known)})")
    database = _table(raw, "database")
    for key in database:
        if key not in ("url", "url_file"):
            raise ConfigError(f"database.{key}", "unknown key")
    if "url_file" in database:
        if "url" in database:
            raise ConfigError("database.url_file", "set url or url_file, not both")
        database_url = read_secret_file(database["url_file"], "database.url_file")
    else:
        database_url = _str(
            expand_env(database.get("url"), "database.url", environ), "database.url"
        )
    issuers = tuple(
        _issuer(expand_env(item, f"issuers[{i}]", environ), f"issuers[{i}]")
        for i, item in enumerate(_list(raw, "issuers"))
    )
    if not issuers:
        raise ConfigError("issuers", "at least one trusted issuer is required")
    names = [issuer.name for issuer in issuers]
    if len(set(names)) != len(names):
        raise ConfigError("issuers", "issuer names must be unique")
    if len({issuer.issuer for issuer in issuers}) != len(issuers):
        raise ConfigError("issuers", "each issuer URL may be configured once")
    opaque = [issuer.name for issuer in issuers if issuer.opaque_tokens != "reject"]
    if len(opaque) > 1:
        # Sending one IdP's opaque token to another would hand it a replayable credential.
        raise ConfigError(
            "issuers.opaque_tokens", f"only one issuer may accept opaque tokens, not {opaque}"
        )
    upstream = _upstream(expand_env(_table(raw, "upstream"), "upstream", environ))
    routes = tuple(parse_route(item, f"routes[{i}]") for i, item in enumerate(_list(raw, "routes")))
    audit_raw = raw.get("audit", {})
    policy_raw = raw.get("policy", {})
    gateway_raw = raw.get("gateway", {})
    return Config(
        database_url=database_url,
        issuers=issuers,
        upstream=upstream,
        routes=routes,
        audit=_build(AuditConfig, audit_raw, "audit"),
        policy=_policy(policy_raw),
        gateway=_build(GatewaySettings, gateway_raw, "gateway"),
        projects=_projects(raw),
        lockout=_build(LockoutConfig, raw.get("lockout", {}), "lockout"),
        anomaly=_anomaly(raw.get("anomaly")),
        catalogue=parse_catalogue_table(raw.get("catalogue")),
        server=_server(raw.get("server", {})),
        keys=parse_keys_table(raw.get("keys")),
    )


def _server(raw: Any) -> ServerConfig:
    server = _build(ServerConfig, raw, "server")
    host, _, port = server.bind.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("server.bind", "must be HOST:PORT, e.g. 0.0.0.0:8080")
    if server.max_requests_jitter and not server.max_requests:
        raise ConfigError("server.max_requests_jitter", "needs server.max_requests")
    return server


def _anomaly(raw: Any) -> AnomalyConfig:
    try:
        return parse_anomaly_table(raw)
    except AnomalyConfigError as error:
        raise ConfigError(
            f"anomaly.{error.key}" if error.key else "anomaly", error.problem
        ) from None


def _policy(raw: Any) -> PolicyConfig:
    if not isinstance(raw, dict):
        raise ConfigError("policy", "must be a table")
    actions = raw.get("actions", list(PolicyConfig.actions))
    if (
        not isinstance(actions, list)
        or not actions
        or not all(isinstance(a, str) and _NAME.match(a) for a in actions)
    ):
        raise ConfigError("policy.actions", "must be a non-empty list of action names")
    base = _build(PolicyConfig, {k: v for k, v in raw.items() if k != "actions"}, "policy")
    if base.max_removal_share > 1:
        raise ConfigError("policy.max_removal_share", "is a share: at most 1")
    return PolicyConfig(**{**base.__dict__, "actions": tuple(actions)})


def _projects(raw: dict[str, Any]) -> tuple[ProjectConfig, ...]:
    projects = []
    for i, item in enumerate(_list(raw, "projects")):
        key = f"projects[{i}]"
        for name in item:
            if name not in ("name", "restricted"):
                raise ConfigError(f"{key}.{name}", "unknown key")
        name = _str(item.get("name"), f"{key}.name")
        restricted = item.get("restricted", False)
        if not isinstance(restricted, bool):
            raise ConfigError(f"{key}.restricted", "must be true or false")
        projects.append(ProjectConfig(name=name, restricted=restricted))
    if len({p.name for p in projects}) != len(projects):
        raise ConfigError("projects", "project names must be unique")
    return tuple(projects)


def _table(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise ConfigError(key, "missing table" if value is None else "must be a table")
    return value


def _list(raw: dict[str, Any], key: str) -> list[Any]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(key, "must be an array of tables ([[" + key + "]])")
    return value


def _build(cls: type, raw: Any, key: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(key, "must be a table")
    fields = cls.__dataclass_fields__
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in fields:
            raise ConfigError(f"{key}.{name}", "unknown key")
        default = fields[name].default
        if isinstance(default, bool) or not isinstance(default, int | float | str):
            values[name] = value
            continue
        expected = (int, float) if isinstance(default, float) else type(default)
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ConfigError(f"{key}.{name}", f"must be a {type(default).__name__}")
        # A key whose default is 0 may be 0 (e.g. no trusted proxies); others must be > 0.
        if isinstance(value, int | float) and (value < 0 or (value == 0 and default != 0)):
            raise ConfigError(f"{key}.{name}", "must be positive")
        values[name] = value
    return cls(**values)


def _issuer(raw: dict[str, Any], key: str) -> IssuerConfig:
    allowed = set(IssuerConfig.__dataclass_fields__) | {"client_secret_file"}
    for name in raw:
        if name not in allowed:
            raise ConfigError(f"{key}.{name}", "unknown key")
    if "client_secret_file" in raw:
        if "client_secret" in raw:
            raise ConfigError(f"{key}.client_secret_file", "set client_secret or its file")
        secret = read_secret_file(raw["client_secret_file"], f"{key}.client_secret_file")
        raw = {k: v for k, v in raw.items() if k != "client_secret_file"}
        raw["client_secret"] = secret
    name = _str(raw.get("name"), f"{key}.name")
    if not _NAME.match(name):
        raise ConfigError(f"{key}.name", "use lower-case letters, digits, '.', '_' or '-'")
    issuer = _str(raw.get("issuer"), f"{key}.issuer")
    if not issuer.startswith(("https://", "http://")):
        raise ConfigError(f"{key}.issuer", "must be an http(s) URL")
    _str(raw.get("audience"), f"{key}.audience")
    vendor = _str(raw.get("vendor"), f"{key}.vendor", optional=True)
    vendor_claim = _str(raw.get("vendor_claim"), f"{key}.vendor_claim", optional=True)
    if (vendor is None) == (vendor_claim is None):
        raise ConfigError(f"{key}.vendor", "set exactly one of 'vendor' or 'vendor_claim'")
    if vendor is not None and not _NAME.match(vendor):
        raise ConfigError(f"{key}.vendor", "use lower-case letters, digits, '.', '_' or '-'")
    algorithms = raw.get("algorithms", list(IssuerConfig.algorithms))
    if not isinstance(algorithms, list) or not algorithms:
        raise ConfigError(f"{key}.algorithms", "must be a non-empty list")
    for alg in algorithms:
        if alg not in ALLOWED_ALGORITHMS:
            raise ConfigError(
                f"{key}.algorithms",
                f"{alg!r} is not allowed (asymmetric only: {sorted(ALLOWED_ALGORITHMS)})",
            )
    opaque = raw.get("opaque_tokens", "reject")
    if opaque not in ("auto", "introspection", "userinfo", "reject"):
        raise ConfigError(f"{key}.opaque_tokens", "must be auto, introspection, userinfo or reject")
    if opaque == "introspection" and not (raw.get("client_id") and raw.get("client_secret")):
        raise ConfigError(f"{key}.client_id", "introspection needs client_id and client_secret")
    for numeric in (
        "leeway_seconds",
        "jwks_min_refresh_seconds",
        "jwks_ttl_seconds",
        "jwks_stale_seconds",
        "opaque_cache_seconds",
    ):
        if numeric in raw and (
            isinstance(raw[numeric], bool)
            or not isinstance(raw[numeric], int | float)
            or raw[numeric] < 0
        ):
            raise ConfigError(f"{key}.{numeric}", "must be a non-negative number")
    return IssuerConfig(
        name=name,
        issuer=issuer.rstrip("/"),
        audience=raw["audience"],
        vendor=vendor,
        vendor_claim=vendor_claim,
        roles_claim=raw.get("roles_claim", "roles"),
        roles_trusted=_bool(raw.get("roles_trusted", False), f"{key}.roles_trusted"),
        algorithms=tuple(algorithms),
        discovery_url=raw.get("discovery_url"),
        leeway_seconds=int(raw.get("leeway_seconds", 30)),
        jwks_min_refresh_seconds=float(raw.get("jwks_min_refresh_seconds", 30.0)),
        jwks_ttl_seconds=float(raw.get("jwks_ttl_seconds", 600.0)),
        jwks_stale_seconds=float(raw.get("jwks_stale_seconds", 300.0)),
        opaque_tokens=opaque,
        client_id=raw.get("client_id"),
        client_secret=raw.get("client_secret"),
        opaque_cache_seconds=float(raw.get("opaque_cache_seconds", 60.0)),
        ca_file=(
            existing_file(raw["ca_file"], f"{key}.ca_file")
            if raw.get("ca_file") is not None
            else None
        ),
    )


def _upstream(raw: dict[str, Any]) -> UpstreamConfig:
    url = _str(raw.get("url"), "upstream.url")
    if not url.startswith(("http://", "https://")):
        raise ConfigError("upstream.url", "must be an http(s) URL")
    headers = raw.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigError("upstream.headers", "must be a table of string values")
    header_files = raw.get("header_files", {})
    if not isinstance(header_files, dict):
        raise ConfigError("upstream.header_files", "must be a table of file paths")
    headers = dict(headers)
    for name, path in header_files.items():
        if name in headers:
            raise ConfigError(f"upstream.header_files.{name}", "also set in upstream.headers")
        headers[name] = read_secret_file(path, f"upstream.header_files.{name}")
    files = {}
    for name in ("ca_file", "client_cert_file", "client_key_file"):
        if raw.get(name) is not None:
            files[name] = existing_file(raw[name], f"upstream.{name}")
    if files and not url.startswith("https://"):
        raise ConfigError(f"upstream.{next(iter(files))}", "only applies to an https upstream")
    if ("client_cert_file" in files) != ("client_key_file" in files):
        raise ConfigError("upstream.client_cert_file", "set with upstream.client_key_file")
    skip = ("url", "headers", "header_files", "ca_file", "client_cert_file", "client_key_file")
    rest = {k: v for k, v in raw.items() if k not in skip}
    base = _build(UpstreamConfig, {"url": url, **rest}, "upstream")
    return UpstreamConfig(**{**base.__dict__, "headers": headers, **files})
