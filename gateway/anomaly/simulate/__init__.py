"""A seeded synthetic access log: contractors at work, hard benign cases, labelled attacks.

Modules: `model` (constants, tasks, contractors, labels, results), `population` (the world
and the benign work), `attacks` (the classic families), `editor` (edits after the fact, on
a random stream of their own), `subtle` (the subtle families), `twins` (their benign
twins), `grants` (the policy grants behind the log), `simulator` (`Simulator.run`,
`simulate`), `output` (rows, labels document, database, file).

What the benign population does (every number drawn per seed):

- vendors in their own time zones; each contractor with a personal rate (log-normal,
  sigma 0.35, around 20 records an hour: annotation is slow work), start hour, day
  length, weekend habit, absences and vacations; hourly and daily variation (log-normal,
  clipped), never above twice the contractor's usual pace (people, not scripts);
- work: fetch a record of their queue by id, annotate most of them (reviewers few),
  browse task pages now and then, list tasks; queues are shuffled, sorted or contiguous
  blocks (a contiguous block read in order at human pace is the benign twin of
  enumeration); canary records sit outside every queue;
- addresses: a shared vendor office NAT or a home address, a phone now and then;
- hard cases: project ramp-up (a whole team's volume rises 3.5x over a week), deadline
  surges (1.3-1.6x the pace and 1-3 h longer days, project-wide), travel (time zone shifted 3-10 h
  from a hotel address, transit days off), reassignment to another project (with stale
  requests to the old one refused), new contractors joining mid-period (ramping up),
  review days (reads without annotations), occasional refusals, and a broken client
  retrying one refused path every minute or two for hours (the benign twin of probing).

Attacks (labelled: family, contractor, window), each on a different contractor, starting
after the warm-up:

- bulk_scrape: 5-50x the contractor's current hourly pace for 1-3 hours, paging through tasks;
- slow_exfiltration: 1.3-2x the daily reads for 14 days, spread over the usual hours,
  read within the contractor's own tasks and not annotated;
- enumeration: records fetched by id in id order (stride 1-2), 120-400 an hour;
- credential_sharing: a second party on the same account from another address, at the
  same time as the owner, a few hours a day for 1-3 days;
- probing: 15-80 refused requests over many paths within minutes (some unauthenticated);
- post_lock: the contractor is locked and their client keeps trying (1-20 requests);
- canary_touch: one to three fetches of canary records.

Then, drawn from `random.Random(f"{seed}:subtle")` so that everything above stays as it
was request for request (`simulate(..., subtle=False)` stops here): five subtle families,
each below every single detector's threshold (denial_trickle, project_drift, odd_days,
request_inflation, vendor_creep: see `subtle`), their benign twins (reassignment with its
grant, catch-up days, a team's new weekly schedule, a project's bigger pages, a
project-wide surge: see `twins`), and the policy grants (`Simulation.grants`: see
`grants`).
"""

from gateway.anomaly.simulate.model import (
    CAPACITY,
    CLASSIC_FAMILIES,
    FAMILIES,
    PROBE_PATHS,
    START,
    SUBTLE_FAMILIES,
    USER_AGENTS,
    VENDORS,
    BenignCase,
    Contractor,
    Label,
    Simulation,
    Task,
)
from gateway.anomaly.simulate.output import (
    iter_rows,
    labels_document,
    start_ending_by,
    write_database,
    write_file,
    write_requests,
)
from gateway.anomaly.simulate.simulator import Simulator, simulate

__all__ = [
    "CAPACITY",
    "CLASSIC_FAMILIES",
    "FAMILIES",
    "PROBE_PATHS",
    "START",
    "SUBTLE_FAMILIES",
    "USER_AGENTS",
    "VENDORS",
    "BenignCase",
    "Contractor",
    "Label",
    "Simulation",
    "Simulator",
    "Task",
    "iter_rows",
    "labels_document",
    "simulate",
    "start_ending_by",
    "write_database",
    "write_file",
    "write_requests",
]
