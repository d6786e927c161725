"""`gateway keys ...`: the gateway's signing keys. Private keys stay in files (or a KMS);
the database learns public keys and when each is valid.

    gateway keys generate --out /run/secrets/gateway-signing.pem
    gateway keys register                       # the configured key, as the database owner
    gateway keys rotate --new-key-file NEW.pem --overlap-hours 24
    gateway keys list [--json]
    gateway keys export-jwks --out trusted.jwks.json   # pin it: audit verify --jwks
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import orjson

from gateway.cli import _load, config_option, database
from gateway.cli.errors import friendly_errors
from gateway.cli.output import json_option, print_json, print_table
from gateway.timestamps import rfc3339


def _actor() -> str:
    return f"cli:{os.environ.get('USER', 'unknown')}"


@click.group("keys")
def keys_group() -> None:
    """The gateway's signing keys (assertions, checkpoints, manifests)."""


@keys_group.command("generate")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False))
@json_option
def generate_command(out_path: str, as_json: bool) -> None:
    """Write a new Ed25519 private key (PEM, mode 0600); print its kid."""
    from gateway.keys.signer import generate_key_file

    try:
        kid = generate_key_file(out_path)
    except FileExistsError:
        raise click.ClickException(f"{out_path} exists; not overwriting a key") from None
    except OSError as error:
        raise click.ClickException(f"cannot write {out_path}: {error.strerror}") from None
    if as_json:
        print_json({"kid": kid, "file": out_path})
    else:
        click.echo(f"{kid}  {out_path}")


def _signer(config_path: str | None, key_file: str | None):  # type: ignore[no-untyped-def]
    from gateway.keys.signer import KeysError, load_signer

    config = _load(config_path)
    try:
        if key_file:
            return config, load_signer(key_file, None, {})
        keys = config.keys
        return config, load_signer(keys.signing_key_file, keys.signer, keys.settings)
    except KeysError as error:
        raise click.ClickException(str(error)) from None


@keys_group.command("register")
@config_option
@click.option("--key-file", type=click.Path(dir_okay=False), help="(default: [keys])")
@click.option("--reason", default="register the gateway's signing key", show_default=True)
@json_option
@friendly_errors()
def register_command(
    config_path: str | None, key_file: str | None, reason: str, as_json: bool
) -> None:
    """Register the public half of the configured (or given) key, valid from now."""
    from gateway.keys.registry import register_key
    from gateway.policy.store import record_admin_event

    config, signer = _signer(config_path, key_file)
    with database(config_path, pool_size=1) as (_config, engine):
        added = register_key(engine, signer, source="signer" if config.keys.signer else "file")
        if added:
            with engine.begin() as connection:
                record_admin_event(
                    connection,
                    actor=_actor(),
                    action="keys.register",
                    target=signer.kid,
                    reason=reason,
                    after=signer.public_jwk(),
                )
    if as_json:
        print_json({"kid": signer.kid, "registered": added})
    else:
        click.echo(f"{'registered' if added else 'already registered'}: {signer.kid}")


@keys_group.command("rotate")
@config_option
@click.option("--new-key-file", required=True, type=click.Path(dir_okay=False))
@click.option(
    "--overlap-hours",
    type=click.FloatRange(min=0, max=24 * 365),
    default=24.0,
    show_default=True,
    help="how long the keys in use stay valid beside the new one",
)
@click.option("--reason", default="key rotation", show_default=True)
@json_option
@friendly_errors()
def rotate_command(
    config_path: str | None, new_key_file: str, overlap_hours: float, reason: str, as_json: bool
) -> None:
    """Register a new key and retire every other one after the overlap. Then point
    [keys] signing_key_file at the new file and reload every instance within it."""
    from gateway.keys.registry import register_key, retire_others
    from gateway.policy.store import record_admin_event

    _config, signer = _signer(config_path, new_key_file)
    until = datetime.now(UTC) + timedelta(hours=overlap_hours)
    with database(config_path, pool_size=1) as (_config, engine):
        register_key(engine, signer, source="file")
        retired = retire_others(engine, signer.kid, until)
        with engine.begin() as connection:
            record_admin_event(
                connection,
                actor=_actor(),
                action="keys.rotate",
                target=signer.kid,
                reason=reason,
                before={"retiring": retired, "at": rfc3339(until)},
                after=signer.public_jwk(),
            )
    if as_json:
        print_json({"kid": signer.kid, "retiring": retired, "retired_at": until})
        return
    click.echo(f"new key {signer.kid} valid from now")
    for kid in retired:
        click.echo(f"key {kid} valid until {rfc3339(until)}")
    click.echo(
        f"next: set [keys] signing_key_file = {str(Path(new_key_file).resolve())!r} and"
        " reload every gateway instance before the overlap ends"
    )


@keys_group.command("list")
@config_option
@json_option
@friendly_errors()
def list_command(config_path: str | None, as_json: bool) -> None:
    """Every registered key and when it is valid."""
    from gateway.keys.registry import registered_keys

    with database(config_path, pool_size=1) as (_config, engine):
        keys = [key.as_dict() for key in registered_keys(engine)]
    if as_json:
        print_json(keys)
        return
    print_table(
        ["kid", "source", "not_before", "not_after"],
        [[k["kid"], k["source"], k["not_before"], k["not_after"] or "-"] for k in keys],
    )


@keys_group.command("export-jwks")
@config_option
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="(default: stdout)")
@friendly_errors()
def export_jwks_command(config_path: str | None, out_path: str | None) -> None:
    """The public keys as a JWKS, to keep where the database cannot change it and pin
    with `gateway audit verify --jwks` / `verify-manifest --jwks`."""
    from gateway.keys.registry import registered_keys

    with database(config_path, pool_size=1) as (_config, engine):
        document = {"keys": [key.jwk for key in registered_keys(engine)]}
    data = orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
    if out_path:
        Path(out_path).write_bytes(data)
        click.echo(f"{len(document['keys'])} keys written to {out_path}", err=True)
    else:
        click.echo(data.decode(), nl=False)
