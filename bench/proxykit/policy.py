"""The benchmark policy: a lab-sized Casbin policy written as a CSV for `gateway policy import`."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

ISSUER_NAME = "acme-idp"  # the JWT issuer of gateway_config(); it binds vendor "acme"


# --- policy ------------------------------------------------------------------------------


@dataclass
class PolicyStats:
    projects: int
    contractors: int
    p_allow: int = 0
    p_deny: int = 0
    memberships: int = 0
    vendor_grants: int = 0

    @property
    def total(self) -> int:
        return self.p_allow + self.p_deny + self.memberships + self.vendor_grants


def contractor_name(index: int, contractors: int) -> str:
    return f"c{index:0{max(4, len(str(contractors - 1)))}d}"


def bench_contractor(contractors: int) -> str:
    """The benchmark's own contractor: one of the generated ones (c4242 of 10,000)."""
    return contractor_name(min(4242, contractors - 1), contractors)


def generate_policy(
    path: Path, *, projects: int, contractors: int, per_contractor: int, project: str, seed: int
) -> PolicyStats:
    """Casbin CSV in the gateway's model: roles per project, memberships, vendor grants, denies.

    The bench contractor is an annotator on the measured project through its own
    membership (not through its vendor), and no deny rule touches the measured task.
    """
    rng = random.Random(seed)
    stats = PolicyStats(projects, contractors)
    lines: list[str] = []
    for n in range(1, projects + 1):
        lines += [
            f"p, role:annotator, proj-{n}, *, read, allow",
            f"p, role:annotator, proj-{n}, *, annotate, allow",
            f"p, role:reviewer, proj-{n}, *, read, allow",
            f"p, role:reviewer, proj-{n}, *, review, allow",
            f"p, role:task1-viewer, proj-{n}, task-1, read, allow",
        ]
        stats.p_allow += 5
    bench_subject = f"{ISSUER_NAME}:{bench_contractor(contractors)}"
    measured = int(project.removeprefix("proj-"))
    all_projects = range(1, projects + 1)
    memberships: dict[str, list[int]] = {}
    for c in range(contractors):
        subject = f"{ISSUER_NAME}:{contractor_name(c, contractors)}"
        chosen = rng.sample(all_projects, min(per_contractor, projects))
        if subject == bench_subject and measured not in chosen:
            chosen[0] = measured
        memberships[subject] = chosen
        for n in chosen:
            if subject == bench_subject and n == measured:
                role = "annotator"
            else:
                role = rng.choices(("annotator", "reviewer", "task1-viewer"), (80, 15, 5))[0]
            lines.append(f"g, {subject}, role:{role}, proj-{n}")
            stats.memberships += 1
    # Vendor-wide grants (some for acme, never on the measured project, so the bench
    # contractor's decision goes through its own membership).
    for n in range(1, projects + 1, 5):
        vendor = "acme" if n % 50 == 1 and n != measured else f"v{rng.randrange(40)}"
        role = rng.choice(("annotator", "reviewer"))
        lines.append(f"g, vendor:{vendor}, role:{role}, proj-{n}")
        stats.vendor_grants += 1
    # Deny rules: individual contractors on one task, and whole vendors on an action.
    subjects = list(memberships)
    for _ in range(max(1, contractors // 10)):
        subject = rng.choice(subjects)
        n = rng.choice(memberships[subject])
        task = (
            "task-2"
            if subject == bench_subject and n == measured
            else rng.choice(("task-1", "task-2", "task-3"))
        )
        lines.append(f"p, {subject}, proj-{n}, {task}, read, deny")
        stats.p_deny += 1
    for n in range(3, projects + 1, 10):
        lines.append(f"p, vendor:v{rng.randrange(40)}, proj-{n}, *, annotate, deny")
        stats.p_deny += 1
    unique = list(dict.fromkeys(lines))
    path.write_text("\n".join(unique) + "\n")
    # Duplicates are possible only among deny rules; keep the count exact.
    stats.p_deny -= len(lines) - len(unique)
    return stats
