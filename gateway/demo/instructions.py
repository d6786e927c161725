"""What the demo prints for the reader to repeat by hand: the requests and the CLI's environment."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import click

from gateway.demo.paths import ROOT, display, venv_bin
from gateway.demo.processes import Demo
from gateway.demo.setup import DEFAULT_IDP_PORT
from gateway.demo.walkthrough import DENIED, EVENTS, EXPLAIN, FILTERED, TASK_PAGE

AUDIT_SQL = (
    "select time, subject, vendor, project, record_id, decision "
    "from access_log order by id desc limit 20"
)


def print_commands(demo: Demo) -> None:
    python = display(Path(sys.executable))
    idp = "" if demo.ports.idp == DEFAULT_IDP_PORT else f" --idp {demo.ports.idp_url}"
    gw = demo.ports.gateway_url
    auth = '-H "Authorization: Bearer $TOKEN"'
    db = display(demo.db_path)
    where = "" if Path.cwd().resolve() == ROOT else f" (from {ROOT})"
    python_sql = (
        f"{python} -c \"import sqlite3; [print(*r, sep=' | ') for r in "
        f"sqlite3.connect('{db}').execute('{AUDIT_SQL}')]\""
    )
    lines = [
        f"\nTry it yourself{where}:",
        "  # log in as alice (also: bob of acme, carol of globex)",
        f"  TOKEN=$({python} -m gateway.demo.token{idp} --sub alice)",
        "  # a page of records from a task alice's vendor may read",
        f"  curl -s {auth} '{gw}{TASK_PAGE}'",
        "  # a project alice has no grant for: 403, and the denial is logged",
        f"  curl -s -w '\\nHTTP %{{http_code}}\\n' {auth} '{gw}{DENIED}'",
        "  # a project listing spanning task-1 and task-2: alice may read task-1 only,",
        "  # so the task-2 records are removed and logged as 'filtered'",
        f"  curl -s {auth} '{gw}{FILTERED}'",
        "  # the per-record access log",
    ]
    sqlite_cli = f'  sqlite3 {db} "{AUDIT_SQL}"'
    if shutil.which("sqlite3"):
        lines += [sqlite_cli, "  # or, without the sqlite3 command:", f"  {python_sql}"]
    else:
        lines += [
            f"  {python_sql}",
            "  # (or, once the sqlite3 command is installed:)",
            sqlite_cli,
        ]
    lines += [
        "  # the lab's admin ann and auditor audrey (roles from the trusted IdP)",
        f"  TOKEN=$({python} -m gateway.demo.token{idp} --sub ann)",
        f"  curl -s {auth} '{gw}{EXPLAIN}'",
        f"  TOKEN=$({python} -m gateway.demo.token{idp} --sub audrey)",
        f"  curl -s {auth} '{gw}{EVENTS}'",
    ]
    click.echo("\n".join(lines))


def print_cli_environment(demo: Demo) -> None:
    """The exact lines that point the `gateway` CLI (and the README examples) at this demo."""
    env = demo.cli_environment()
    first = " ".join(f"{name}={shlex.quote(value)}" for name, value in env[:2])
    second = " ".join(f"{name}={shlex.quote(value)}" for name, value in env[2:])
    bin_dir = shlex.quote(str(venv_bin("gateway").parent))
    # Relative to the checkout only when the reader's shell is there.
    here = Path.cwd().resolve() == ROOT
    env_file = shlex.quote(display(demo.env_path) if here else str(demo.env_path))
    click.echo(
        "\nThe `gateway` CLI and the README examples on this demo need its environment:\n"
        f"  export {first}\n"
        f"  export {second}\n"
        f'  export PATH={bin_dir}:"$PATH"\n'
        f"or, the same: source {env_file}   (removed when the demo stops)\n"
        "  gateway policy list --project proj-2\n"
        "  gateway audit query --vendor acme"
    )


def print_console(demo: Demo) -> None:
    """Where the console is, who may sign in, and a breach drill to copy."""
    gw = demo.ports.gateway_url
    click.echo(
        f"\nThe console: {gw}/_gateway/console/\n"
        "  sign in at the demo IdP's form as ann or adam (admins) or audrey (auditor);\n"
        "  alice, bob and carol are contractors: the console refuses them.\n"
        "\nA breach drill (with the environment above):\n"
        '  gateway lock vendor acme --reason "breach drill" --json   # note the lock id\n'
        "  # alice is refused now (403 locked); what acme's people received:\n"
        "  gateway audit exposure --vendor acme --manifest acme.csv\n"
        "  gateway audit verify-manifest acme.csv\n"
        '  gateway unlock LOCK_ID --reason "drill over" --actor ann   # asks to lift...\n'
        "  gateway unlock --approve REQUEST --actor adam   # ...a second admin approves\n"
        "  (or in the console: Kill switch, as ann, then as adam)"
    )
