"""How fast does a canary fetch lock the contractor everywhere? (issue 12, acceptance)

The system of bench/lock_propagation.py: two gateway instances (2 workers each) on one
fresh PostgreSQL database, the test IdPs and the sample service. bob (vendor acme) hammers
both instances with `GET` of a page that holds no canary; alice too (she must keep working:
the lock is on the contractor).

Each trial (20 by default):

  1. mark one record of a page bob has not seen as a canary, wait until every worker knows
     it (its next poll), let the load run steadily;
  2. bob fetches the page holding the canary on instance 1: the gateway refuses it and
     locks bob itself, before it answers;
  3. keep the load running for `--observe` seconds, then take, relative to the moment the
     lock's row was committed (`locks.created_at`, the same clock here):
       - last success: the latest completion of any 200 bob got on either instance;
       - first refusal per instance;
       - the trip request's own time (request sent → 403 received);
  4. lift the lock, unmark the canary, and wait until bob is served again.

    .venv/bin/python bench/canary_trip.py                # 20 trials, ~1 min
    .venv/bin/python bench/canary_trip.py --trials 5 --no-results

Figures go to bench/RESULTS.md (section canary_trip) with this command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.lock_propagation import DEFAULT_SERVER, running_system  # noqa: E402
from bench.report import git_state, machine, write_section  # noqa: E402
from gateway.anomaly.store import add_canary, remove_canary  # noqa: E402
from gateway.db.session import make_engine  # noqa: E402
from gateway.lockout import lift_lock, list_locks  # noqa: E402
from tests.support.oidc_client import obtain_tokens  # noqa: E402

GOAL_SECONDS = 1.0
STEADY = "/api/projects/proj-1/tasks/task-1/records?offset=0&limit=2"


def bait_page(trial: int) -> str:
    # A page per trial, away from the steady one; its third record becomes the canary.
    return f"/api/projects/proj-1/tasks/task-1/records?offset={10 + trial * 5}&limit=4"


@dataclass(frozen=True)
class Sample:
    instance: int
    sub: str
    end: float  # wall clock, comparable with the lock's created_at
    status: int


class Load:
    def __init__(self, urls: list[str], tokens: dict[str, str], threads: int) -> None:
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(i, url, sub, tokens[sub]), daemon=True)
            for i, url in enumerate(urls)
            for sub in ("bob", "alice")
            for _ in range(threads)
        ]

    def _client(self, instance: int, url: str, sub: str, token: str) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        while not self._stop.is_set():
            try:
                status = session.get(url + STEADY, timeout=10).status_code
            except requests.RequestException:
                status = -1
                time.sleep(0.05)
            self.samples.append(Sample(instance, sub, time.time(), status))

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


@dataclass
class Trial:
    number: int
    last_success: float  # bob's last 200 completed, minus the lock's commit
    first_refusal: list[float]  # per instance
    trip_request: float  # the tripping request's round trip
    alice_refused: int  # must stay 0: the lock is on bob alone


def run_trial(
    number: int, load: Load, engine: Any, urls: list[str], token: str, args: Any
) -> Trial:
    page = bait_page(number)
    headers = {"Authorization": f"Bearer {token}"}
    listed = requests.get(urls[0] + page, headers=headers, timeout=10)
    if listed.status_code != 200:
        raise RuntimeError(f"trial {number}: bait page {listed.status_code}")
    record_id = listed.json()["records"][2]["id"]
    add_canary(engine, record_id, reason=f"bench trial {number}", actor="bench")
    time.sleep(args.steady)
    began = time.time()
    sent = time.monotonic()
    tripped = requests.get(urls[0] + page, headers=headers, timeout=10)
    trip_request = time.monotonic() - sent
    if tripped.status_code != 403:
        raise RuntimeError(f"trial {number}: the canary page answered {tripped.status_code}")
    time.sleep(args.observe)
    (lock,) = [item for item in list_locks(engine) if item["actor"] == "gateway:canary"]
    committed = dt.datetime.fromisoformat(lock["created_at"]).timestamp()
    window = [s for s in list(load.samples) if s.end >= began - args.steady]
    bob_ok = [s.end for s in window if s.sub == "bob" and s.status == 200]
    refusals = [
        min((s.end for s in window if s.instance == i and s.sub == "bob" and s.status == 403),
            default=float("nan"))
        for i in range(len(urls))
    ]  # fmt: skip
    alice_refused = sum(1 for s in window if s.sub == "alice" and s.status != 200)
    lift_lock(engine, lock["id"], actor="bench", reason="trial over")
    remove_canary(engine, record_id, reason="trial over", actor="bench")
    deadline = time.monotonic() + 10
    while not all(
        requests.get(url + STEADY, headers=headers, timeout=10).status_code == 200 for url in urls
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("bob never regained access")
        time.sleep(0.05)
    return Trial(
        number,
        (max(bob_ok) - committed) if bob_ok else float("nan"),
        [r - committed for r in refusals],
        trip_request,
        alice_refused,
    )


def ms(value: float) -> str:
    return "-" if value != value else f"{value * 1000:.0f}"


def report(trials: list[Trial], context: dict[str, str]) -> list[str]:
    last = [t.last_success for t in trials if t.last_success == t.last_success]
    refusal = [max(t.first_refusal) for t in trials]
    trip = [t.trip_request for t in trials]
    worst = max(last) if last else float("nan")
    lines = [
        "## Canary fetch → contractor locked everywhere (`bench/canary_trip.py`)",
        "",
        *(f"- {key}: {value}" for key, value in context.items()),
        "",
        "| figure | p50 (ms) | max (ms) |",
        "|---|---:|---:|",
        f"| lock commit → bob's last 200 on either instance | {ms(statistics.median(last))}"
        f" | {ms(worst)} |",
        f"| lock commit → first 403 on the slower instance | {ms(statistics.median(refusal))}"
        f" | {ms(max(refusal))} |",
        f"| the tripping request (sent → 403) | {ms(statistics.median(trip))} | {ms(max(trip))} |",
        "",
        f"- trials: {len(trials)}; alice's non-200 responses during all trials:"
        f" {sum(t.alice_refused for t in trials)} (the lock is on bob alone)",
        f"- goal (lock in force everywhere ≤ {GOAL_SECONDS:g} s after the canary fetch, worst"
        f" trial): **{'met' if worst <= GOAL_SECONDS else 'MISSED'}** ({ms(worst)} ms)",
        "",
        "| trial | last 200 (ms) | first 403 per instance (ms) | trip request (ms) |",
        "|---:|---:|---|---:|",
        *(
            f"| {t.number} | {ms(t.last_success)} | "
            f"{' / '.join(ms(r) for r in t.first_refusal)} | {ms(t.trip_request)} |"
            for t in trials
        ),
    ]
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="client threads per sub+instance")
    parser.add_argument("--steady", type=float, default=0.6, help="seconds before each trip")
    parser.add_argument("--observe", type=float, default=1.5, help="seconds watched after it")
    parser.add_argument("--server", default=DEFAULT_SERVER, help="PostgreSQL server URL")
    parser.add_argument("--no-results", action="store_true", help="print only")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    began = time.monotonic()
    loadavg = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    with running_system(args.server) as system:
        assert system.db is not None
        urls = [gateway.url for gateway in system.gateways]
        tokens = {
            sub: obtain_tokens(system.procs[0].url, sub)["access_token"] for sub in ("alice", "bob")
        }
        engine = make_engine(system.db.url)
        load = Load(urls, tokens, args.threads)
        load.start()
        trials = []
        try:
            for number in range(1, args.trials + 1):
                trial = run_trial(number, load, engine, urls, tokens["bob"], args)
                trials.append(trial)
                print(
                    f"trial {number:2d}: bob's last 200 {ms(trial.last_success):>5} ms after the"
                    f" lock's commit; first 403s {[ms(r) for r in trial.first_refusal]} ms;"
                    f" trip request {ms(trial.trip_request)} ms",
                    flush=True,
                )
        finally:
            load.stop()
            engine.dispose()
    context = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "code measured": git_state(),
        "command": ".venv/bin/python bench/canary_trip.py"
        + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
        + f" (whole run {time.monotonic() - began:.0f} s)",
        "setup": "two gateway instances (`tests.conftest.launch_gateway`: 2 workers of"
        " `gateway.serving.GatewayThreadWorker` x 8 threads, lock poll 0.25 s) on one"
        " PostgreSQL database; `[anomaly]` defaults: canary_on_fetch = withhold,"
        " canary_lock = contractor",
        "load": f"{args.threads} threads per instance for each of bob and alice (vendor acme),"
        f" `GET {STEADY}` back to back; the trip is bob's `GET` of a page holding the canary"
        " on instance 1",
        "loadavg at start": f"{loadavg} (everything shares the CPUs)",
    }
    body = report(trials, context)
    print("\n".join(body))
    if not args.no_results:
        write_section("canary_trip", "\n".join(body))
        print("written to bench/RESULTS.md (section canary_trip)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
