"""Assembly: population, benign plantings, day plans, attacks, requests, labels."""

from __future__ import annotations

from gateway.anomaly.data import PolicyGrant
from gateway.anomaly.heldout.attacks import HELDOUT_FAMILIES, PendingLabel, plant_attacks
from gateway.anomaly.heldout.behaviour import Plans, build_plans
from gateway.anomaly.heldout.benign import plant_benign
from gateway.anomaly.heldout.population import HOUR, World, build_population, stream
from gateway.anomaly.heldout.render import render
from gateway.anomaly.simulate import Label, Simulation


def plan_world(
    seed: int,
    *,
    contractors: int = 200,
    vendors: int = 6,
    days: int = 35,
    warmup_days: int = 14,
) -> World:
    """The population with its benign cases planted, before any day is planned (cheap)."""
    world = build_population(seed, contractors, vendors, days, warmup_days)
    plant_benign(world)
    return world


def _resolve_grants(world: World, plans: Plans) -> None:
    """Grants announced with a move or a join: a few hours before that day's first work."""
    rng = stream(world.seed, "grants")
    people = world.by_key()
    for pending in world.pending_grants:
        person = people[pending.key]
        row = plans[person.index]
        first = next((p for p in row[pending.day :] if p is not None), None)
        if first is None:
            # Never worked after all: the grant still happened, on the planned day.
            ts = world.at(person, pending.day, person.start_hour[pending.day] - 2.0)
        else:
            ts = first.intervals[0][0] - rng.uniform(0.5, 4.0) * HOUR
        world.add_grant(PolicyGrant(ts, pending.key, pending.project))
    world.pending_grants.clear()
    world.grants.sort(key=lambda g: (g.ts, g.subject, g.project))


def _labels(
    world: World,
    plans: Plans,
    pending: list[PendingLabel],
    marks: dict[tuple[str, int], list[float]],
) -> list[Label]:
    people = world.by_key()
    labels = []
    for item in pending:
        # The usual day each attack was sized against, as measured when it was rendered.
        usual: dict[str, float | None] = {}
        for key, days in item.members.items():
            plan = plans[people[key].index][days[0]]
            usual[key] = plan.usual if plan is not None else None
        if item.family == "vendor_creep":
            item.details["usual_records"] = {k: round(v) for k, v in usual.items() if v}
        elif usual[item.contractor] is not None:
            item.details["usual_records"] = round(usual[item.contractor] or 0)
        spans = [
            marks[(key, day)]
            for key, days in item.members.items()
            for day in days
            if (key, day) in marks
        ]
        if not spans:
            continue
        start = min(s[0] for s in spans)
        end = max(s[1] for s in spans)
        labels.append(Label(item.family, item.contractor, start, end, dict(item.details)))
    labels.sort(key=lambda label: (label.start, label.family, label.contractor))
    return labels


def generate_world(
    seed: int,
    *,
    contractors: int = 200,
    vendors: int = 6,
    days: int = 35,
    warmup_days: int = 14,
) -> tuple[Simulation, World]:
    """`generate`, also returning the world it was drawn from (time zones, schedules)."""
    world = plan_world(
        seed, contractors=contractors, vendors=vendors, days=days, warmup_days=warmup_days
    )
    plans = build_plans(world)
    _resolve_grants(world, plans)
    pending = plant_attacks(world, plans)
    rendered = render(world, plans)
    enrolled = sum(
        1 for person in world.people for day in range(warmup_days, days) if day >= person.join_day
    )
    simulation = Simulation(
        seed=seed,
        contractors=contractors,
        vendors=vendors,
        days=days,
        warmup_days=warmup_days,
        start=world.start,
        requests=rendered.requests,
        labels=_labels(world, plans, pending, rendered.marks),
        canaries=[],
        benign=sorted(world.benign, key=lambda c: (c.start, c.kind, c.contractor or "")),
        contractor_days=enrolled,
        grants=list(world.grants),
        families=HELDOUT_FAMILIES,
    )
    return simulation, world


def generate(
    seed: int,
    *,
    contractors: int = 200,
    vendors: int = 6,
    days: int = 35,
    warmup_days: int = 14,
) -> Simulation:
    """A held-out scenario, deterministic per seed."""
    return generate_world(
        seed, contractors=contractors, vendors=vendors, days=days, warmup_days=warmup_days
    )[0]


__all__ = ["HELDOUT_FAMILIES", "generate", "generate_world", "plan_world"]
