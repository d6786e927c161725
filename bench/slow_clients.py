"""Do slow clients starve everyone else of the gateway's worker threads?

Starts its own stack the way tests/conftest.py does (the JWT test IdP, the stock opaque
IdP, `gateway demo-upstream`, the gateway under gunicorn on SQLite, 1 worker x 8 threads
by default), then runs each attack for a fixed time while legitimate clients probe:

  (a) headers: N sockets send a request line, then one header line every --interval s,
      never finishing the header block (slowloris); a dropped socket reconnects;
  (b) body:    N sockets send a complete, authorised `POST /api/echo` announcing
      Content-Length: 100000, then trickle 16 body bytes every --interval s;
  (c) cut:     N sockets send the same POST with the first 1,000 body bytes, then
      close the socket, over and over;
  (d) big body: like (b), but the first 70,000 body bytes go out at once, more than
      the gateway's worker gathers before a thread takes over (64 KiB), so a thread
      reads the trickle: what the gateway bounds but does not absorb.

Probes: every 0.5 s one `GET /_gateway/health` and one authenticated proxied
`GET /api/projects/proj-1/tasks/task-1/records?limit=5`, each on a new connection with a
--probe-timeout. Reported per scenario: probe success rate and latency, how often the
gateway dropped an attacking socket, how many attacking requests (each carries a unique
marker in its query) reached the upstream anyway — every one of those is a truncated body
forwarded as if complete — and how many tracebacks the gateway logged.

    .venv/bin/python bench/slow_clients.py --worker-class gthread            # before
    .venv/bin/python bench/slow_clients.py                                   # after
    .venv/bin/python bench/slow_clients.py --scenarios a --attackers 100 --duration 20

Everything stays on loopback, every attack stops by itself after --duration seconds, and
every process started here runs in its own process group and is stopped on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.report import command_line, git_state, machine, write_section  # noqa: E402
from tests.conftest import (  # noqa: E402
    AUDIENCE,
    UPSTREAM_TOKEN,
    USERS,
    Proc,
    free_port,
    gateway_config,
    start,
    wait_ready,
)
from tests.support.oidc_client import obtain_tokens  # noqa: E402

PYTHON = sys.executable
GATEWAY_BIN = str(Path(PYTHON).with_name("gateway"))
DEFAULT_WORKER = "gateway.serving.GatewayThreadWorker"
HEALTH = "/_gateway/health"
RECORDS = "/api/projects/proj-1/tasks/task-1/records?limit=5"
ECHO = "/api/echo"
BODY_LENGTH = 100_000
PROBE_EVERY = 0.5
# Attackers connect and send their first bytes before the first probe goes out, so the
# probes measure a pool that is already under attack.
RAMP_SECONDS = 2.0
POLICY = "p, role:annotator, proj-1, *, read, allow\ng, vendor:acme, role:annotator, proj-1\n"


# --- the stack ---------------------------------------------------------------------------


@dataclass
class Stack:
    gateway: Proc
    upstream: Proc
    token: str
    host: str
    port: int
    procs: list[Proc]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()


def start_stack(workdir: Path, args: argparse.Namespace) -> Stack:
    procs: list[Proc] = []
    try:
        port = free_port()
        argv = [PYTHON, "-m", "tests.support.idp", "--port", str(port), "--jwt-audience", AUDIENCE]
        for user in USERS:
            argv += ["--user-claims", json.dumps(user)]
        idp = start(
            argv,
            f"http://127.0.0.1:{port}",
            workdir / "idp.log",
            ready_path="/.well-known/openid-configuration",
        )
        procs.append(idp)
        port = free_port()
        opaque = start(
            [str(Path(PYTHON).with_name("oidc-provider-mock")), "--port", str(port)],
            f"http://127.0.0.1:{port}",
            workdir / "opaque-idp.log",
            ready_path="/.well-known/openid-configuration",
        )
        procs.append(opaque)
        port = free_port()
        upstream = start(
            [GATEWAY_BIN, "demo-upstream", "--port", str(port), "--token", UPSTREAM_TOKEN],
            f"http://127.0.0.1:{port}",
            workdir / "upstream.log",
        )
        procs.append(upstream)

        config_path = workdir / "gateway.toml"
        config_path.write_text(
            gateway_config(
                db_url=f"sqlite:///{workdir / 'gateway.db'}",
                idp_url=idp.url,
                opaque_idp_url=opaque.url,
                upstream_url=upstream.url,
            )
        )
        env = {"GATEWAY_CONFIG": str(config_path), "UPSTREAM_TOKEN": UPSTREAM_TOKEN}
        (workdir / "policy.csv").write_text(POLICY)
        for command in (
            ["db", "upgrade"],
            ["policy", "import", str(workdir / "policy.csv"), "--reason", "slow clients bench"],
        ):
            subprocess.run(
                [GATEWAY_BIN, *command],
                check=True,
                capture_output=True,
                cwd=ROOT,
                env={**os.environ, **env},
                timeout=120,
            )

        port = free_port()
        argv = [
            PYTHON,
            "-m",
            "gunicorn",
            "-k",
            args.worker_class,
            "-w",
            "1",
            "--threads",
            str(args.threads),
            "-b",
            f"127.0.0.1:{port}",
            "--graceful-timeout",
            "2",
            "gateway.wsgi:app",
        ]
        if args.header_timeout is not None:
            env["GATEWAY_CLIENT_HEADER_TIMEOUT"] = str(args.header_timeout)
        if args.body_timeout is not None:
            env["GATEWAY_CLIENT_BODY_TIMEOUT"] = str(args.body_timeout)
        gateway = start(
            argv,
            f"http://127.0.0.1:{port}",
            workdir / "gateway.log",
            env=env,
            ready_path=HEALTH,
        )
        procs.append(gateway)
        wait_ready(gateway.url)
        token = obtain_tokens(idp.url, "alice")["access_token"]
        return Stack(gateway, upstream, token, "127.0.0.1", port, procs)
    except BaseException:
        for proc in reversed(procs):
            with contextlib.suppress(Exception):
                proc.stop()
        raise


# --- attackers ---------------------------------------------------------------------------


@dataclass
class AttackStats:
    connections: int = 0
    dropped_by_server: int = 0
    markers: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def connected(self, marker: str | None = None) -> None:
        with self.lock:
            self.connections += 1
            if marker:
                self.markers.append(marker)

    def dropped(self) -> None:
        with self.lock:
            self.dropped_by_server += 1


def _server_closed(sock: socket.socket) -> bool:
    """Has the gateway closed (or answered and closed) this connection?"""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        data = sock.recv(4096)
    except OSError:
        return True
    # Any answer to a request that never finished means the server gave up on it.
    return data == b"" or data.startswith(b"HTTP/")


def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _post_head(stack: Stack, marker: str) -> bytes:
    return (
        f"POST {ECHO}?m={marker} HTTP/1.1\r\n"
        f"Host: {stack.host}:{stack.port}\r\n"
        f"Authorization: Bearer {stack.token}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {BODY_LENGTH}\r\n\r\n"
    ).encode()


def _trickle(
    stack: Stack,
    stats: AttackStats,
    stop_at: float,
    interval: float,
    first: Callable[[str], bytes],
    piece: bytes,
) -> None:
    """Connect, send `first`, then `piece` every `interval` s; reconnect when dropped."""
    while time.monotonic() < stop_at:
        marker = f"slow{secrets.token_hex(6)}"
        try:
            sock = socket.create_connection((stack.host, stack.port), timeout=5)
        except OSError:
            time.sleep(0.2)
            continue
        stats.connected(marker)
        try:
            sock.sendall(first(marker))
            while True:
                _sleep_until(min(time.monotonic() + interval, stop_at))
                if time.monotonic() >= stop_at:
                    break
                if _server_closed(sock):
                    stats.dropped()
                    break
                sock.sendall(piece)
        except OSError:
            stats.dropped()
        finally:
            sock.close()


def attack_headers(stack: Stack, stats: AttackStats, stop_at: float, interval: float) -> None:
    def first(_marker: str) -> bytes:
        return f"GET {HEALTH} HTTP/1.1\r\nHost: {stack.host}:{stack.port}\r\n".encode()

    _trickle(stack, stats, stop_at, interval, first, b"X-Slow: 1\r\n")


def attack_body(stack: Stack, stats: AttackStats, stop_at: float, interval: float) -> None:
    _trickle(stack, stats, stop_at, interval, lambda m: _post_head(stack, m), b"x" * 16)


def attack_big_body(stack: Stack, stats: AttackStats, stop_at: float, interval: float) -> None:
    _trickle(
        stack, stats, stop_at, interval, lambda m: _post_head(stack, m) + b"x" * 70_000, b"x" * 16
    )


def attack_cut(stack: Stack, stats: AttackStats, stop_at: float, interval: float) -> None:
    """Half a body, then gone: the request must not reach the upstream as if complete."""
    del interval  # as fast as the gateway accepts, with a short pause between rounds
    while time.monotonic() < stop_at:
        marker = f"cut{secrets.token_hex(6)}"
        try:
            sock = socket.create_connection((stack.host, stack.port), timeout=5)
        except OSError:
            time.sleep(0.2)
            continue
        stats.connected(marker)
        with contextlib.suppress(OSError):
            sock.sendall(_post_head(stack, marker) + b"x" * 1000)
        sock.close()
        time.sleep(0.2)


ATTACKS = {
    "a": ("headers", attack_headers),
    "b": ("body", attack_body),
    "c": ("cut", attack_cut),
    "d": ("big body", attack_big_body),
}


# --- probes ------------------------------------------------------------------------------


@dataclass
class Probe:
    kind: str
    ok: bool
    seconds: float
    detail: str


def probe(stack: Stack, kind: str, timeout: float) -> Probe:
    path = HEALTH if kind == "health" else RECORDS
    headers = {} if kind == "health" else {"Authorization": f"Bearer {stack.token}"}
    began = time.monotonic()
    try:
        # A new connection each time, as a new client would open.
        response = requests.get(
            stack.gateway.url + path,
            headers={**headers, "Connection": "close"},
            timeout=timeout,
        )
        ok = response.status_code == 200
        detail = str(response.status_code)
    except requests.RequestException as error:
        ok, detail = False, type(error).__name__
    return Probe(kind, ok, time.monotonic() - began, detail)


# --- one scenario ------------------------------------------------------------------------


@dataclass
class Outcome:
    scenario: str
    probes: list[Probe]
    stats: AttackStats
    forwarded: int
    tracebacks: int
    recovered_after: float | None


def _wait_healthy(stack: Stack, timeout: float) -> float | None:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        result = probe(stack, "health", 2.0)
        if result.ok and result.seconds < 0.5:
            return time.monotonic() - began
        time.sleep(0.2)
    return None


def run_scenario(stack: Stack, key: str, args: argparse.Namespace) -> Outcome:
    name, attack = ATTACKS[key]
    log_start = len(stack.gateway.log())
    stats = AttackStats()
    stop_at = time.monotonic() + args.duration
    attackers = [
        threading.Thread(target=attack, args=(stack, stats, stop_at, args.interval), daemon=True)
        for _ in range(args.attackers)
    ]
    for thread in attackers:
        thread.start()
    time.sleep(RAMP_SECONDS)

    probes: list[Probe] = []
    probes_lock = threading.Lock()

    def one(kind: str) -> None:
        result = probe(stack, kind, args.probe_timeout)
        with probes_lock:
            probes.append(result)

    probers: list[threading.Thread] = []
    # Probes stop early enough to finish (or time out) before the attack ends: an answer
    # that only comes once the attackers have gone measures nothing.
    last_probe = stop_at - args.probe_timeout
    while time.monotonic() < last_probe:
        for kind in ("health", "proxied"):
            thread = threading.Thread(target=one, args=(kind,), daemon=True)
            thread.start()
            probers.append(thread)
        time.sleep(PROBE_EVERY)
    for thread in probers:
        thread.join(args.probe_timeout + 5)
    for thread in attackers:
        thread.join(max(0.0, stop_at - time.monotonic()) + 10)

    recovered = _wait_healthy(stack, 60.0)
    # Give the gateway time to act on what the closing attackers left behind (a short
    # body it might forward), then look for their markers in the upstream's request log.
    time.sleep(2.0)
    upstream_log = stack.upstream.log()
    forwarded = sum(1 for marker in stats.markers if marker in upstream_log)
    tracebacks = stack.gateway.log()[log_start:].count("Traceback (most recent call last)")
    return Outcome(name, probes, stats, forwarded, tracebacks, recovered)


# --- report ------------------------------------------------------------------------------


def _latency(probes: list[Probe]) -> str:
    times = sorted(p.seconds for p in probes if p.ok)
    if not times:
        return "-"
    p50 = statistics.median(times)
    return f"{p50 * 1000:.0f} / {times[-1] * 1000:.0f} ms"


def _rate(probes: list[Probe]) -> str:
    ok = sum(p.ok for p in probes)
    return f"{ok}/{len(probes)}"


def table(outcomes: list[Outcome]) -> str:
    lines = [
        "| attack | health ok | health p50 / max | proxied ok | proxied p50 / max "
        "| attacker conns | dropped by gateway | truncated bodies forwarded | tracebacks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        health = [p for p in o.probes if p.kind == "health"]
        proxied = [p for p in o.probes if p.kind == "proxied"]
        forwarded = str(o.forwarded) if o.scenario != "headers" else "n/a"
        lines.append(
            f"| {o.scenario} | {_rate(health)} | {_latency(health)} | {_rate(proxied)} "
            f"| {_latency(proxied)} | {o.stats.connections} | {o.stats.dropped_by_server} "
            f"| {forwarded} | {o.tracebacks} |"
        )
    return "\n".join(lines)


def failures(outcomes: list[Outcome]) -> str:
    out = []
    for o in outcomes:
        kinds: dict[str, int] = {}
        for p in o.probes:
            if not p.ok:
                kinds[f"{p.kind}:{p.detail}"] = kinds.get(f"{p.kind}:{p.detail}", 0) + 1
        if kinds:
            out.append(f"{o.scenario}: " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())))
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker-class", default=DEFAULT_WORKER, help="gunicorn -k")
    parser.add_argument("--threads", type=int, default=8, help="gunicorn --threads (1 worker)")
    parser.add_argument("--attackers", type=int, default=50, help="attacking sockets")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between trickles")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per attack")
    parser.add_argument("--probe-timeout", type=float, default=10.0)
    parser.add_argument("--scenarios", default="abcd", help="any of a, b, c, d")
    parser.add_argument("--header-timeout", type=float, default=None, help="gateway env")
    parser.add_argument("--body-timeout", type=float, default=None, help="gateway env")
    parser.add_argument("--write", action="store_true", help="write a bench/RESULTS.md section")
    args = parser.parse_args(argv)
    if not 1 <= args.attackers <= 500:
        parser.error("--attackers must be 1..500")
    if not 0 < args.duration <= 300 or args.duration < args.probe_timeout + RAMP_SECONDS + 1:
        parser.error("--duration must be at most 300 and leave room for a probe")
    if not set(args.scenarios) <= set(ATTACKS):
        parser.error("--scenarios takes letters a, b, c, d")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="slow-clients-"))
    print(f"work dir: {workdir}")
    stack = start_stack(workdir, args)
    # Ctrl-C and SIGTERM still tear the stack down (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    outcomes = []
    try:
        baseline = [probe(stack, kind, args.probe_timeout) for kind in ("health", "proxied") * 5]
        print("no attack:", _rate(baseline), "ok,", _latency(baseline), "p50 / max")
        for key in args.scenarios:
            print(f"attack {ATTACKS[key][0]}: {args.attackers} sockets for {args.duration:.0f}s")
            outcomes.append(run_scenario(stack, key, args))
            print(table(outcomes[-1:]).splitlines()[-1])
    finally:
        stack.stop()
    settings = (
        f"gunicorn -k {args.worker_class} -w 1 --threads {args.threads}; "
        f"{args.attackers} attacking sockets per attack for {args.duration:.0f}s, "
        f"trickle every {args.interval:g}s; probes every {PROBE_EVERY}s with a "
        f"{args.probe_timeout:g}s timeout"
    )
    if args.header_timeout is not None or args.body_timeout is not None:
        settings += (
            f"; GATEWAY_CLIENT_HEADER_TIMEOUT={args.header_timeout}, "
            f"GATEWAY_CLIENT_BODY_TIMEOUT={args.body_timeout}"
        )
    report = "\n".join(
        [
            f"## Slow clients ({args.worker_class})",
            "",
            f"`{command_line('slow_clients.py')}`",
            "",
            settings,
            "",
            table(outcomes),
            "",
            "Failed probes: " + (failures(outcomes) or "none"),
            "",
            f"Machine: {machine()}. Code: {git_state()}.",
        ]
    )
    print()
    print(report)
    if args.write:
        slug = re.sub(r"[^a-z0-9]+", "_", args.worker_class.lower()).strip("_")
        write_section(f"slow_clients_{slug}", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
