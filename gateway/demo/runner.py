"""`make demo`: the whole system on one machine, with real processes and a real login.

    python -m gateway.demo.runner            # start everything, show it working, wait for Ctrl-C
    python -m gateway.demo.runner --check    # same, then verify the outcomes and exit 0/1

What runs (all on 127.0.0.1, logs in var/):

- the stock `oidc-provider-mock` as the lab's IdP, with contractors alice and bob of
  vendor `acme` and carol of vendor `globex`, and the lab's own ann (role `admin`) and
  audrey (role `auditor`); it hands out opaque tokens, which the gateway checks at the
  IdP's userinfo endpoint. The demo's config marks this issuer `roles_trusted`, so ann's
  and audrey's tokens open the admin and auditor APIs;
- the bundled sample dataset service (`gateway demo-upstream`), which only answers
  requests carrying the service token that the gateway alone holds;
- the gateway under gunicorn, on a fresh SQLite database `var/gateway.db` seeded with
  `policies/demo.csv`, configured by `var/gateway.toml` (config/gateway.toml with the
  demo's ports, database and trusted roles).

Then it logs in as alice (authorization code flow), makes the requests a newcomer would
try, calls the admin and auditor APIs as ann and audrey, reads the audit rows and prints
the outcomes, the commands to repeat them by hand and the environment for the `gateway`
CLI (also written to `var/demo.env`, to `source`).

The demo owns its directory (`var/`, or `--var-dir`) while it runs: it holds an exclusive
lock on `demo.lock` there, which its long-lived children inherit. A second demo started
on the same directory, on whatever ports, refuses to start instead of deleting the
database the first one is using.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from gateway.demo.errors import DemoError
from gateway.demo.instructions import print_cli_environment, print_commands, print_console
from gateway.demo.paths import DEMO_POLICY, VAR, display
from gateway.demo.processes import Demo, Ports
from gateway.demo.setup import (
    DEFAULT_GATEWAY_PORT,
    DEFAULT_IDP_PORT,
    DEFAULT_UPSTREAM_PORT,
    prepare,
    write_env_file,
)
from gateway.demo.walkthrough import walkthrough


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@click.command()
@click.option("--check", is_flag=True, help="verify the outcomes and exit 0/1 instead of waiting")
@click.option("--idp-port", default=DEFAULT_IDP_PORT, show_default=True)
@click.option("--upstream-port", default=DEFAULT_UPSTREAM_PORT, show_default=True)
@click.option("--gateway-port", default=DEFAULT_GATEWAY_PORT, show_default=True)
@click.option("--timeout", default=30.0, show_default=True, help="seconds each service may take")
@click.option(
    "--var-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=VAR,
    help="directory for the database, logs, config and env file  [default: var/]",
)
def main(
    check: bool,
    idp_port: int,
    upstream_port: int,
    gateway_port: int,
    timeout: float,
    var_dir: Path,
) -> None:
    """Run the IdP, the sample dataset service and the gateway, and show them working."""
    # Installed explicitly: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    demo = Demo(Ports(idp_port, upstream_port, gateway_port), timeout, var_dir.absolute())
    code = 0
    try:
        prepare(demo)
        click.echo(f"Starting the demo (logs and database in {display(demo.var)}/):")
        demo.start_all()
        ports = demo.ports
        click.echo(
            "\nUp and running:\n"
            f"  OIDC provider    {ports.idp_url}  alice, bob (vendor acme), carol (globex);\n"
            "                   the lab's ann and adam (admins) and audrey (auditor)\n"
            f"  dataset service  {ports.upstream_url}  (answers only the gateway's token)\n"
            f"  gateway          {ports.gateway_url}  policy: {display(DEMO_POLICY)}\n"
            f"  access log       {display(demo.db_path)}"
        )
        problems = walkthrough(demo)
        print_commands(demo)
        write_env_file(demo)
        print_cli_environment(demo)
        print_console(demo)
        if check:
            if problems:
                click.echo("\nCHECK FAILED:\n" + "\n".join(f"  - {p}" for p in problems))
                code = 1
            else:
                click.echo("\nCHECK PASSED: every expected outcome was observed.")
        else:
            if problems:
                click.echo(
                    "\nSome outcomes were not as expected:\n"
                    + "\n".join(f"  - {p}" for p in problems)
                )
            click.echo("\nPress Ctrl-C to stop the demo.")
            demo.watch()
    except KeyboardInterrupt:
        click.echo("\nStopping the demo...")
        code = 130 if check else 0
    except DemoError as error:
        click.echo(f"\ndemo failed: {error}", err=True)
        code = 1
    finally:
        # A second Ctrl-C must not leave children behind half-stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        demo.stop_all()
    sys.exit(code)


if __name__ == "__main__":
    main()
