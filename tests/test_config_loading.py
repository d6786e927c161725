"""Loading the config file: `${ENV}` references, GATEWAY_<SECTION>__<KEY> overrides, the file
itself (missing, not TOML), and the tables that come from elsewhere (thresholds files)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config
from tests.test_unit_config import MINIMAL_TOML, base_raw, refused


def test_env_expansion_in_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIT_DB_PATH", "/srv/gw.db")
    monkeypatch.setenv("UNIT_UPSTREAM_TOKEN", "s3cret")
    raw = base_raw()
    raw["database"]["url"] = "sqlite:///${UNIT_DB_PATH}"
    raw["upstream"]["headers"] = {"Authorization": "Token ${UNIT_UPSTREAM_TOKEN}"}
    config = parse_config(raw)
    assert config.database_url == "sqlite:////srv/gw.db"
    assert config.upstream.headers == {"Authorization": "Token s3cret"}


def test_missing_env_var_names_key_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNIT_UPSTREAM_TOKEN", raising=False)
    raw = base_raw()
    raw["upstream"]["headers"] = {"Authorization": "Token ${UNIT_UPSTREAM_TOKEN}"}
    error = refused(raw)
    assert error.key == "upstream.headers.Authorization"
    assert "UNIT_UPSTREAM_TOKEN" in error.problem


def test_missing_env_var_in_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNIT_DB_PATH", raising=False)
    raw = base_raw()
    raw["database"]["url"] = "sqlite:///${UNIT_DB_PATH}"
    error = refused(raw)
    assert error.key == "database.url"
    assert "UNIT_DB_PATH" in error.problem


def test_missing_env_var_in_issuer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNIT_CLIENT_SECRET", raising=False)
    raw = base_raw()
    raw["issuers"][0]["client_secret"] = "${UNIT_CLIENT_SECRET}"
    assert refused(raw).key == "issuers[0].client_secret"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_load_config_expands_env_from_the_environ_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # load_config(environ=...) resolves GATEWAY_* overrides from `environ`; the `${ENV}`
    # secrets of the same file must come from the same environment, not from os.environ.
    monkeypatch.delenv("UNIT_UPSTREAM_TOKEN", raising=False)
    path = write(tmp_path, MINIMAL_TOML)
    config = load_config(path, environ={"UNIT_UPSTREAM_TOKEN": "tok"})
    assert config.upstream.headers == {"Authorization": "Token tok"}
    assert config.routes[0].path == "/api/projects/{project}/tasks/{task}/records"


def test_load_config_env_override_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNIT_UPSTREAM_TOKEN", "tok")
    path = write(tmp_path, MINIMAL_TOML)
    config = load_config(
        path,
        environ={
            "GATEWAY_DATABASE__URL": "postgresql+psycopg://db.example/gw",
            "UNIT_UPSTREAM_TOKEN": "tok",
        },
    )
    assert config.database_url == "postgresql+psycopg://db.example/gw"


def test_load_config_env_override_parses_toml_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNIT_UPSTREAM_TOKEN", "t")
    path = write(tmp_path, MINIMAL_TOML)
    config = load_config(
        path,
        environ={
            "UNIT_UPSTREAM_TOKEN": "tok",
            "GATEWAY_AUDIT__BATCH_MAX_ROWS": "17",
            "GATEWAY_POLICY__POLL_INTERVAL_SECONDS": "0.25",
            "GATEWAY_UPSTREAM__READ_TIMEOUT": "7.5",
        },
    )
    assert config.audit.batch_max_rows == 17
    assert config.policy.poll_interval_seconds == 0.25
    assert config.upstream.read_timeout == 7.5


def test_load_config_env_override_unknown_key_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNIT_UPSTREAM_TOKEN", "t")
    path = write(tmp_path, MINIMAL_TOML)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"UNIT_UPSTREAM_TOKEN": "t", "GATEWAY_AUDIT__BOGUS": "1"})
    assert info.value.key == "audit.bogus"


def test_load_config_env_override_wrong_type_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNIT_UPSTREAM_TOKEN", "t")
    path = write(tmp_path, MINIMAL_TOML)
    with pytest.raises(ConfigError) as info:
        load_config(
            path, environ={"UNIT_UPSTREAM_TOKEN": "t", "GATEWAY_AUDIT__BATCH_MAX_ROWS": "lots"}
        )
    assert info.value.key == "audit.batch_max_rows"


def test_load_config_env_variables_without_double_underscore_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNIT_UPSTREAM_TOKEN", "t")
    path = write(tmp_path, MINIMAL_TOML)
    config = load_config(
        path, environ={"UNIT_UPSTREAM_TOKEN": "t", "GATEWAY_DEBUG": "1", "GATEWAY_CONFIG": "x"}
    )
    assert config.database_url == "sqlite:///gw.db"


def test_load_config_missing_env_var_from_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UNIT_UPSTREAM_TOKEN", raising=False)
    path = write(tmp_path, MINIMAL_TOML)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.key == "upstream.headers.Authorization"
    assert "UNIT_UPSTREAM_TOKEN" in str(info.value)


def test_load_config_uses_gateway_config_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNIT_UPSTREAM_TOKEN", "t")
    path = write(tmp_path, MINIMAL_TOML)
    config = load_config(environ={"GATEWAY_CONFIG": str(path), "UNIT_UPSTREAM_TOKEN": "t"})
    assert config.issuers[0].name == "acme-idp"


def test_load_config_without_any_path_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={})
    assert info.value.key == "GATEWAY_CONFIG"


def test_load_config_missing_file_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml", environ={})
    assert info.value.key == "GATEWAY_CONFIG"
    assert "does not exist" in info.value.problem


def test_invalid_toml_is_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[database\nurl = 'x'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.key == "GATEWAY_CONFIG"
    assert "not valid TOML" in info.value.problem


def test_load_config_reads_file_with_process_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNIT_UPSTREAM_TOKEN", "tok")
    monkeypatch.delenv("GATEWAY_DATABASE__URL", raising=False)
    path = write(tmp_path, MINIMAL_TOML)
    config = load_config(path)
    assert config.upstream.headers == {"Authorization": "Token tok"}
    assert config.routes[0].path == "/api/projects/{project}/tasks/{task}/records"
    assert config.database_url == "sqlite:///gw.db"


def test_load_config_override_from_process_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNIT_UPSTREAM_TOKEN", "tok")
    monkeypatch.setenv("GATEWAY_DATABASE__URL", "sqlite:///other.db")
    config = load_config(write(tmp_path, MINIMAL_TOML))
    assert config.database_url == "sqlite:///other.db"


def test_parse_config_does_not_mutate_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNIT_UPSTREAM_TOKEN", "tok")
    raw = base_raw()
    raw["upstream"]["headers"] = {"Authorization": "Token ${UNIT_UPSTREAM_TOKEN}"}
    before = copy.deepcopy(raw)
    parse_config(raw)
    assert raw == before


def test_anomaly_table_is_part_of_the_gateway_config(tmp_path: Path) -> None:
    # The gateway itself starts with thresholds in its file (and validates them).
    path = tmp_path / "gateway.toml"
    path.write_text(MINIMAL_TOML + '\n[anomaly]\nvolume_own_z = 6.5\nip_locations = "places.csv"\n')
    config = load_config(path, environ={"UNIT_UPSTREAM_TOKEN": "tok"})
    assert config.anomaly.volume_own_z == 6.5
    assert config.anomaly.ip_locations == str(tmp_path / "places.csv")
    overridden = load_config(
        path, environ={"UNIT_UPSTREAM_TOKEN": "tok", "GATEWAY_ANOMALY__VOLUME_OWN_Z": "8"}
    )
    assert overridden.anomaly.volume_own_z == 8.0
    for table, key in [
        ({"volume_own_z": "high"}, "anomaly.volume_own_z"),
        ({"telepathy": 1}, "anomaly.telepathy"),
        ({"auto_lock_detectors": ["nope"]}, "anomaly.auto_lock_detectors[0]"),
    ]:
        error = refused({**base_raw(), "anomaly": table})
        assert error.key == key, error
    assert refused({**base_raw(), "anomaly": "on"}).key == "anomaly"


def test_console_secret_comes_from_the_environment() -> None:
    raw = base_raw()
    raw["issuers"][0]["roles_trusted"] = True
    raw["console"] = {
        "enabled": True,
        "issuers": ["acme-idp"],
        "client_id": "gateway-console",
        "client_secret": "${UNIT_CONSOLE_SECRET}",
        "public_url": "https://gateway.test",
    }
    config = parse_config(raw, {"UNIT_CONSOLE_SECRET": "s3cret"})
    assert config.console.client_secret == "s3cret"
    with pytest.raises(ConfigError) as info:
        parse_config(raw, {})
    assert "UNIT_CONSOLE_SECRET" in str(info.value)
    # Console roles only from an issuer trusted for roles.
    raw["issuers"][0]["roles_trusted"] = False
    with pytest.raises(ConfigError) as untrusted:
        parse_config(raw, {"UNIT_CONSOLE_SECRET": "s3cret"})
    assert untrusted.value.key == "console.issuers"
