"""Soak with faults (issue 10, point 2): mixed traffic against two gateway instances while
workers are killed, locks and policy change, and PostgreSQL restarts; then an exact
reconciliation of what the clients received against the access log.

The system: the test IdPs and the bundled sample service (tests/conftest.py), a fresh
PostgreSQL database (`soak_<random>`, dropped at the end) and `--instances` gateway
instances (2: separate gunicorn masters, 2 workers each, as `launch_gateway` starts them).

The load: `--clients` threads (32), spread over the instances, each a contractor (alice and
bob of vendor acme with JWT access tokens, carol of vendor globex with an opaque token) on
its own keep-alive connection, without think time. Each picks its next request from a
weighted mix: task record pages, a project listing where records outside a task grant are
withheld, single records, a streamed NDJSON export, task metadata, annotation POSTs, and
denials (a project without a grant, an explicit deny, an unknown route). Every request
carries a User-Agent `soak/<run>/<client>/<n>`, which the gateway logs with each access
row: a row of a request whose response never reached the client (a worker killed
mid-request) can still be traced to the attempt that caused it.

The faults, once per `--fault-period` (60 s), at fixed offsets within it:
  10%  `kill -9` of one gunicorn worker (a child of the master, found in /proc; the
       instances take turns)
  25%  `gateway lock contractor acme-idp:bob` (even periods) or `gateway lock vendor
       acme` (odd periods) ...
  40%  ... and `gateway unlock <id>`
  50%  `gateway policy grant` alice read on proj-2/task-2 (even periods), `gateway policy
       revoke` of that grant (odd periods); alice requests that task all along
  62%  of the middle period: `pg_ctlcluster --skip-systemctl-redirect <ver> main restart`
       (not with --no-pg-restart; it first waits up to --pg-restart-wait s, 120, for other
       sessions' connections to the server to go, and reports any it cut)

Afterwards every access row and every client outcome is reconciled (see `reconcile`):
each record in a 2xx body has its `allow` row (same request id, record id, SHA-256 of
the record's canonical JSON); every row either belongs to a request id a client saw, or is
explained by the client's failure on that attempt (connection cut, timeout, client gone).
The run also reports outcomes, errors by kind and by nearby fault, HTTP 500s (with the
gateway's traceback), the recovery after the PostgreSQL restart, and requests answered
against a lock or policy change after its CLI command had returned.

    .venv/bin/python bench/soak.py                       # 10 minutes, writes nothing
    .venv/bin/python bench/soak.py --duration 60 --no-pg-restart
    .venv/bin/python bench/soak.py --write               # the `soak` section of bench/RESULTS.md

Exit status 0 when there are no unlogged releases, no unexplained or mismatched rows and no
HTTP 500; 1 otherwise. Every process this script starts is stopped on the way out.
`tests/test_soak.py` runs the same harness for 30 s in `make test`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.report import command_line, git_state, machine, write_section  # noqa: E402
from bench.soakkit.common import DEFAULT_SERVER, EXPORT_CHUNKS, EXPORT_DELAY  # noqa: E402
from bench.soakkit.report import print_details, report  # noqa: E402
from bench.soakkit.run import SoakOptions, run_soak  # noqa: E402
from tests.conftest import (  # noqa: E402
    AUDIENCE,
    GATEWAY_BIN,
    OPAQUE_USERS,
    PYTHON,
    UPSTREAM_TOKEN,
    USERS,
    Database,
    Gateway,
    Proc,
    _drop_postgres_db,
    _make_postgres_db,
    free_port,
    launch_gateway,
    start,
)

# --- the standalone benchmark ---------------------------------------------------------------


@dataclass
class System:
    procs: list[Proc] = field(default_factory=list)
    gateways: list[Gateway] = field(default_factory=list)
    server: str | None = None
    db_name: str | None = None
    db: Database | None = None

    def stop(self) -> None:
        for gateway in self.gateways:
            if gateway.proc is not None:
                with contextlib.suppress(Exception):
                    gateway.proc.stop()
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        if self.db is not None:
            self.db.engine.dispose()
        if self.server and self.db_name:
            with contextlib.suppress(Exception):
                _drop_postgres_db(self.server, self.db_name)


def start_supporting(tmp: Path) -> list[Proc]:
    """The JWT IdP, the opaque-token IdP and the sample service, as in tests/conftest.py."""
    procs = []
    port = free_port()
    argv = [PYTHON, "-m", "tests.support.idp", "--port", str(port), "--jwt-audience", AUDIENCE]
    for user in USERS:
        argv += ["--user-claims", json.dumps(user)]
    procs.append(
        start(argv, f"http://127.0.0.1:{port}", tmp / "idp.log",
              ready_path="/.well-known/openid-configuration")
    )  # fmt: skip
    port = free_port()
    argv = [str(Path(PYTHON).with_name("oidc-provider-mock")), "--port", str(port)]
    for user in OPAQUE_USERS:
        argv += ["--user-claims", json.dumps(user)]
    procs.append(
        start(argv, f"http://127.0.0.1:{port}", tmp / "opaque-idp.log",
              ready_path="/.well-known/openid-configuration")
    )  # fmt: skip
    port = free_port()
    procs.append(
        start(
            [GATEWAY_BIN, "demo-upstream", "--port", str(port), "--token", UPSTREAM_TOKEN],
            f"http://127.0.0.1:{port}",
            tmp / "upstream.log",
        )
    )
    return procs


def launch_instances(
    tmp: Path, db: Database, idp: Proc, opaque: Proc, upstream: Proc, count: int
) -> list[Gateway]:
    """`count` gateway instances (2 workers each, `launch_gateway`) on one database."""
    gateways: list[Gateway] = []
    try:
        for index in range(count):
            where = tmp / f"gateway-{index + 1}"
            where.mkdir(parents=True, exist_ok=True)
            gateways.append(launch_gateway(where, db, idp, opaque, upstream, workers=2))
    except BaseException:
        for gateway in gateways:
            with contextlib.suppress(Exception):
                gateway.proc.stop()
        raise
    return gateways


@contextlib.contextmanager
def running_system(server: str, instances: int) -> Iterator[System]:
    system = System()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        try:
            system.procs = start_supporting(Path(tmp))
            system.server = server
            system.db_name = f"soak_{secrets.token_hex(4)}"
            system.db = Database(_make_postgres_db(server, system.db_name), "postgresql")
            idp, opaque, upstream = system.procs
            system.gateways = launch_instances(
                Path(tmp), system.db, idp, opaque, upstream, instances
            )
            yield system
        except BaseException:
            for gateway in system.gateways:
                with contextlib.suppress(Exception):
                    print(f"--- {gateway.url} log tail ---\n{gateway.proc.log()[-3000:]}")
            raise
        finally:
            system.stop()


def gunicorn_command(gateway: Gateway) -> str:
    """How an instance's gunicorn master was started (from /proc), without the bind address."""
    try:
        argv = Path(f"/proc/{gateway.proc.process.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gunicorn (command line unavailable)"
    words = [word.decode(errors="replace") for word in argv if word]
    words = words[words.index("gunicorn") :] if "gunicorn" in words else words
    if "-b" in words:
        at = words.index("-b")
        del words[at : at + 2]
    return " ".join(words)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (600)")
    parser.add_argument("--clients", type=int, default=32, help="client threads (32)")
    parser.add_argument("--instances", type=int, default=2, help="gateway instances (2)")
    parser.add_argument(
        "--fault-period", type=float, default=60.0, help="seconds between rounds of faults (60)"
    )
    parser.add_argument(
        "--no-pg-restart", action="store_true", help="do not restart PostgreSQL mid-run"
    )
    parser.add_argument(
        "--pg-restart-wait",
        type=float,
        default=120.0,
        help="seconds the restart waits for other sessions' connections to the server to go",
    )
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument(
        "--server",
        default=os.environ.get("GATEWAY_TEST_POSTGRES", DEFAULT_SERVER),
        help="PostgreSQL server (a database on it is created and dropped)",
    )
    parser.add_argument(
        "--write", action="store_true", help="write the `soak` section of bench/RESULTS.md"
    )
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    if args.clients < 1 or args.instances < 1 or args.duration <= 0:
        raise SystemExit("--clients, --instances and --duration must be positive")
    options = SoakOptions(
        duration=args.duration,
        clients=args.clients,
        fault_period=args.fault_period,
        pg_restart=not args.no_pg_restart,
        seed=args.seed,
        pg_restart_wait=args.pg_restart_wait,
    )
    loadavg = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    began = time.monotonic()
    with running_system(args.server, args.instances) as system:
        assert system.db is not None
        with system.db.engine.connect() as connection:
            version = connection.execute(text("SHOW server_version")).scalar_one()
        served_by = gunicorn_command(system.gateways[0])
        print(f"{args.instances} instance(s) up; {args.clients} clients for {args.duration:g} s")
        result = run_soak(system.gateways, system.db, options)
    whole = time.monotonic() - began
    body = report(result)
    print()
    print("\n".join(body))
    print_details(result)
    if args.write:
        header = [
            "## Soak with faults: two instances, worker kills, locks, policy changes, a"
            " PostgreSQL restart (`bench/soak.py`)",
            "",
            f"- date: {result.origin_wall.strftime('%Y-%m-%d %H:%M UTC')}",
            f"- machine: {machine()}",
            f"- code measured: {git_state()}",
            f"- command: `{command_line('soak.py')}` (whole run {whole:.0f} s)",
            f"- setup: {args.instances} gateway instances, each `{served_by}`"
            " (`tests.conftest.launch_gateway`: lockout stale bound 2 s, policy"
            " poll 0.5 s, upstream read timeout 2 s), on one fresh PostgreSQL"
            f" {version} database (dropped at the end); test IdPs and sample service from"
            " tests/conftest.py; everything on this machine",
            f"- load: {args.clients} client threads (alice and bob of acme with JWTs, carol of"
            " globex with an opaque token), keep-alive, no think time; mix of task pages,"
            " a filtered project listing, single records, a streamed export"
            f" (`chunks={EXPORT_CHUNKS}&delay={EXPORT_DELAY}`), task metadata, annotation"
            " POSTs, and denials (no grant, explicit deny, unknown route); a User-Agent per"
            " attempt ties access rows to attempts that got no response",
            f"- faults every {min(args.fault_period, args.duration):g} s: kill -9 of one"
            " worker (instances in turn), lock (contractor bob / vendor acme in turn) and"
            " unlock 15% of a period later, policy grant/revoke of alice on proj-2/task-2 (CLI)"
            + ("; one PostgreSQL restart mid-run" if options.pg_restart else ""),
            f"- load average at start: {loadavg}",
            "",
        ]
        write_section("soak", "\n".join(header + body))
        print("\nwritten to bench/RESULTS.md (section `soak`)")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
