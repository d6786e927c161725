"""The `gateway policy ...` admin commands, run in-process with click's CliRunner.

Each test gets its own SQLite database (a copy of one migrated once per module) and a
config with four projects, one of them restricted.
"""

from __future__ import annotations

import json
import random
import re
import shlex
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text

from gateway.cli import main
from gateway.config import load_config
from gateway.db.migrate import upgrade
from gateway.db.session import make_engine
from gateway.policy import PolicyEngine, parse_csv
from gateway.policy.admin import PolicyAdmin, PolicyValidationError

ROOT = Path(__file__).resolve().parent.parent
DEMO_POLICY = ROOT / "policies" / "demo.csv"

CONFIG = """
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

[[projects]]
name = "proj-1"

[[projects]]
name = "proj-2"

[[projects]]
name = "proj-3"

[[projects]]
name = "secret"
restricted = true
"""

ROLES = """\
p, role:annotator, proj-1, *, read, allow
p, role:annotator, proj-1, *, annotate, allow
p, role:reviewer, proj-1, *, read, allow
p, role:reviewer, proj-1, *, review, allow
p, role:annotator, secret, *, read, allow
"""

W = ["--reason", "test", "--actor", "ann"]  # the write options most tests use


# --- fixtures and helpers --------------------------------------------------------------


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "gateway.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def db_url(tmp_path: Path, template_db: Path) -> str:
    shutil.copy(template_db, tmp_path / "gateway.db")
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG.format(db_url=db_url))
    return path


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, config: Path) -> Cli:
    for name in ("GATEWAY_CONFIG", "GATEWAY_DATABASE__URL"):
        monkeypatch.delenv(name, raising=False)
    return Cli(CliRunner(), config)


class Cli:
    def __init__(self, runner: CliRunner, config: Path) -> None:
        self.runner = runner
        self.config = config

    def run(self, *args: str, input: str | None = None, config: Path | None = None) -> Result:
        """`run("policy grant --sub x", *more)`: the first argument is split like a shell."""
        argv = [*shlex.split(args[0]), *args[1:]]
        command, rest = argv[:2], argv[2:]
        return self.runner.invoke(
            main, [*command, "--config", str(config or self.config), *rest], input=input
        )

    def ok(self, *args: str, input: str | None = None) -> str:
        result = self.run(*args, input=input)
        assert result.exit_code == 0, result.output
        return result.output

    def fails(self, *args: str, input: str | None = None, config: Path | None = None) -> str:
        return assert_clean_failure(self.run(*args, input=input, config=config))

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def versions(self) -> list[int]:
        return [v["version"] for v in self.json("policy history")]

    def rules(self, **filters: str) -> list[str]:
        args = [item for key, value in filters.items() for item in (f"--{key}", value)]
        listed = self.json("policy list", *args)
        return [row["rule"] for row in listed["rules"]]

    def decision(self, sub: str, project: str, action: str, task: str = "*", **extra: str) -> str:
        args = ["--sub", sub, "--project", project, "--task", task, "--action", action]
        args += [item for key, value in extra.items() for item in (f"--{key}", value)]
        return self.json("policy explain", *args)["decision"]


def assert_clean_failure(result: Result) -> str:
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert result.output.strip(), "a failure must say what is wrong"
    return result.output


def write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


@pytest.fixture
def roles(cli: Cli, tmp_path: Path) -> Cli:
    """The policy starts with annotator and reviewer roles (version 1)."""
    cli.ok("policy apply", str(write(tmp_path, "roles.csv", ROLES)), *W, "--yes")
    return cli


# --- round trips -----------------------------------------------------------------------


def test_role_grant_list_explain_revoke_round_trip(cli: Cli) -> None:
    out = cli.ok("policy role --project proj-1 --name annotator --actions 'read, annotate'", *W)
    assert "+ p, role:annotator, proj-1, *, annotate, allow" in out
    assert "+ p, role:annotator, proj-1, *, read, allow" in out
    assert "defined as policy version 1" in out

    out = cli.ok("policy grant --sub acme-idp:alice --project proj-1 --role annotator", *W)
    assert "+ g, acme-idp:alice, role:annotator, proj-1" in out
    assert "granted as policy version 2" in out

    table = cli.ok("policy list --sub acme-idp:alice")
    assert "policy version 2: 1 rules" in table
    header, row = table.splitlines()[1:3]
    assert header.split()[:8] == [
        *("TYPE", "SUBJECT", "PROJECT", "TASK", "ACTION/ROLE", "EFFECT", "FROM", "EXPIRES"),
    ]
    assert row.split()[:8] == [
        *("member", "acme-idp:alice", "proj-1", "*", "role:annotator", "allow", "-", "never"),
    ]
    assert row.endswith("g, acme-idp:alice, role:annotator, proj-1")

    out = cli.ok(
        "policy explain --sub acme-idp:alice --project proj-1 --task task-7 --action annotate"
    )
    assert out.startswith("ALLOW: acme-idp:alice (vendor acme) annotate on proj-1/task-7")
    assert "  g, acme-idp:alice, role:annotator, proj-1" in out
    assert "  p, role:annotator, proj-1, *, annotate, allow" in out
    assert "deny rules: none" in out

    # revoke takes the RULE column of `list` verbatim
    line = row[row.index("g, acme-idp:alice") :]
    out = cli.ok("policy revoke", line, *W)
    assert f"- {line}" in out and "revoked as policy version 3" in out
    assert cli.rules(sub="acme-idp:alice") == []
    out = cli.ok(
        "policy explain --sub acme-idp:alice --project proj-1 --task task-7 --action annotate"
    )
    assert out.startswith("DENY: ") and "no rule allows it (default deny)" in out
    assert cli.versions() == [3, 2, 1]


def test_vendor_grant_and_explicit_deny(roles: Cli) -> None:
    cli = roles
    cli.ok("policy grant --vendor acme --project proj-1 --action read", *W)
    out = cli.ok("policy deny --sub acme-idp:bob --project proj-1 --task task-2 --action read", *W)
    assert "+ p, acme-idp:bob, proj-1, task-2, read, deny" in out
    assert "denied as policy version 3" in out

    out = cli.ok("policy explain --sub acme-idp:bob --project proj-1 --task task-2 --action read")
    assert out.startswith("DENY: ")
    assert "deny overrides allow" in out
    assert "  p, vendor:acme, proj-1, *, read, allow" in out
    assert "  p, acme-idp:bob, proj-1, task-2, read, deny" in out
    assert cli.decision("acme-idp:bob", "proj-1", "read", task="task-1") == "allow"
    assert cli.decision("acme-idp:alice", "proj-1", "read", task="task-2") == "allow"
    # a contractor of another vendor on a shared IdP gets nothing from acme's grant
    assert cli.decision("lab-idp:zoe", "proj-1", "read", vendor="globex") == "deny"
    assert cli.decision("lab-idp:zoe", "proj-1", "read", vendor="acme") == "allow"

    vendor_rules = cli.json("policy list --vendor acme")
    assert [r["type"] for r in vendor_rules["rules"]] == ["grant"]
    denies = [r for r in cli.json("policy list --project proj-1")["rules"] if r["type"] == "deny"]
    assert [d["subject"] for d in denies] == ["acme-idp:bob"]


def test_task_narrowed_role_grant_grants_the_roles_actions_on_that_task(roles: Cli) -> None:
    out = roles.ok(
        "policy grant --sub lab-idp:carol --project proj-1 --task 'batch-*' --role reviewer", *W
    )
    assert "+ p, lab-idp:carol, proj-1, batch-*, read, allow" in out
    assert "+ p, lab-idp:carol, proj-1, batch-*, review, allow" in out
    assert roles.decision("lab-idp:carol", "proj-1", "review", "batch-9", vendor="lab") == "allow"
    assert roles.decision("lab-idp:carol", "proj-1", "review", "task-9", vendor="lab") == "deny"


def test_time_boxed_grant_shows_expiry_and_is_exported(roles: Cli) -> None:
    cli = roles
    before = time.time()
    out = cli.ok(
        "policy grant --sub acme-idp:alice --project proj-1 --action review --until 8h", *W
    )
    line = next(x[2:] for x in out.splitlines() if x.startswith("+ "))
    assert re.fullmatch(r"p, acme-idp:alice, proj-1, \*, review, allow, \.\./\S+Z", line), line

    table = cli.ok("policy list --sub acme-idp:alice")
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in (7h59m|8h0m)\)", table), table
    (row,) = cli.json("policy list --sub acme-idp:alice")["rules"]
    expires = datetime.fromisoformat(row["expires"].replace("Z", "+00:00")).timestamp()
    assert before + 8 * 3600 - 2 <= expires <= time.time() + 8 * 3600 + 1
    assert row["in_force"] is True and row["rule"] == line
    assert cli.decision("acme-idp:alice", "proj-1", "review") == "allow"

    # a grant that starts later is listed as not yet in force and does not allow yet
    cli.ok(
        "policy grant --sub acme-idp:bob --project proj-1 --role annotator"
        " --from 2099-01-01T00:00:00Z --until 3d",
        *W,
    )
    table = cli.ok("policy list --sub acme-idp:bob")
    assert "2099-01-01T00:00:00Z (not yet)" in table
    assert "2099-01-04T00:00:00Z (in " in table
    assert cli.decision("acme-idp:bob", "proj-1", "read") == "deny"

    exported = cli.ok("policy export")
    assert line in exported.splitlines()
    assert (
        "g, acme-idp:bob, role:annotator, proj-1, 2099-01-01T00:00:00Z/2099-01-04T00:00:00Z"
        in exported.splitlines()
    )
    assert sorted(parse_csv(exported)) == sorted(parse_csv(ROLES + line + "\n" + exported))


def test_expired_rules_are_listed_as_expired_and_do_not_allow(cli: Cli, tmp_path: Path) -> None:
    policy = ROLES + "g, acme-idp:alice, role:annotator, proj-1, ../2021-01-01T00:00:00Z\n"
    cli.ok("policy apply", str(write(tmp_path, "p.csv", policy)), *W, "--yes")
    assert "2021-01-01T00:00:00Z (expired)" in cli.ok("policy list --sub acme-idp:alice")
    out = cli.ok("policy explain --sub acme-idp:alice --project proj-1 --action read")
    assert out.startswith("DENY: ") and "role links: none" in out


def test_dry_runs_store_nothing(roles: Cli, tmp_path: Path) -> None:
    cli = roles
    grant = ["--sub", "acme-idp:alice", "--project", "proj-1"]
    out = cli.ok("policy grant", *grant, "--role", "annotator", *W, "--dry-run")
    assert "+ g, acme-idp:alice, role:annotator, proj-1" in out
    assert "dry run: nothing stored (would add 1, remove 0 rules)" in out
    cli.ok("policy deny", *grant, "--action", "read", *W, "--dry-run")
    cli.ok("policy role --project proj-2 --name x --actions read", *W, "--dry-run")
    out = cli.ok("policy revoke 'p, role:reviewer, proj-1, *, review, allow'", *W, "--dry-run")
    assert "- p, role:reviewer, proj-1, *, review, allow" in out and "dry run" in out
    out = cli.ok("policy apply", str(DEMO_POLICY), *W, "--dry-run")
    assert "+ g, vendor:acme, role:annotator, proj-1" in out
    assert "- p, role:annotator, secret, *, read, allow" in out
    assert "dry run: nothing stored" in out
    cli.ok("policy grant", *grant, "--action", "export", *W)
    out = cli.ok("policy rollback 1", *W, "--dry-run")
    assert "- p, acme-idp:alice, proj-1, *, export, allow" in out and "dry run" in out
    assert cli.versions() == [2, 1]
    assert len(cli.rules()) == 6


def test_apply_shows_the_diff_then_applies_one_version(cli: Cli, tmp_path: Path) -> None:
    out = cli.ok("policy apply", str(DEMO_POLICY), *W, "--yes")
    demo = [rule.to_csv_line() for rule in parse_csv(DEMO_POLICY.read_text())]
    assert sorted(line[2:] for line in out.splitlines() if line.startswith("+ ")) == sorted(demo)
    assert f"applied {DEMO_POLICY} as policy version 1 (+8 -0)" in out
    assert sorted(cli.rules()) == sorted(demo)

    changed = DEMO_POLICY.read_text().replace(
        "p, lab-idp:bob, proj-1, task-2, read, deny", "p, lab-idp:bob, proj-1, task-3, read, deny"
    )
    path = write(tmp_path, "changed.csv", changed)
    # without --yes it asks; declining stores nothing
    declined = cli.run("policy apply", str(path), *W, input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.output
    assert "- p, lab-idp:bob, proj-1, task-2, read, deny" in declined.output
    assert "+ p, lab-idp:bob, proj-1, task-3, read, deny" in declined.output
    assert cli.versions() == [1]
    out = cli.ok("policy apply", str(path), *W, input="y\n")
    assert "as policy version 2 (+1 -1)" in out
    # applying it again changes nothing and says so
    out = cli.ok("policy apply", str(path), *W, "--yes")
    assert "no changes: policy version 2 already matches" in out
    assert cli.versions() == [2, 1]


def test_history_diff_and_rollback(roles: Cli) -> None:
    cli = roles
    cli.ok(
        "policy grant --sub acme-idp:alice --project proj-1 --role annotator"
        " --reason 'SEC-7 onboarding' --actor ops"
    )
    cli.ok("policy revoke 'p, role:reviewer, proj-1, *, review, allow'", *W)

    out = cli.ok("policy diff 1 3")
    assert out.splitlines() == [
        "--- policy version 1",
        "+++ policy version 3",
        "- p, role:reviewer, proj-1, *, review, allow",
        "+ g, acme-idp:alice, role:annotator, proj-1",
    ]
    assert cli.json("policy diff 2 3") == {
        "from": 2,
        "to": 3,
        "added": [],
        "removed": ["p, role:reviewer, proj-1, *, review, allow"],
    }

    history = cli.ok("policy history")
    lines = history.splitlines()
    assert lines[0].split() == ["VERSION", "TIME", "ACTOR", "CHANGE", "REASON"]
    assert lines[2].split()[0] == "2" and "ops" in lines[2] and "SEC-7 onboarding" in lines[2]
    assert [line.split()[0] for line in lines[1:]] == ["3", "2", "1"]
    assert len(cli.ok("policy history --limit 1").splitlines()) == 2

    out = cli.ok("policy rollback 1 --reason 'undo SEC-7' --actor ops")
    assert "- g, acme-idp:alice, role:annotator, proj-1" in out
    assert "+ p, role:reviewer, proj-1, *, review, allow" in out
    assert "rolled back to version 1 as policy version 4" in out
    assert "(no differences)" in cli.ok("policy diff 1 4")
    (newest, *_) = cli.json("policy history")
    assert newest["reason"] == "rollback to 1: undo SEC-7" and newest["actor"] == "ops"


def test_base_version_guards_against_concurrent_changes(roles: Cli) -> None:
    cli = roles
    grant = ["--sub", "acme-idp:alice", "--project", "proj-1", "--role", "annotator", *W]
    cli.ok("policy grant", *grant, "--base-version", "1")
    out = cli.fails(
        "policy deny --sub acme-idp:alice --project proj-1 --action read",
        *W,
        "--base-version",
        "1",
    )
    assert "policy changed since version 1 (now 2); re-read and retry" in out
    out = cli.fails("policy apply", str(DEMO_POLICY), *W, "--yes", "--base-version", "1")
    assert "policy changed since version 1 (now 2)" in out
    assert cli.versions() == [2, 1]


def test_restricted_project_refuses_vendor_wide_grants(roles: Cli) -> None:
    cli = roles
    for how in (["--role", "annotator"], ["--action", "read"]):
        out = cli.fails("policy grant --vendor acme --project secret", *how, *W)
        assert "ceiling: project secret is restricted" in out
        assert "named contractors" in out
    # named contractors may be granted; a vendor-wide deny narrows and is allowed
    cli.ok("policy grant --sub acme-idp:alice --project secret --role annotator", *W)
    cli.ok("policy deny --vendor globex --project secret --action read", *W)
    assert cli.versions() == [3, 2, 1]


def test_import_validates_like_apply_and_keeps_its_output(cli: Cli, tmp_path: Path) -> None:
    path = write(tmp_path, "p.csv", ROLES + "g, vendor:acme, role:annotator, secret\n")
    out = cli.fails("policy import", str(path), *W)
    assert "ceiling" in out
    assert cli.versions() == []
    out = cli.ok("policy import", str(DEMO_POLICY), *W)
    assert "imported 8 rules as policy version 1 (+8 -0)" in out
    assert "\n+ " not in out  # no confirmation and no per-line listing: it is for CI


def test_import_of_an_empty_or_truncated_file_does_not_wipe_the_policy(
    cli: Cli, tmp_path: Path
) -> None:
    cli.ok("policy import", str(DEMO_POLICY), *W)
    demo = DEMO_POLICY.read_text().splitlines(keepends=True)
    rules = [line for line in demo if line.strip() and not line.startswith("#")]
    empty = write(tmp_path, "empty.csv", "")
    out = cli.fails("policy import", str(empty), *W)
    assert "holds no rules" in out and "--allow-empty" not in out.split("Error")[0]
    truncated = write(tmp_path, "truncated.csv", "".join(rules[: len(rules) // 2]))
    out = cli.fails("policy import", str(truncated), *W)
    removals = [line for line in out.splitlines() if line.startswith("- ")]
    assert "confirm" in out and len(removals) == len(rules) - len(rules) // 2
    assert cli.versions() == [1]
    # Meant: --yes for the removals, --allow-empty for an empty policy.
    cli.ok("policy import", str(truncated), *W, "--yes")
    cli.ok("policy import", str(empty), *W, "--allow-empty")
    assert cli.versions() == [3, 2, 1]
    assert cli.rules() == []
    # apply asks (and --yes answers) as before; an empty file needs --allow-empty there too.
    cli.ok("policy import", str(DEMO_POLICY), *W)
    assert "holds no rules" in cli.fails("policy apply", str(empty), *W, "--yes")


def test_without_a_project_list_the_policy_and_the_log_are_the_registry(
    cli: Cli, tmp_path: Path, db_url: str
) -> None:
    registry_free = tmp_path / "no-projects.toml"
    registry_free.write_text(CONFIG.format(db_url=db_url).split("[[projects]]")[0])
    cli.ok("policy import", str(DEMO_POLICY), *W)

    def run(*args: str) -> Result:
        return cli.run(*args, *W, config=registry_free)

    typo = run("policy grant --sub acme-idp:bob --project proj-l --action read")
    assert typo.exit_code != 0
    assert "unknown project 'proj-l'" in typo.output and "'proj-1'" in typo.output
    assert "--new-project" in typo.output or "new_project" in typo.output
    role = run("policy role --project proj-9 --name annotator --actions read --new-project")
    assert role.exit_code == 0, role.output
    # Once the policy names it, the project is known.
    grant = run("policy grant --vendor acme --project proj-9 --role annotator")
    assert grant.exit_code == 0, grant.output


def test_commands_read_gateway_config_from_the_environment(roles: Cli) -> None:
    result = roles.runner.invoke(
        main, ["policy", "list", "--json"], env={"GATEWAY_CONFIG": str(roles.config)}
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["version"] == 1


def test_revoke_without_window_near_matches_and_by_filter(roles: Cli) -> None:
    until = "2031-01-01T00:00:00Z"
    roles.ok("policy grant --sub acme-idp:alice --project proj-1 --role annotator", *W)
    roles.ok(
        "policy grant --sub acme-idp:bob --project proj-1 --action read --task t-1",
        "--until", until, *W,
    )  # fmt: skip
    # The line without its window names the only such rule.
    out = roles.ok("policy revoke 'p, acme-idp:bob, proj-1, t-1, read, allow'", *W)
    assert "- p, acme-idp:bob, proj-1, t-1, read, allow, ../2031-01-01T00:00:00Z" in out
    # A near miss is named.
    out = roles.fails("policy revoke 'g, acme-idp:alice, role:annotator, proj-2'", *W)
    assert "did you mean 'g, acme-idp:alice, role:annotator, proj-1'" in out
    # Or by filter: every rule of alice in proj-1 (her role membership included).
    out = roles.ok("policy revoke --sub acme-idp:alice --project proj-1", *W)
    assert "- g, acme-idp:alice, role:annotator, proj-1" in out
    assert not [line for line in roles.rules() if "acme-idp:alice" in line]
    assert "no rule of acme-idp:alice" in roles.fails(
        "policy revoke --sub acme-idp:alice --project proj-1", *W
    )
    assert "not both" in roles.fails(
        "policy revoke 'p, a:b, proj-1, *, read, allow' --sub acme-idp:alice --project proj-1",
        *W,
    )


def test_revoke_from_a_file_of_lines(roles: Cli, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "revoke.csv",
        "# reviewers go\np, role:reviewer, proj-1, *, read, allow\n"
        "p, role:reviewer, proj-1, *, review, allow\n",
    )
    out = roles.ok("policy revoke --file", str(path), *W)
    assert out.count("\n- ") + out.startswith("- ") == 2
    assert not [line for line in roles.rules() if "reviewer" in line]


# --- bad input -------------------------------------------------------------------------

GRANT = ["policy", "grant", "--sub", "acme-idp:alice", "--project", "proj-1"]

BAD_INPUT = [
    pytest.param([*GRANT[:4], "--project", "proj-9", "--action", "read", *W],
                 "unknown project 'proj-9'", id="unknown-project"),
    pytest.param([*GRANT, "--role", "boss", *W], "role 'role:boss' is not defined in proj-1",
                 id="unknown-role"),
    pytest.param([*GRANT, "--task", "t-1", "--role", "boss", *W], "'boss' is not defined",
                 id="unknown-role-on-task"),
    pytest.param([*GRANT, "--action", "fly", *W], "unknown action 'fly'", id="unknown-action"),
    pytest.param([*GRANT[:3], "okta:alice", "--project", "proj-1", "--action", "read", *W],
                 "names no configured issuer", id="unknown-issuer"),
    pytest.param([*GRANT[:3], "alice", "--project", "proj-1", "--action", "read", *W],
                 "must be <issuer name>:<sub>", id="sub-without-issuer"),
    pytest.param([*GRANT[:3], "vendor:acme", "--project", "proj-1", "--action", "read", *W],
                 "use --vendor", id="vendor-as-sub"),
    pytest.param([*GRANT, "--vendor", "acme", "--action", "read", *W],
                 "--sub/--vendor: give exactly one", id="sub-and-vendor"),
    pytest.param(["policy", "grant", "--project", "proj-1", "--action", "read", *W],
                 "--sub/--vendor: give exactly one", id="no-subject"),
    pytest.param([*GRANT, "--role", "annotator", "--action", "read", *W],
                 "exactly one of a role or an action", id="role-and-action"),
    pytest.param([*GRANT, *W], "exactly one of a role or an action", id="no-role-no-action"),
    pytest.param([*GRANT, "--action", "read", "--until", "tomorrow", *W],
                 "--until: 'tomorrow' is neither an ISO 8601 time", id="until-garbage"),
    pytest.param([*GRANT, "--action", "read", "--until", "2099-01-01T00:00:00", *W],
                 "needs a UTC offset", id="until-naive"),
    pytest.param([*GRANT, "--action", "read", "--until", "2020-01-01T00:00:00Z", *W],
                 "is in the past", id="until-past"),
    pytest.param([*GRANT, "--action", "read", "--until", "0h", *W],
                 "longer than zero", id="until-zero"),
    pytest.param([*GRANT, "--action", "read", "--from", "soon", *W],
                 "--from: 'soon' is not an ISO 8601 time", id="from-garbage"),
    pytest.param([*GRANT, "--action", "read", "--from", "2099-02-01T00:00:00Z",
                  "--until", "2099-01-01T00:00:00Z", *W], "is not after --from",
                 id="from-after-until"),
    pytest.param([*GRANT, "--task", "task*x", "--action", "read", *W],
                 "task pattern 'task*x' is malformed", id="bad-task-pattern"),
    pytest.param([*GRANT, "--action", "read", "--reason", "  ", "--actor", "x"],
                 "reason: a reason is required", id="blank-reason"),
    pytest.param([*GRANT, "--action", "read", "--reason", "x", "--actor", ""],
                 "actor: an actor is required", id="blank-actor"),
    pytest.param([*GRANT, "--action", "read"], "Missing option '--reason'", id="no-reason"),
    pytest.param([*GRANT, "--action", "read", *W, "--base-version", "7"],
                 "policy changed since version 7 (now 1)", id="stale-base-version"),
    pytest.param([*GRANT, "--action", "read", *W, "--base-version", "x"],
                 "'x' is not a valid integer", id="base-version-not-int"),
    pytest.param(["policy", "deny", "--vendor", "ac me", "--project", "proj-1",
                  "--action", "read", *W], "'ac me' is not a valid vendor name",
                 id="deny-bad-vendor"),
    pytest.param(["policy", "deny", "--sub", "acme-idp:bob", "--project", "proj-1", *W],
                 "Missing option '--action'", id="deny-no-action"),
    pytest.param(["policy", "role", "--project", "proj-1", "--name", "x", "--actions", " , ", *W],
                 "--actions: name at least one action", id="role-no-actions"),
    pytest.param(["policy", "role", "--project", "proj-1", "--name", "x",
                  "--actions", "read,fly", *W], "unknown action 'fly'", id="role-unknown-action"),
    pytest.param(["policy", "role", "--project", "nope", "--name", "x", "--actions", "read", *W],
                 "unknown project 'nope'", id="role-unknown-project"),
    pytest.param(["policy", "role", "--project", "proj-1", "--name", "a b",
                  "--actions", "read", *W], "is not a valid name", id="role-bad-name"),
    pytest.param(["policy", "role", "--project", "proj-1", "--name", "annotator",
                  "--actions", "read", *W], "the change changes nothing", id="role-no-change"),
    pytest.param(["policy", "revoke", "p, acme-idp:alice, proj-1, *, read, allow", *W],
                 "not in the policy", id="revoke-absent-rule"),
    pytest.param(["policy", "revoke", "p, acme-idp:alice, proj-1, *, read", *W],
                 "a 'p' rule has 5 fields", id="revoke-malformed-line"),
    pytest.param(["policy", "revoke", *W], "name at least one rule", id="revoke-nothing"),
    pytest.param(["policy", "revoke", "--file", "/nonexistent/rules.csv", *W],
                 "does not exist", id="revoke-missing-file"),
    pytest.param(["policy", "list", "--sub", "acme-idp:a", "--vendor", "acme"],
                 "filter by --sub or by --vendor, not both", id="list-sub-and-vendor"),
    pytest.param(["policy", "explain", "--sub", "acme-idp:alice", "--project", "proj-9",
                  "--action", "read"], "--project: unknown project 'proj-9'",
                 id="explain-unknown-project"),
    pytest.param(["policy", "explain", "--sub", "acme-idp:alice", "--project", "proj-1",
                  "--action", "fly"], "--action: unknown action 'fly'",
                 id="explain-unknown-action"),
    pytest.param(["policy", "explain", "--sub", "okta:alice", "--project", "proj-1",
                  "--action", "read"], "--sub: 'okta:alice' must be <issuer name>:<sub>",
                 id="explain-unknown-issuer"),
    pytest.param(["policy", "explain", "--sub", "acme-idp:alice", "--vendor", "globex",
                  "--project", "proj-1", "--action", "read"],
                 "binds every token to vendor 'acme'", id="explain-wrong-vendor"),
    pytest.param(["policy", "explain", "--sub", "lab-idp:zoe", "--project", "proj-1",
                  "--action", "read"], "give --vendor", id="explain-vendor-needed"),
    pytest.param(["policy", "diff", "1", "9"], "version: no policy version 9",
                 id="diff-unknown-version"),
    pytest.param(["policy", "diff", "0", "1"], "not in the range", id="diff-version-zero"),
    pytest.param(["policy", "rollback", "9", *W], "version: no policy version 9",
                 id="rollback-unknown-version"),
    pytest.param(["policy", "rollback", "9", *W, "--dry-run"], "no policy version 9",
                 id="rollback-dry-run-unknown-version"),
    pytest.param(["policy", "rollback", "1", *W], "the change changes nothing",
                 id="rollback-to-current"),
    pytest.param(["policy", "apply", "/nonexistent/policy.csv", *W], "does not exist",
                 id="apply-missing-file"),
    pytest.param(["policy", "import", "/nonexistent/policy.csv", *W], "does not exist",
                 id="import-missing-file"),
    pytest.param(["policy", "history", "--limit", "0"], "not in the range",
                 id="history-limit-zero"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
def test_bad_input_fails_cleanly(roles: Cli, args: list[str], message: str) -> None:
    out = roles.fails(*args)
    assert message in out, out
    assert roles.versions() == [1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("p, acme-idp:eve, proj-1, *, read, perhaps\n", ":2: effect must be 'allow' or 'deny'"),
        ("p, acme-idp:eve, proj-7, *, read, allow\n", "unknown project 'proj-7'"),
        ("g, okta:eve, role:annotator, proj-1\n", "names no configured issuer"),
        ("g, acme-idp:eve, role:boss, proj-1\n", "role 'role:boss' is not defined"),
        ('p, "acme-idp:eve, x", proj-1, *, read, allow\n', "'acme-idp:eve, x' is not a valid name"),
    ],
)
@pytest.mark.parametrize("command", ["apply", "import"])
def test_bad_policy_files_are_refused_whole(
    roles: Cli, tmp_path: Path, command: str, content: str, message: str
) -> None:
    path = write(tmp_path, "bad.csv", "p, role:x, proj-2, *, read, allow\n" + content)
    confirm = ["--yes"] if command == "apply" else []
    out = roles.fails("policy", command, str(path), *W, *confirm)
    assert message in out, out
    assert roles.versions() == [1]


def test_non_utf8_policy_file_fails_cleanly(roles: Cli, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("p, acme-idp:jos\xe9, proj-1, *, read, allow\n".encode("latin-1"))
    for command in ("apply", "import"):
        assert "not UTF-8" in roles.fails("policy", command, str(path), *W)
    revoke = roles.fails("policy revoke --file", str(path), *W)
    assert "not UTF-8" in revoke


COMMANDS = [
    ["policy", "list"],
    ["policy", "history"],
    ["policy", "diff", "1", "2"],
    ["policy", "explain", "--sub", "acme-idp:a", "--project", "proj-1", "--action", "read"],
    [*GRANT, "--action", "read", *W],
    ["policy", "deny", "--vendor", "acme", "--project", "proj-1", "--action", "read", *W],
    ["policy", "role", "--project", "proj-1", "--name", "x", "--actions", "read", *W],
    ["policy", "revoke", "p, acme-idp:a, proj-1, *, read, allow", *W],
    ["policy", "rollback", "1", *W],
    ["policy", "apply", str(DEMO_POLICY), *W, "--yes"],
    ["policy", "import", str(DEMO_POLICY), *W],
    ["policy", "export"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: args[1])
def test_unreachable_database_is_named(
    cli: Cli, tmp_path: Path, args: list[str], db_url: str
) -> None:
    gone = tmp_path / "gone.toml"
    gone.write_text(cli.config.read_text().replace(db_url, f"sqlite:///{tmp_path}/no/dir/x.db"))
    assert "database unreachable" in cli.fails(*args, config=gone)


@pytest.mark.parametrize("args", COMMANDS[:5], ids=lambda args: args[1])
def test_unreachable_postgres_is_named(
    cli: Cli, tmp_path: Path, args: list[str], db_url: str
) -> None:
    gone = tmp_path / "gone.toml"
    url = "postgresql+psycopg://gateway@127.0.0.1:1/gateway"
    gone.write_text(cli.config.read_text().replace(db_url, url))
    assert "database unreachable" in cli.fails(*args, config=gone)


@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: args[1])
def test_database_without_schema_says_to_upgrade(
    cli: Cli, tmp_path: Path, args: list[str], db_url: str
) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text(cli.config.read_text().replace(db_url, f"sqlite:///{tmp_path}/empty.db"))
    assert "gateway db upgrade" in cli.fails(*args, config=empty)


def test_bad_database_url_is_named(cli: Cli, tmp_path: Path, db_url: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(cli.config.read_text().replace(db_url, "nosuchdb://x/y"))
    assert "database.url" in cli.fails("policy list", config=bad)


# --- explain matches the real decision ---------------------------------------------------

SUBJECTS = ["acme-idp:alice", "acme-idp:bob", "acme-idp:carol", "lab-idp:dave", "lab-idp:erin"]
VENDORS = ["acme", "globex", "lab"]
PROJECTS = ["proj-1", "proj-2", "proj-3", "secret"]
ROLE_NAMES = ["annotator", "reviewer", "viewer", "lead"]
ACTIONS = ["read", "annotate", "review", "export"]
PATTERNS = ["*", "*", "task-1", "task-2", "task-*", "batch-*", "task-1*"]
REQUEST_TASKS = ["*", "task-1", "task-2", "task-10", "task-1x", "batch-7", "other"]
WINDOWS = [
    *[""] * 8,
    ", 2020-01-01T00:00:00Z/2021-01-01T00:00:00Z",  # expired
    ", 2099-01-01T00:00:00Z/..",  # not yet
    ", ../2099-01-01T00:00:00Z",  # in force, time-boxed
]


def random_policy(rng: random.Random) -> str:
    """Roles (some inheriting others), memberships of contractors and vendor groups, task
    patterns, direct grants and denies, some time-boxed, expired or not yet in force."""
    lines: list[str] = []
    for project in PROJECTS:
        defined = rng.sample(ROLE_NAMES[:3], rng.randint(1, 3))
        for role in defined:
            for action in rng.sample(ACTIONS, rng.randint(1, 3)):
                lines.append(f"p, role:{role}, {project}, {rng.choice(PATTERNS)}, {action}, allow")
        if rng.random() < 0.7:  # lead inherits one role and adds its own action
            lines.append(f"p, role:lead, {project}, *, export, allow")
            lines.append(f"g, role:lead, role:{rng.choice(defined)}, {project}")
            defined.append("lead")
        if rng.random() < 0.3:
            lines.append(f"p, role:{rng.choice(defined)}, {project}, task-2, read, deny")
        members = [*SUBJECTS, *(f"vendor:{v}" for v in VENDORS if project != "secret")]
        for subject in rng.sample(members, rng.randint(1, len(members))):
            role = rng.choice(defined)
            lines.append(f"g, {subject}, role:{role}, {project}{rng.choice(WINDOWS)}")
        for _ in range(rng.randint(0, 6)):
            effect = rng.choice(["allow", "allow", "deny"])
            candidates = SUBJECTS if project == "secret" and effect == "allow" else members
            lines.append(
                f"p, {rng.choice(candidates)}, {project}, {rng.choice(PATTERNS)}, "
                f"{rng.choice(ACTIONS)}, {effect}{rng.choice(WINDOWS)}"
            )
    return "\n".join(lines) + "\n"


def random_request(rng: random.Random) -> tuple[str, str, str, str, str]:
    sub = rng.choice([*SUBJECTS, "acme-idp:zed", "lab-idp:yan"])
    vendor = "acme" if sub.startswith("acme-idp:") else rng.choice(VENDORS)
    project = rng.choice([*PROJECTS, "proj-9"])
    return sub, vendor, project, rng.choice(REQUEST_TASKS), rng.choice(ACTIONS)


@pytest.fixture
def admin(config: Path) -> Iterator[PolicyAdmin]:
    loaded = load_config(config, environ={})
    engine = make_engine(loaded.database_url)
    yield PolicyAdmin(engine, loaded)
    engine.dispose()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_explain_matches_the_engine_decision(cli: Cli, admin: PolicyAdmin, seed: int) -> None:
    rng = random.Random(seed)
    policy = random_policy(rng)
    admin.apply(actor="test", reason=f"seed {seed}", text=policy)
    # An engine of its own, so explain's engine cannot lend the answer to the oracle.
    oracle = PolicyEngine(admin.db, admin.config.policy.model)
    oracle.refresh()
    outcomes = {True: 0, False: 0}
    denied_by_rule = 0
    for _ in range(300):
        sub, vendor, project, task, action = request = random_request(rng)
        if project == "proj-9":  # not a configured project: refused, not answered
            with pytest.raises(PolicyValidationError):
                admin.explain(sub=sub, vendor=vendor, project=project, task=task, action=action)
            continue
        explanation = admin.explain(
            sub=sub, vendor=vendor, project=project, task=task, action=action
        )
        derived = bool(explanation.allow_rules) and not explanation.deny_rules
        truth = oracle.decide(*request).allowed
        assert derived == truth, (request, explanation, policy)
        assert explanation.allowed == truth
        outcomes[truth] += 1
        denied_by_rule += bool(explanation.deny_rules and explanation.allow_rules)
    # the generated policies exercise both outcomes and deny-overrides-allow
    assert outcomes[True] > 20 and outcomes[False] > 20, outcomes
    assert denied_by_rule > 0
    # and the command prints the same decision
    for _ in range(12):
        sub, vendor, project, task, action = request = random_request(rng)
        project = project if project != "proj-9" else "proj-1"
        extra = {} if sub.startswith("acme-idp:") else {"vendor": vendor}
        shown = cli.decision(sub, project, action, task, **extra)
        assert shown == (
            "allow" if oracle.decide(sub, vendor, project, task, action).allowed else "deny"
        )
        text_out = cli.ok(
            "policy explain --sub",
            sub,
            "--project",
            project,
            "--task",
            task,
            "--action",
            action,
            *(["--vendor", vendor] if extra else []),
        )
        assert text_out.startswith(shown.upper() + ": ")


def test_explain_shows_role_inheritance_and_vendor_links(cli: Cli, tmp_path: Path) -> None:
    policy = ROLES + (
        "p, role:lead, proj-1, *, export, allow\n"
        "g, role:lead, role:reviewer, proj-1\n"
        "g, vendor:acme, role:lead, proj-1\n"
    )
    cli.ok("policy apply", str(write(tmp_path, "p.csv", policy)), *W, "--yes")
    explained = cli.json(
        "policy explain --sub acme-idp:alice --project proj-1 --task t --action review"
    )
    assert explained == {
        "request": {
            "sub": "acme-idp:alice",
            "vendor": "acme",
            "project": "proj-1",
            "task": "t",
            "action": "review",
        },
        "decision": "allow",
        "version": 1,
        "subjects": ["acme-idp:alice", "role:lead", "role:reviewer", "vendor:acme"],
        "role_links": [
            "g, vendor:acme, role:lead, proj-1",
            "g, role:lead, role:reviewer, proj-1",
        ],
        "allow_rules": ["p, role:reviewer, proj-1, *, review, allow"],
        "deny_rules": [],
        "consistent": True,
    }


def test_each_write_is_one_version_with_actor_and_reason(roles: Cli, db_url: str) -> None:
    roles.ok(
        "policy grant --sub acme-idp:alice --project proj-1 --task 't-*' --role annotator"
        " --reason SEC-9 --actor ann"
    )
    engine = create_engine(db_url)
    with engine.connect() as connection:
        events = connection.execute(
            text("SELECT actor, action, reason, policy_version FROM admin_events ORDER BY id")
        ).all()
    engine.dispose()
    assert [tuple(e) for e in events][-1] == ("ann", "policy.grant", "SEC-9", 2)
