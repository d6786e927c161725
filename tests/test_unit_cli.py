"""Unit tests for the `gateway` command, run in-process with click's CliRunner."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text

from gateway.cli import main
from gateway.policy import parse_csv

POLICY = """\
# annotators
p, role:annotator, proj-1, *, read, allow
p, role:annotator, proj-1, *, annotate, allow
g, vendor:acme, role:annotator, proj-1
p, acme-idp:alice, proj-2, task-1, read, allow
p, acme-idp:bob, proj-1, task-2, read, deny
p, vendor:globex, proj-3, batch-*, read, allow
"""


def config_text(db_url: str) -> str:
    return f"""
[database]
url = "{db_url}"

[[issuers]]
name = "acme-idp"
issuer = "https://idp.acme.example"
audience = "https://gateway.test"
vendor = "acme"

[[issuers]]
name = "lab-idp"
issuer = "https://idp.lab.example"
audience = "https://gateway.test"
vendor_claim = "vendor"

[upstream]
url = "http://127.0.0.1:9000"

[[routes]]
methods = ["GET"]
path = "/api/projects/{{project}}/tasks/{{task}}/records"
action = "read"
records = "records"
record_id = "id"
"""


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in ("GATEWAY_CONFIG", "GATEWAY_DATABASE__URL"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(config_text(db_url))
    return path


@pytest.fixture
def upgraded(runner: CliRunner, config: Path) -> Path:
    result = runner.invoke(main, ["db", "upgrade", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return config


def assert_clean_failure(result: Result) -> str:
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result.output


def test_check_config_ok(runner: CliRunner, config: Path) -> None:
    result = runner.invoke(main, ["check-config", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "ok: 2 issuers, 1 routes" in result.output


def test_check_config_reads_gateway_config_env(runner: CliRunner, config: Path) -> None:
    result = runner.invoke(main, ["check-config"], env={"GATEWAY_CONFIG": str(config)})
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok:")


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('vendor = "acme"', 'vendor = "acme"\nalgorithms = ["HS256"]', "issuers[0].algorithms"),
        ('vendor = "acme"', 'vendor = "acme"\nvendor_claim = "v"', "issuers[0].vendor"),
        ('action = "read"', 'action = "read"\nrecrods = "x"', "routes[0].recrods"),
        ("{{task}}/records", "{{item}}/records", "routes[0].path"),
        ('record_id = "id"', "", "routes[0].records"),
    ],
)
def test_check_config_bad_config_names_key(
    runner: CliRunner, tmp_path: Path, db_url: str, old: str, new: str, key: str
) -> None:
    source = config_text(db_url)
    # the template's doubled braces are already rendered in config_text
    old, new = old.replace("{{", "{").replace("}}", "}"), new.replace("{{", "{").replace("}}", "}")
    assert old in source
    path = tmp_path / "bad.toml"
    path.write_text(source.replace(old, new, 1))
    output = assert_clean_failure(runner.invoke(main, ["check-config", "--config", str(path)]))
    assert "Error:" in output
    assert f"'{key}'" in output or key in output, output


def test_check_config_missing_database_url(runner: CliRunner, tmp_path: Path, db_url: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(config_text(db_url).replace(f'url = "{db_url}"', ""))
    output = assert_clean_failure(runner.invoke(main, ["check-config", "--config", str(path)]))
    assert "database.url" in output


def test_check_config_invalid_toml(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[database\n")
    output = assert_clean_failure(runner.invoke(main, ["check-config", "--config", str(path)]))
    assert "GATEWAY_CONFIG" in output and "TOML" in output


def test_check_config_without_config(runner: CliRunner) -> None:
    output = assert_clean_failure(runner.invoke(main, ["check-config"]))
    assert "GATEWAY_CONFIG" in output


def test_bad_jmespath_is_reported_by_check_config(
    runner: CliRunner, tmp_path: Path, db_url: str
) -> None:
    # A route map that cannot be built must not pass `check-config` and then fail at start.
    path = tmp_path / "bad.toml"
    path.write_text(config_text(db_url).replace('records = "records"', 'records = "records[?"'))
    output = assert_clean_failure(runner.invoke(main, ["check-config", "--config", str(path)]))
    assert "records" in output and "JMESPath" in output


def test_db_upgrade_creates_schema_and_is_idempotent(
    runner: CliRunner, upgraded: Path, db_url: str
) -> None:
    engine = create_engine(db_url)
    with engine.connect() as connection:
        tables = {
            row[0]
            for row in connection.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))
        }
        revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()
    assert {"casbin_rule", "policy_versions", "access_log", "signing_keys"} <= tables
    assert revision
    again = runner.invoke(main, ["db", "upgrade", "--config", str(upgraded)])
    assert again.exit_code == 0, again.output
    assert "newest schema" in again.output


def test_db_upgrade_with_bad_config_fails_cleanly(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[database]\n")
    output = assert_clean_failure(runner.invoke(main, ["db", "upgrade", "--config", str(path)]))
    assert "database.url" in output


def write_policy(tmp_path: Path, text_: str, name: str = "policy.csv") -> Path:
    path = tmp_path / name
    path.write_text(text_)
    return path


def test_policy_import_prints_version(runner: CliRunner, upgraded: Path, tmp_path: Path) -> None:
    csv = write_policy(tmp_path, POLICY)
    args = ["policy", "import", str(csv), "--config", str(upgraded), "--reason", "onboard acme"]
    first = runner.invoke(main, [*args, "--actor", "ops"])
    assert first.exit_code == 0, first.output
    assert "imported 6 rules as policy version 1" in first.output
    second = runner.invoke(main, args)
    assert second.exit_code == 0, second.output
    assert "policy version 2" in second.output


def test_policy_import_records_actor_and_reason(
    runner: CliRunner, upgraded: Path, tmp_path: Path, db_url: str
) -> None:
    csv = write_policy(tmp_path, POLICY)
    result = runner.invoke(
        main,
        [
            *("policy", "import", str(csv), "--config", str(upgraded)),
            *("--reason", "ticket SEC-1", "--actor", "ann"),
        ],
    )
    assert result.exit_code == 0, result.output
    engine = create_engine(db_url)
    with engine.connect() as connection:
        row = connection.execute(text("SELECT actor, reason FROM policy_versions")).one()
    engine.dispose()
    assert tuple(row) == ("ann", "ticket SEC-1")


def test_policy_import_malformed_csv_names_line(
    runner: CliRunner, upgraded: Path, tmp_path: Path, db_url: str
) -> None:
    csv = write_policy(tmp_path, POLICY + "p, acme-idp:eve, proj-1, *, read, perhaps\n")
    result = runner.invoke(
        main, ["policy", "import", str(csv), "--config", str(upgraded), "--reason", "x"]
    )
    output = assert_clean_failure(result)
    assert f"{csv}:8:" in output
    assert "perhaps" in output
    # nothing was stored
    engine = create_engine(db_url)
    with engine.connect() as connection:
        count = connection.execute(text("SELECT count(*) FROM policy_versions")).scalar()
    engine.dispose()
    assert count == 0


def test_policy_import_non_utf8_file_fails_cleanly(
    runner: CliRunner, upgraded: Path, tmp_path: Path
) -> None:
    csv = tmp_path / "latin1.csv"
    csv.write_bytes("p, acme-idp:jos\xe9, proj-1, *, read, allow\n".encode("latin-1"))
    result = runner.invoke(
        main, ["policy", "import", str(csv), "--config", str(upgraded), "--reason", "x"]
    )
    assert_clean_failure(result)


def test_policy_import_requires_reason(runner: CliRunner, upgraded: Path, tmp_path: Path) -> None:
    csv = write_policy(tmp_path, POLICY)
    result = runner.invoke(main, ["policy", "import", str(csv), "--config", str(upgraded)])
    assert result.exit_code != 0
    assert "--reason" in result.output
    assert "Traceback" not in result.output


def test_policy_import_missing_file(runner: CliRunner, upgraded: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        main,
        [
            *("policy", "import", str(tmp_path / "nope.csv")),
            *("--config", str(upgraded), "--reason", "x"),
        ],
    )
    assert result.exit_code != 0
    assert "does not exist" in result.output


def test_policy_import_without_schema_fails_cleanly(
    runner: CliRunner, config: Path, tmp_path: Path
) -> None:
    csv = write_policy(tmp_path, POLICY)
    result = runner.invoke(
        main, ["policy", "import", str(csv), "--config", str(config), "--reason", "x"]
    )
    output = assert_clean_failure(result)
    assert "could not store the policy" in output


def test_policy_export_round_trips(runner: CliRunner, upgraded: Path, tmp_path: Path) -> None:
    csv = write_policy(tmp_path, POLICY)
    imported = runner.invoke(
        main, ["policy", "import", str(csv), "--config", str(upgraded), "--reason", "x"]
    )
    assert imported.exit_code == 0, imported.output
    exported = runner.invoke(main, ["policy", "export", "--config", str(upgraded)])
    assert exported.exit_code == 0, exported.output
    assert sorted(parse_csv(exported.output)) == sorted(parse_csv(POLICY))
    # and the export can be imported again as-is
    again = write_policy(tmp_path, exported.output, "exported.csv")
    reimport = runner.invoke(
        main, ["policy", "import", str(again), "--config", str(upgraded), "--reason", "y"]
    )
    assert reimport.exit_code == 0, reimport.output
    assert "imported 6 rules as policy version 2" in reimport.output


def test_policy_export_of_empty_policy(runner: CliRunner, upgraded: Path) -> None:
    exported = runner.invoke(main, ["policy", "export", "--config", str(upgraded)])
    assert exported.exit_code == 0, exported.output
    assert parse_csv(exported.output) == []


def test_policy_export_without_schema_fails_cleanly(runner: CliRunner, config: Path) -> None:
    output = assert_clean_failure(
        runner.invoke(main, ["policy", "export", "--config", str(config)])
    )
    assert "could not read the policy" in output
