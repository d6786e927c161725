"""Gateway configuration: one TOML file, environment overrides, `${ENV}` secrets.

A bad configuration is refused at start with a message that names the key and the
problem, so an operator never finds out about a typo from a 500 at request time.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from gateway.anomaly.config import AnomalyConfig, resolve_anomaly_paths
from gateway.archive.config import ArchiveConfig
from gateway.catalogue.config import CatalogueConfig
from gateway.configbase import (
    NOT_EMPTY_SCHEMA,
    ConfigError,
    HostPort,
    HttpURL,
    Name,
    NonNegativeFloat,
    NonNegativeInt,
    NotEmpty,
    PositiveFloat,
    PositiveInt,
    Problem,
    ReadableFile,
    Section,
    Share,
    Text,
    read_secret_file,
    secret_from_file,
    validated,
)
from gateway.console.config import ConsoleConfig, LockKind
from gateway.keys.config import KeysConfig
from gateway.metrics.config import MetricsConfig
from gateway.notify.config import NotifyConfig
from gateway.route_config import RouteConfig

__all__ = [
    "AuditConfig",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "GatewaySettings",
    "IssuerConfig",
    "LockoutConfig",
    "PolicyConfig",
    "ProjectConfig",
    "RouteConfig",
    "ServerConfig",
    "UpstreamConfig",
    "config_schema",
    "load_config",
    "parse_config",
]

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


def _algorithms(algorithms: tuple[str, ...]) -> tuple[str, ...]:
    if not algorithms:
        raise ValueError("must be a non-empty list")
    for alg in algorithms:
        if alg not in ALLOWED_ALGORITHMS:
            raise ValueError(
                f"{alg!r} is not allowed (asymmetric only: {sorted(ALLOWED_ALGORITHMS)})"
            )
    return algorithms


class IssuerConfig(Section):
    """A trusted IdP (`[[issuers]]`): whose tokens are accepted and which vendor they speak for."""

    name: Name
    """Short name; prefixes policy subjects (`acme-idp:alice`)."""
    issuer: HttpURL
    """Issuer URL: must equal the `iss` of its tokens and of its discovery document."""
    audience: Text
    """The `aud` an access token must carry."""
    vendor: Name | None = None
    """The vendor every token of this issuer speaks for (or `vendor_claim`)."""
    vendor_claim: Text | None = None
    """The claim naming the token's vendor, for an IdP shared by several vendors."""
    roles_claim: Text = "roles"
    """The claim holding admin/auditor roles."""
    roles_trusted: bool = False
    """Admin/auditor roles are honoured only from issuers the lab trusts for them."""
    algorithms: Annotated[tuple[str, ...], Field(strict=False), AfterValidator(_algorithms)] = (
        "RS256",
        "ES256",
        "EdDSA",
        "Ed25519",
    )
    discovery_url: HttpURL | None = None
    leeway_seconds: NonNegativeInt = 30
    jwks_min_refresh_seconds: NonNegativeFloat = 30.0
    jwks_ttl_seconds: NonNegativeFloat = 600.0
    """Discovery and JWKS are refetched this often (shorter if the IdP's Cache-Control says so),
    so a key the IdP withdraws stops validating within it.
    """
    jwks_stale_seconds: NonNegativeFloat = 300.0
    """How long past their time the last keys serve while the IdP cannot be reached."""
    opaque_tokens: Literal["auto", "introspection", "userinfo", "reject"] = "reject"
    """Opaque (non-JWT) access tokens: "auto" uses RFC 7662 introspection when the issuer
    advertises it and we hold client credentials, else userinfo. Off by default: an opaque
    token names no issuer, so only one issuer may be asked about them.
    """
    client_id: Text | None = None
    client_secret: Text | None = Field(default=None, repr=False)
    client_secret_file: ReadableFile | None = Field(default=None, exclude=True)
    """The client secret kept in a file (a mounted secret) instead of in this file."""
    opaque_cache_seconds: NonNegativeFloat = 60.0
    ca_file: ReadableFile | None = None
    """CA bundle for the IdP's TLS certificate (default: the system's)."""

    @model_validator(mode="before")
    @classmethod
    def _secret_from_file(cls, data: Any) -> Any:
        return secret_from_file(data)

    @field_validator("issuer")
    @classmethod
    def _without_final_slash(cls, issuer: str) -> str:
        return issuer.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> IssuerConfig:
        if (self.vendor is None) == (self.vendor_claim is None):
            raise Problem("vendor", "set exactly one of 'vendor' or 'vendor_claim'")
        if self.opaque_tokens == "introspection" and not (self.client_id and self.client_secret):
            raise Problem("client_id", "introspection needs client_id and client_secret")
        return self

    @property
    def discovery(self) -> str:
        if self.discovery_url:
            return self.discovery_url
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


class UpstreamConfig(Section):
    """The dataset service behind the gateway (`[upstream]`)."""

    url: HttpURL
    """Base URL of the dataset service."""
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    """Headers sent with every upstream request (the service credential; use `${ENV}`)."""
    header_files: dict[str, ReadableFile] = Field(default_factory=dict, exclude=True)
    """Header values kept in files (mounted secrets), by header name."""
    connect_timeout: PositiveFloat = 3.0
    """Seconds to connect to the upstream."""
    read_timeout: PositiveFloat = 30.0
    """Seconds the upstream may stay silent while answering."""
    pool_size: PositiveInt = 32
    """Kept-alive upstream connections per worker."""
    max_record_body_bytes: PositiveInt = 32 * 1024 * 1024
    """A record route's answer larger than this is refused (it is parsed whole)."""
    max_json_values: PositiveInt = 1_000_000
    """Upper bound on JSON values in a record body, counted before parsing: parsed, each small
    value costs ~50-100 bytes of memory, so this bounds a worker's memory.
    """
    ca_file: ReadableFile | None = None
    """TLS to an https upstream: the CA bundle that signs its certificate (default: the
    system's), and the gateway's client certificate and key for mutual TLS.
    """
    client_cert_file: ReadableFile | None = None
    client_key_file: ReadableFile | None = None

    @model_validator(mode="before")
    @classmethod
    def _headers_from_files(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("header_files"), dict):
            return data
        headers = data.get("headers", {})
        if not isinstance(headers, dict):
            return data  # the field's own check names it
        headers = dict(headers)
        for name, path in data["header_files"].items():
            if name in headers:
                raise Problem(f"header_files.{name}", "also set in upstream.headers")
            headers[name] = read_secret_file(path, f"header_files.{name}")
        return {**data, "headers": headers}

    @model_validator(mode="after")
    def _tls_fits(self) -> UpstreamConfig:
        files = [
            name
            for name in ("ca_file", "client_cert_file", "client_key_file")
            if getattr(self, name) is not None
        ]
        if files and not self.url.startswith("https://"):
            raise Problem(files[0], "only applies to an https upstream")
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise Problem("client_cert_file", "set with upstream.client_key_file")
        return self


class DatabaseConfig(Section):
    """Where the policy, locks and the access log live (`[database]`)."""

    url: Text | None = Field(default=None, repr=False)
    """SQLAlchemy URL: `postgresql+psycopg://user@host/db` (or `sqlite:///...` to try it)."""
    url_file: ReadableFile | None = Field(default=None, exclude=True)
    """The URL (it holds the password) kept in a file: a mounted secret."""

    @model_validator(mode="before")
    @classmethod
    def _url_from_file(cls, data: Any) -> Any:
        return secret_from_file(data, "url")

    @model_validator(mode="after")
    def _has_url(self) -> DatabaseConfig:
        if self.url is None:
            raise Problem("url", "missing")
        return self


class AuditConfig(Section):
    batch_max_rows: PositiveInt = 5000
    commit_timeout_seconds: PositiveFloat = 10.0
    checkpoint_interval_seconds: PositiveFloat = 10.0
    """Each audit writer signs a checkpoint of its chain head this often, also when idle."""
    retention_days: NonNegativeInt = 0
    """`gateway audit prune` without --before removes rows older than this; 0 keeps all."""
    partition_days_ahead: PositiveInt = 7
    """PostgreSQL: daily partitions of the access log made this many days ahead."""
    archive: ArchiveConfig = ArchiveConfig()
    """`[audit.archive]`: where old partitions go as signed Parquet (gateway/archive)."""


class PolicyConfig(Section):
    model: ReadableFile = Field(default_factory=lambda: str(DEFAULT_MODEL_PATH))
    """The Casbin model: the one in the package unless an operator brings their own."""
    poll_interval_seconds: PositiveFloat = 1.0
    decision_cache_size: PositiveInt = 200_000
    actions: Annotated[tuple[Name, ...], Field(strict=False), NotEmpty, NOT_EMPTY_SCHEMA] = (
        "read",
        "annotate",
        "review",
        "export",
    )
    max_removal_share: Share = 0.2
    """An apply or import removing more than this share of the rules must be confirmed."""


class LockoutConfig(Section):
    poll_interval_seconds: PositiveFloat = 0.25
    stale_after_seconds: PositiveFloat = 5.0
    """Past this long without a confirmed lock state, contractor traffic is refused."""
    exposure_days: PositiveInt = 30
    two_person_lift: Annotated[tuple[LockKind, ...], Field(strict=False)] = ("vendor", "issuer")
    """Lock kinds whose lift needs a second admin's approval (the requester cannot approve)."""
    lift_request_ttl_minutes: PositiveInt = 60
    """How long a lift request waits for its approval."""

    @model_validator(mode="after")
    def _stale_after_polls(self) -> LockoutConfig:
        if self.stale_after_seconds <= self.poll_interval_seconds:
            raise Problem("stale_after_seconds", "must be longer than poll_interval_seconds")
        return self


class ProjectConfig(Section):
    """A project admins may grant on; `restricted` ones refuse vendor-wide grants."""

    name: Text
    restricted: bool = False


class GatewaySettings(Section):
    assertion_ttl_seconds: PositiveInt = 60
    trusted_proxy_hops: NonNegativeInt = 0
    """Number of reverse proxies in front of us whose X-Forwarded-For we believe."""
    token_cache_size: PositiveInt = 100_000


class ServerConfig(Section):
    """`gateway serve`'s gunicorn settings (its flags override them)."""

    bind: HostPort = "127.0.0.1:8080"
    workers: NonNegativeInt = 0
    """Worker processes; 0 = one per CPU (at least 2)."""
    threads: PositiveInt = 16
    keep_alive: PositiveInt = 5
    """Seconds an idle client connection is kept: above a pooling proxy's idle timeout."""
    graceful_timeout: PositiveInt = 8
    """Seconds workers get to finish requests on stop; keep it below the container runtime's stop
    grace (Docker: 10 s unless --stop-timeout says otherwise).
    """
    max_requests: NonNegativeInt = 0
    """Recycle a worker after this many requests (0 = never), +/- up to the jitter."""
    max_requests_jitter: NonNegativeInt = 0
    access_log: bool = True
    """One log line per request (method, path, route, status, decision, duration)."""
    forwarded_allow_ips: Annotated[tuple[str, ...], Field(strict=False)] = ("127.0.0.1", "::1")
    """Proxies whose X-Forwarded-Proto gunicorn believes, when gateway.trusted_proxy_hops
    > 0 (none otherwise); "*" for any."""

    @model_validator(mode="after")
    def _jitter_needs_recycling(self) -> ServerConfig:
        if self.max_requests_jitter and not self.max_requests:
            raise Problem("max_requests_jitter", "needs server.max_requests")
        return self


class Config(Section):
    database: DatabaseConfig
    issuers: Annotated[tuple[IssuerConfig, ...], Field(strict=False), NotEmpty, NOT_EMPTY_SCHEMA]
    upstream: UpstreamConfig
    routes: Annotated[tuple[RouteConfig, ...], Field(strict=False)] = ()
    audit: AuditConfig = AuditConfig()
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    gateway: GatewaySettings = GatewaySettings()
    projects: Annotated[tuple[ProjectConfig, ...], Field(strict=False)] = ()
    lockout: LockoutConfig = LockoutConfig()
    anomaly: AnomalyConfig = AnomalyConfig()
    """Detector thresholds for `gateway anomalies` (validated here, so a bad table stops the
    gateway and every command at start-up, not the first scan).
    """
    catalogue: CatalogueConfig = CatalogueConfig()
    server: ServerConfig = ServerConfig()
    keys: KeysConfig = KeysConfig()
    console: ConsoleConfig = ConsoleConfig()
    metrics: MetricsConfig = MetricsConfig()
    notify: NotifyConfig = NotifyConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        names = [issuer.name for issuer in self.issuers]
        if len(set(names)) != len(names):
            raise Problem("issuers", "issuer names must be unique")
        if len({issuer.issuer for issuer in self.issuers}) != len(self.issuers):
            raise Problem("issuers", "each issuer URL may be configured once")
        opaque = [issuer.name for issuer in self.issuers if issuer.opaque_tokens != "reject"]
        if len(opaque) > 1:
            # Sending one IdP's opaque token to another would hand it a replayable credential.
            raise Problem(
                "issuers.opaque_tokens", f"only one issuer may accept opaque tokens, not {opaque}"
            )
        if len({p.name for p in self.projects}) != len(self.projects):
            raise Problem("projects", "project names must be unique")
        trusted = {issuer.name for issuer in self.issuers if issuer.roles_trusted}
        for name in self.console.issuers:
            if name not in trusted:
                # A console role may only come from an issuer trusted for roles.
                raise Problem("console.issuers", f"{name!r} is not a roles_trusted issuer")
        return self

    @property
    def database_url(self) -> str:
        assert self.database.url is not None  # the model refuses a database without one
        return self.database.url


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
    """A config file's tables → Config, or a ConfigError naming the key at fault."""
    if not isinstance(raw, dict):
        raise ConfigError("config", "must be a table")
    raw = dict(raw)
    # `${ENV}` references are expanded where secrets and addresses live.
    for section in ("database", "issuers", "upstream", "console", "metrics", "notify", "audit"):
        if section in raw:
            raw[section] = expand_env(raw[section], section, environ)
    return validated(Config, raw)


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the config file (what `gateway config schema` prints)."""
    schema = Config.model_json_schema(mode="validation")
    schema["title"] = "Contractor access gateway configuration"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
