"""The classic attack families: loud enough for one detector each (see the package doc)."""

from __future__ import annotations

import math
from collections.abc import Callable

from gateway.anomaly.data import Request
from gateway.anomaly.simulate.model import (
    CLASSIC_FAMILIES,
    PROBE_PATHS,
    USER_AGENTS,
    Contractor,
)
from gateway.anomaly.simulate.population import Population


def plant(sim: Population) -> None:
    """The classic families, each on its own contractors (the population's random stream)."""
    rng = sim.rng
    established = [p for p in sim.people if p.join_day == 0 and not p.travel and not p.reassigned]
    rng.shuffle(established)
    newcomers = [p for p in sim.people if p.join_day > 0]
    needed = sim.per_family * len(CLASSIC_FAMILIES)
    if len(established) < needed:
        raise ValueError("too few contractors for the attacks; simulate more contractors")
    victims = iter(established[:needed])
    for family in CLASSIC_FAMILIES:
        for k in range(sim.per_family):
            person = next(victims)
            if family == "bulk_scrape" and k == 0 and newcomers:
                candidate = rng.choice(newcomers)
                if candidate.join_day <= sim.days - 3:
                    person = candidate
            sim.attacked.add(person.key)
            CLASSIC[family](sim, person)


def bulk_scrape(sim: Population, person: Contractor) -> None:
    rng = sim.rng
    first_day = max(sim.warmup, person.join_day + 1)
    day = rng.randint(first_day, sim.days - 1)
    start = (
        sim.usual_hour(person, day)
        if rng.random() < 0.7
        else sim.start + day * 86400 + rng.uniform(0, 23) * 3600
    )
    multiplier = math.exp(rng.uniform(math.log(5), math.log(50)))
    hours = rng.randint(1, 3)
    # 5-50x the contractor's current pace (their rate on their project's load that day).
    per_hour = person.rate * sim.load[person.project][day] * multiplier
    task_pool = list(sim.projects[person.project])
    rng.shuffle(task_pool)
    position = {t.number: 0 for t in task_pool}
    page = 100
    for h in range(hours):
        pages = max(1, round(per_hour / page))
        for _ in range(pages):
            task = task_pool[rng.randrange(min(len(task_pool), 2))]
            first = position[task.number]
            position[task.number] = min(task.assignable - page, first + page)
            ts = start + h * 3600 + rng.random() * 3600
            sim.requests.append(sim.page(person, ts, task, first, page, person.ip))
    sim.label(
        "bulk_scrape", person.key, start, start + hours * 3600, multiplier=round(multiplier, 1)
    )


def slow_exfiltration(sim: Population, person: Contractor) -> None:
    rng = sim.rng
    latest = sim.days - 14
    first = rng.randint(max(7, min(sim.warmup + 5, latest)), latest)
    multiplier = rng.uniform(1.3, 2.0)
    count = 0
    for req in sim.requests[person.span[0] : person.span[1]]:
        day = int((req.ts - sim.start) // 86400)
        if first <= day < first + 14 and req.action == "read" and req.decision == "allow":
            extra = len(req.record_ids) * (multiplier - 1)
            whole = int(extra) + (1 if rng.random() < extra - int(extra) else 0)
            for _ in range(whole):
                task = rng.choice(person.tasks)
                n = rng.randrange(task.assignable)
                sim.requests.append(
                    sim.read(
                        person,
                        req.ts + rng.uniform(1, 120),
                        task,
                        task.record_id(n),
                        req.client_ip or person.ip,
                    )
                )
                count += 1
    sim.label(
        "slow_exfiltration",
        person.key,
        sim.day_start(first),
        sim.day_start(first + 14),
        multiplier=round(multiplier, 2),
        extra_records=count,
    )


def enumeration(sim: Population, person: Contractor) -> None:
    rng = sim.rng
    day = sim.attack_day(person)
    start = (
        sim.usual_hour(person, day)
        if rng.random() < 0.5
        else sim.start + day * 86400 + rng.uniform(0, 23) * 3600
    )
    rate = rng.uniform(120, 400)
    hours = rng.uniform(1, 3)
    stride = 1 if rng.random() < 0.7 else 2
    task = rng.choice(person.tasks)
    n = rng.randrange(0, task.assignable // 2)
    count = int(rate * hours)
    for i in range(count):
        ts = start + (i + rng.random()) * 3600 / rate
        if n >= task.size:
            break
        sim.requests.append(sim.read(person, ts, task, task.record_id(n), person.ip))
        n += stride
    sim.label(
        "enumeration", person.key, start, start + hours * 3600, rate=round(rate), stride=stride
    )


def credential_sharing(sim: Population, person: Contractor) -> None:
    rng = sim.rng
    first = sim.attack_day(person, 3)
    days = rng.randint(1, 3)
    other_ip = f"45.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(2, 250)}"
    other_agent = rng.choice([a for a in USER_AGENTS if a != person.user_agent])
    start_ts = end_ts = None
    for day in range(first, first + days):
        start = sim.usual_hour(person, day)
        hours = rng.uniform(2, 5)
        rate = person.rate * rng.uniform(0.5, 1.5)
        count = sim.poisson(rate * hours)
        for _ in range(count):
            task = rng.choice(person.tasks)
            n = rng.randrange(task.assignable)
            ts = start + rng.random() * hours * 3600
            request = sim.read(person, ts, task, task.record_id(n), other_ip)
            sim.requests.append(request._replace(user_agent=other_agent))
        start_ts = start if start_ts is None else start_ts
        end_ts = start + hours * 3600
    assert start_ts is not None and end_ts is not None
    sim.label("credential_sharing", person.key, start_ts, end_ts, address=other_ip, days=days)


def probing(sim: Population, person: Contractor) -> None:
    rng = sim.rng
    day = sim.attack_day(person)
    start = sim.usual_hour(person, day)
    count = rng.randint(15, 80)
    minutes = rng.uniform(10, 45)
    anonymous = rng.random() < 0.2
    ip = f"185.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(2, 250)}"
    projects = [p for p in sim.projects if p != person.project]
    for i in range(count):
        ts = start + (i + rng.random()) * minutes * 60 / count
        p = rng.choice(projects)
        task = rng.choice(sim.projects[p])
        choice = rng.random()
        if anonymous:
            path = rng.choice(PROBE_PATHS).format(p=f"proj-{p}", t=task.name)
            reason = "bad_path" if rng.random() < 0.2 else "invalid_token"
            if reason == "bad_path":
                path = f"/api/projects/..%2f{rng.choice(('admin', 'etc', 'internal'))}/{i}"
            sim.requests.append(
                Request(
                    ts,
                    sim.rid(),
                    None,
                    None,
                    None,
                    ip,
                    "python-requests/2.32",
                    "GET",
                    path,
                    None,
                    None,
                    None,
                    "deny",
                    reason,
                    None,
                    (None,),
                )
            )
        elif choice < 0.5:
            path = f"/api/projects/proj-{p}/tasks/{task.name}/records"
            sim.requests.append(sim.denied(person, ts, path, f"proj-{p}", task.name, person.ip))
        else:
            path = rng.choice(PROBE_PATHS).format(p=f"proj-{p}", t=task.name)
            sim.requests.append(
                sim.denied(person, ts, path, None, None, person.ip, reason="unknown_route")
            )
    key = f"ip:{ip}" if anonymous else person.key
    sim.label("probing", key, start, start + minutes * 60, requests=count, anonymous=anonymous)


def post_lock(sim: Population, person: Contractor) -> None:
    rng = sim.rng
    day = sim.attack_day(person)
    lock_at = sim.usual_hour(person, day)
    sim._lock_ids += 1
    lock_id = sim._lock_ids
    person.stop_at = lock_at
    attempts = rng.randint(1, 20)
    span = rng.uniform(300, 6 * 3600)
    for i in range(attempts):
        ts = lock_at + 30 + (i / attempts) * span + rng.random() * 60
        task = rng.choice(person.tasks)
        record = task.record_id(sim.next_record(person, task))
        request = sim.read(person, ts, task, record, person.ip)
        sim.requests.append(
            request._replace(decision="deny", reason=f"locked:{lock_id}", upstream_status=None)
        )
    sim.label(
        "post_lock", person.key, lock_at, lock_at + span + 60, lock=lock_id, attempts=attempts
    )


def canary_touch(sim: Population, person: Contractor) -> None:
    rng = sim.rng
    day = sim.attack_day(person)
    ts = sim.usual_hour(person, day)
    tasks = person.tasks
    touches = rng.randint(1, 3)
    for i in range(touches):
        task = rng.choice(tasks)
        n = rng.choice(task.canaries)
        if rng.random() < 0.5:
            sim.requests.append(sim.read(person, ts + i * 90, task, task.record_id(n), person.ip))
        else:
            first = max(0, n - rng.randint(0, 9))
            sim.requests.append(sim.page(person, ts + i * 90, task, first, 10, person.ip))
    sim.label("canary_touch", person.key, ts, ts + touches * 90 + 60, touches=touches)


CLASSIC: dict[str, Callable[[Population, Contractor], None]] = {
    "bulk_scrape": bulk_scrape,
    "slow_exfiltration": slow_exfiltration,
    "enumeration": enumeration,
    "credential_sharing": credential_sharing,
    "probing": probing,
    "post_lock": post_lock,
    "canary_touch": canary_touch,
}
