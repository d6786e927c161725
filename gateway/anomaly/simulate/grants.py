"""The policy grants behind the log: who could reach which project, from when.

- every contractor: their own project, a day before their first working day (the day
  before the log begins for those there from the start);
- every vendor: one or two more projects, vendor-wide, in force from before the log
  begins (nobody at the vendor works on them; project_drift reads there);
- every reassignment: the new project, shortly before the first request to it.

The gateway refuses records of projects not granted, so every record released in the
log is on a project granted to the contractor or their vendor at that time.
"""

from __future__ import annotations

from gateway.anomaly.data import PolicyGrant
from gateway.anomaly.simulate.editor import Editor


def draw_vendor_grants(ed: Editor) -> None:
    sim, rng = ed.sim, ed.rng
    for vendor in sorted(sim.vendor_projects):
        others = [p for p in sorted(sim.projects) if p not in sim.vendor_projects[vendor]]
        ed.vendor_grants[vendor] = sorted(rng.sample(others, min(len(others), rng.randint(1, 2))))


def policy_grants(ed: Editor) -> list[PolicyGrant]:
    sim, rng = ed.sim, ed.rng
    grants = [
        PolicyGrant(sim.day_start(p.join_day) - 86400, p.key, f"proj-{p.project}")
        for p in sim.people
    ]
    for vendor, projects in sorted(ed.vendor_grants.items()):
        grants.extend(
            PolicyGrant(sim.start - 86400, f"vendor:{vendor}", f"proj-{p}") for p in projects
        )
    moved = {p.key: f"proj-{p.reassigned[1]}" for p in sim.people if p.reassigned}
    first_on: dict[str, float] = {}
    for r in sim.requests:
        if r.subject is None or r.decision != "allow":
            continue
        key = f"{r.issuer}:{r.subject}"
        if moved.get(key) == r.project and r.ts < first_on.get(key, float("inf")):
            first_on[key] = r.ts
    for person in sim.people:
        if person.reassigned:
            day, project, _ = person.reassigned
            first = first_on.get(person.key, sim.day_start(day))
            ts = first - rng.uniform(0.5, 2) * 3600
            grants.append(PolicyGrant(ts, person.key, f"proj-{project}"))
    return sorted(grants)
