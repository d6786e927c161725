"""The config is validated by its models: nonsense is refused naming the key, the JSON Schema
printed by `gateway config schema` describes the real files, and the operator sees no trace."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.config import ConfigError, config_schema, parse_config
from tests.test_unit_config import base_raw

ROOT = Path(__file__).resolve().parent.parent


def with_change(path: str, value: Any) -> dict[str, Any]:
    """base_raw() with the value at a dotted path ('issuers.0.roles_claim') set."""
    raw = copy.deepcopy(base_raw())
    *parents, last = path.split(".")
    node: Any = raw
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[last] = value
    return raw


# Each of these was once accepted and `check-config` said ok.
NONSENSE = [
    ("issuers.0.roles_claim", 5, "issuers[0].roles_claim", "string"),
    ("issuers.0.discovery_url", "ftp://x", "issuers[0].discovery_url", "http"),
    ("issuers.0.client_secret", 123, "issuers[0].client_secret", "string"),
    ("issuers.0.leeway_seconds", 1.9, "issuers[0].leeway_seconds", "integer"),
    ("upstream.url", "http://", "upstream.url", "host"),
    ("issuers.0.issuer", "https://", "issuers[0].issuer", "host"),
    ("policy.model", "/nonexistent/model.conf", "policy.model", "readable file"),
    ("anomaly.enum_min_spearman", 2.0, "anomaly.enum_min_spearman", "less than or equal to 1"),
    ("anomaly.min_history_days", 40, "anomaly.min_history_days", "history_days"),
    # And their neighbours.
    ("issuers.0.audience", "", "issuers[0].audience", "at least 1"),
    ("issuers.0.roles_trusted", "yes", "issuers[0].roles_trusted", "true or false"),
    ("issuers.0.jwks_ttl_seconds", -1, "issuers[0].jwks_ttl_seconds", "greater than or equal"),
    ("issuers.0.opaque_tokens", "sometimes", "issuers[0].opaque_tokens", "'auto'"),
    ("upstream.url", "https://host:port/", "upstream.url", "URL"),
    ("upstream.pool_size", 0, "upstream.pool_size", "greater than 0"),
    ("upstream.read_timeout", "30", "upstream.read_timeout", "number"),
    ("upstream.headers", {"Authorization": 7}, "upstream.headers.Authorization", "string"),
    ("audit.batch_max_rows", 10.5, "audit.batch_max_rows", "integer"),
    ("policy.max_removal_share", 1.5, "policy.max_removal_share", "less than or equal to 1"),
    ("policy.actions", [], "policy.actions", "not be empty"),
    ("lockout.stale_after_seconds", 0.1, "lockout.stale_after_seconds", "poll_interval"),
    ("server.bind", "8080", "server.bind", "HOST:PORT"),
    ("server.workers", True, "server.workers", "integer"),
    ("anomaly.exfil_alpha", 0, "anomaly.exfil_alpha", "greater than 0"),
    ("anomaly.offhours_max_share", 0.5, "anomaly.offhours_max_share", "usual"),
    ("catalogue.cache_size", -5, "catalogue.cache_size", "greater than 0"),
    ("routes.0.max_records", 0, "routes[0].max_records", "greater than 0"),
    ("keys.signing_key_file", "/nonexistent.pem", "keys.signing_key_file", "readable file"),
]


@pytest.mark.parametrize(("path", "value", "key", "words"), NONSENSE)
def test_nonsense_is_refused_naming_the_key(path: str, value: Any, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(with_change(path, value))
    assert info.value.key == key, info.value
    assert words in info.value.problem, info.value
    assert f"config key '{key}'" in str(info.value)


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    raw = with_change("issuers.0.roles_claim", 5)
    raw["upstream"]["pool_size"] = 0
    raw["audit"] = {"batch_rows": 1}
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    keys = {info.value.key, *(key for key, _ in info.value.more)}
    assert keys == {"issuers[0].roles_claim", "upstream.pool_size", "audit.batch_rows"}
    for key in keys:
        assert f"config key '{key}'" in str(info.value)


def test_a_refused_secret_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(with_change("issuers.0.client_secret", 987654321))
    assert "987654321" not in str(info.value)


def test_sensible_values_still_parse() -> None:
    raw = base_raw()
    raw["issuers"][0].update(leeway_seconds=0, jwks_ttl_seconds=60, roles_claim="groups")
    raw["anomaly"] = {"enum_min_spearman": 1, "history_days": 14, "min_history_days": 14}
    raw["upstream"]["read_timeout"] = 5  # an integer where a number is expected
    config = parse_config(raw)
    assert config.issuers[0].leeway_seconds == 0
    assert config.anomaly.enum_min_spearman == 1.0
    assert isinstance(config.upstream.read_timeout, float)


def shipped_configs() -> list[Path]:
    return [ROOT / "config" / "gateway.toml", *sorted((ROOT / "config" / "profiles").glob("*"))]


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.name)
def test_schema_accepts_the_shipped_configs(path: Path) -> None:
    schema = config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    # A profile is appended to an operator's [database], [[issuers]] and [upstream].
    raw = {**base_raw(), "routes": [], **tomllib.loads(path.read_text())}
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(raw))
    assert errors == [], [error.message for error in errors]


@pytest.mark.parametrize(("path", "value", "key", "words"), NONSENSE[:6])
def test_schema_refuses_what_the_models_refuse(path: str, value: Any, key: str, words: str) -> None:
    # The schema is what editors and CI checks see: it must not wave nonsense through.
    validator = jsonschema.Draft202012Validator(config_schema())
    assert not validator.is_valid(with_change(path, value))
    assert validator.is_valid(base_raw())


def gateway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "gateway"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )


def test_config_schema_command_prints_the_schema() -> None:
    result = gateway("config", "schema")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(json.dumps(config_schema()))


def test_check_config_names_the_key_without_a_trace(tmp_path: Path) -> None:
    key = tmp_path / "signing.pem"
    env = {"PATH": "/usr/bin:/bin", "UPSTREAM_TOKEN": "t"}
    assert gateway("keys", "generate", "--out", str(key), env=env).returncode == 0
    text = (ROOT / "config" / "gateway.toml").read_text()
    assert "var/gateway-signing.pem" in text
    text = text.replace("var/gateway-signing.pem", str(key))
    good = tmp_path / "good.toml"
    good.write_text(text)
    path = tmp_path / "gateway.toml"
    path.write_text(text.replace('roles_claim = "roles"', "roles_claim = 5", 1))
    assert "roles_claim = 5" in path.read_text(), "the sample config names roles_claim"
    for command in (["check-config"], ["config", "check"]):
        result = gateway(*command, "--config", str(path), env=env)
        assert result.returncode == 1, result
        assert "issuers[0].roles_claim" in result.stderr
        assert "must be a string" in result.stderr
        assert "Traceback" not in result.stderr
    fine = gateway("config", "check", "--config", str(good), env=env)
    assert fine.returncode == 0, fine.stderr
    assert fine.stdout.startswith("ok:")
