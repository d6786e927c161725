"""Unit tests for policy parsing, storage and the per-project enforcers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import casbin
import pytest
from sqlalchemy import Engine
from sqlalchemy_adapter import Adapter

from gateway.config import DEFAULT_MODEL_PATH
from gateway.db.migrate import upgrade
from gateway.db.models import CasbinRule
from gateway.db.session import make_engine
from gateway.policy import PolicyEngine, PolicyFileError, Rule, parse_csv, render_csv, store

POLICY = """\
# annotators of proj-1
p, role:annotator, proj-1, *, read, allow
p, role:annotator, proj-1, *, annotate, allow
g, vendor:acme, role:annotator, proj-1
p, acme-idp:alice, proj-2, task-1, read, allow
p, acme-idp:bob, proj-1, task-2, read, deny
p, vendor:globex, proj-3, batch-*, read, allow
g, lab-idp:dave, role:reviewer, proj-3
p, role:reviewer, proj-3, review-*, read, allow
"""

# --- parse_csv -------------------------------------------------------------------------


def test_parse_csv_reads_rules_skips_comments_blank_and_duplicates() -> None:
    text = POLICY + "\n\np, acme-idp:alice, proj-2, task-1, read, allow\n"
    rules = parse_csv(text)
    assert len(rules) == 8
    assert rules[0] == Rule("p", ("role:annotator", "proj-1", "*", "read", "allow"))
    assert rules[2] == Rule("g", ("vendor:acme", "role:annotator", "proj-1"))
    assert rules[2].project == "proj-1"
    assert rules[0].project == "proj-1"


def test_render_csv_round_trips() -> None:
    rules = parse_csv(POLICY)
    assert sorted(parse_csv(render_csv(rules))) == sorted(rules)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("p, role:a, proj-1, *, read", "5 fields"),
        ("p, role:a, proj-1, *, read, allow, extra", "window"),
        ("p, role:a, proj-1, *, read, allow, ../2026-01-01", "UTC offset"),
        (
            "p, role:a, proj-1, *, read, allow, 2027-01-01T00:00:00Z/2026-01-01T00:00:00Z",
            "ends before",
        ),
        ("p, role:a, proj-1, *, read, allow, .., x", "5 fields"),
        ("p, role:a, proj-1, *, read, maybe", "effect"),
        ("p, role a, proj-1, *, read, allow", "subject"),
        ("p, role:a, , *, read, allow", "project"),
        ("p, role:a, proj-1, *, , allow", "action"),
        ("p, role:a, proj-1, ta*sk, read, allow", "task"),
        ("p, role:a, proj-1, **, read, allow", "task"),
        ("p, role:a, proj-1, /x, read, allow", "task"),
        ("g, vendor:acme, role:a", "3 fields"),
        ("g, vendor:acme, annotator, proj-1", "role:"),
        ("g, vendor:acme, role:a, proj 1", "project"),
        ("g2, vendor:acme, role:a", "rule type"),
        ("x, a, b", "rule type"),
    ],
)
def test_parse_csv_error_names_source_and_line(line: str, fragment: str) -> None:
    text = "# header\np, role:a, proj-1, *, read, allow\n\n" + line + "\n"
    with pytest.raises(PolicyFileError) as info:
        parse_csv(text, source="team.csv")
    message = str(info.value)
    assert message.startswith("team.csv:4:"), message
    assert fragment in message


def test_parse_csv_line_numbers_are_one_based() -> None:
    with pytest.raises(PolicyFileError, match=r"policy:2:"):
        parse_csv("p, role:a, proj-1, *, read, allow\np, bad\n")


# --- the engine over a real (SQLite) database ------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'policy.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def make_policy(db: Engine, text: str = POLICY) -> PolicyEngine:
    store.replace_rules(db, parse_csv(text), actor="test", reason="unit test")
    engine = PolicyEngine(db, DEFAULT_MODEL_PATH)
    assert engine.refresh()
    return engine


def test_not_loaded_denies(db: Engine) -> None:
    engine = PolicyEngine(db, DEFAULT_MODEL_PATH)
    assert not engine.loaded
    decision = engine.decide("acme-idp:alice", "acme", "proj-1", "*", "read")
    assert not decision.allowed
    assert decision.reason == "policy_not_loaded"


def test_replace_rules_versions_increase(db: Engine) -> None:
    v1 = store.replace_rules(db, parse_csv(POLICY), actor="a", reason="r")
    v2 = store.replace_rules(db, [], actor="a", reason="r")
    assert v2 == v1 + 1
    assert store.current_version(db) == v2
    assert store.load_rules(db) == (v2, [])


def test_load_rules_returns_what_was_stored(db: Engine) -> None:
    rules = parse_csv(POLICY)
    version = store.replace_rules(db, rules, actor="a", reason="r")
    loaded_version, loaded = store.load_rules(db)
    assert loaded_version == version
    assert sorted(loaded) == sorted(rules)


def test_vendor_group_role_grant(db: Engine) -> None:
    engine = make_policy(db)
    for task in ("*", "task-1", "batch-3"):
        decision = engine.decide("acme-idp:carl", "acme", "proj-1", task, "read")
        assert decision.allowed, task
        assert decision.reason == "allowed"
        assert decision.version == engine.version
    assert engine.decide("acme-idp:carl", "acme", "proj-1", "task-1", "annotate").allowed
    # Another vendor, another project, another action: no.
    assert not engine.decide("globex-idp:gina", "globex", "proj-1", "task-1", "read").allowed
    assert not engine.decide("acme-idp:carl", "acme", "proj-2", "task-1", "read").allowed
    assert not engine.decide("acme-idp:carl", "acme", "proj-1", "task-1", "delete").allowed


def test_role_grant_is_scoped_to_its_project(db: Engine) -> None:
    # role:annotator is granted to acme only within proj-1; a rule for the same role in
    # proj-2 must not become reachable through it.
    engine = make_policy(db, POLICY + "p, role:annotator, proj-2, *, read, allow\n")
    assert engine.decide("acme-idp:carl", "acme", "proj-1", "t", "read").allowed
    assert not engine.decide("acme-idp:carl", "acme", "proj-2", "t", "read").allowed


def test_direct_grant(db: Engine) -> None:
    engine = make_policy(db)
    assert engine.decide("acme-idp:alice", "acme", "proj-2", "task-1", "read").allowed
    assert not engine.decide("acme-idp:alice", "acme", "proj-2", "task-2", "read").allowed
    assert not engine.decide("acme-idp:alice", "acme", "proj-2", "task-1", "annotate").allowed
    # Same sub from another issuer is another principal.
    assert not engine.decide("other-idp:alice", "acme", "proj-2", "task-1", "read").allowed


def test_direct_role_membership(db: Engine) -> None:
    engine = make_policy(db)
    assert engine.decide("lab-idp:dave", "lab", "proj-3", "review-1", "read").allowed
    assert not engine.decide("lab-idp:dave", "lab", "proj-3", "batch-1", "read").allowed
    assert not engine.decide("lab-idp:erin", "lab", "proj-3", "review-1", "read").allowed


def test_task_prefix_pattern(db: Engine) -> None:
    engine = make_policy(db)
    assert engine.decide("g-idp:gina", "globex", "proj-3", "batch-1", "read").allowed
    assert engine.decide("g-idp:gina", "globex", "proj-3", "batch-", "read").allowed
    assert not engine.decide("g-idp:gina", "globex", "proj-3", "batch", "read").allowed
    assert not engine.decide("g-idp:gina", "globex", "proj-3", "xbatch-1", "read").allowed


def test_route_level_star_not_matched_by_task_scoped_grants(db: Engine) -> None:
    engine = make_policy(db)
    # alice holds only task-1 of proj-2; a route without a task asks about '*'.
    decision = engine.decide("acme-idp:alice", "acme", "proj-2", "*", "read")
    assert not decision.allowed
    assert decision.reason == "policy_denied"
    # A prefix grant does not cover '*' either.
    assert not engine.decide("g-idp:gina", "globex", "proj-3", "*", "read").allowed
    # A '*' grant does.
    assert engine.decide("acme-idp:carl", "acme", "proj-1", "*", "read").allowed


def test_deny_overrides_allow(db: Engine) -> None:
    engine = make_policy(db)
    # bob is acme, so role:annotator allows proj-1 * read; his deny on task-2 wins.
    assert not engine.decide("acme-idp:bob", "acme", "proj-1", "task-2", "read").allowed
    assert engine.decide("acme-idp:bob", "acme", "proj-1", "task-3", "read").allowed
    assert engine.decide("acme-idp:bob", "acme", "proj-1", "task-2", "annotate").allowed


def test_vendor_deny_overrides_direct_allow(db: Engine) -> None:
    engine = make_policy(
        db,
        POLICY + "p, vendor:acme, proj-2, *, read, deny\n",
    )
    assert not engine.decide("acme-idp:alice", "acme", "proj-2", "task-1", "read").allowed


def test_unknown_project(db: Engine) -> None:
    engine = make_policy(db)
    decision = engine.decide("acme-idp:alice", "acme", "proj-9", "*", "read")
    assert not decision.allowed
    assert decision.reason == "no_policy_for_project"


def test_refresh_without_change_keeps_snapshot(db: Engine) -> None:
    engine = make_policy(db)
    assert engine.refresh() is False
    assert engine.refresh(force=True) is True


def test_new_version_invalidates_decision_cache(db: Engine) -> None:
    engine = make_policy(db)
    first = engine.decide("acme-idp:alice", "acme", "proj-2", "task-1", "read")
    assert first.allowed
    # cached answer is served until a new version is loaded
    assert engine.decide("acme-idp:alice", "acme", "proj-2", "task-1", "read") == first
    revoked = POLICY.replace("p, acme-idp:alice, proj-2, task-1, read, allow\n", "")
    version = store.replace_rules(db, parse_csv(revoked), actor="t", reason="revoke")
    assert engine.decide("acme-idp:alice", "acme", "proj-2", "task-1", "read").allowed
    assert engine.refresh() is True
    assert engine.version == version
    after = engine.decide("acme-idp:alice", "acme", "proj-2", "task-1", "read")
    assert not after.allowed
    assert after.version == version


def test_unchanged_projects_keep_their_enforcer(db: Engine) -> None:
    engine = make_policy(db)
    before = dict(engine._snapshot.enforcers)  # type: ignore[union-attr]
    changed = POLICY + "p, acme-idp:alice, proj-2, task-2, read, allow\n"
    store.replace_rules(db, parse_csv(changed), actor="t", reason="grant")
    assert engine.refresh()
    after = engine._snapshot.enforcers  # type: ignore[union-attr]
    assert after["proj-1"] is before["proj-1"]
    assert after["proj-3"] is before["proj-3"]
    assert after["proj-2"] is not before["proj-2"]
    assert engine.decide("acme-idp:alice", "acme", "proj-2", "task-2", "read").allowed


def test_removed_project_loses_its_enforcer(db: Engine) -> None:
    engine = make_policy(db)
    without_proj3 = "\n".join(line for line in POLICY.splitlines() if "proj-3" not in line)
    store.replace_rules(db, parse_csv(without_proj3), actor="t", reason="drop")
    engine.refresh()
    decision = engine.decide("g-idp:gina", "globex", "proj-3", "batch-1", "read")
    assert not decision.allowed
    assert decision.reason == "no_policy_for_project"


def test_sqlalchemy_adapter_sees_exactly_the_stored_rules(db: Engine) -> None:
    rules = parse_csv(POLICY)
    store.replace_rules(db, rules, actor="t", reason="compat")
    model = casbin.Enforcer.new_model(path=str(DEFAULT_MODEL_PATH))
    Adapter(db, db_class=CasbinRule, create_table=False).load_policy(model)
    loaded = {Rule("p", tuple(values)) for values in model["p"]["p"].policy}
    loaded |= {Rule("g", tuple(values)) for values in model["g"]["g"].policy}
    assert loaded == set(rules)
    assert len(model["p"]["p"].policy) == sum(r.ptype == "p" for r in rules)
    assert len(model["g"]["g"].policy) == sum(r.ptype == "g" for r in rules)


def test_adapter_written_rules_are_read_by_the_engine(db: Engine) -> None:
    # The other direction: rules an adapter wrote are what the engine enforces.
    store.replace_rules(db, [], actor="t", reason="empty")
    adapter = Adapter(db, db_class=CasbinRule, create_table=False)
    adapter.add_policy("p", "p", ["acme-idp:zed", "proj-7", "t-1", "read", "allow"])
    store.replace_rules(db, store.load_rules(db)[1], actor="t", reason="bump")
    engine = PolicyEngine(db, DEFAULT_MODEL_PATH)
    engine.refresh()
    assert engine.decide("acme-idp:zed", "acme", "proj-7", "t-1", "read").allowed


def test_concurrent_decisions_during_swaps_belong_to_one_version(db: Engine) -> None:
    granted = POLICY
    revoked = POLICY.replace("p, acme-idp:alice, proj-2, task-1, read, allow\n", "")
    revoked_extra = revoked + "p, acme-idp:alice, proj-2, task-9, read, allow\n"
    engine = make_policy(db, granted)
    # version -> expected answer for alice/proj-2/task-1 and carl/proj-1/*
    expected: dict[int, tuple[bool, bool]] = {engine.version: (True, True)}
    errors: list[str] = []
    stop = threading.Event()

    def reader(number: int) -> None:
        count = 0
        while not stop.is_set():
            count += 1
            a = engine.decide("acme-idp:alice", "acme", "proj-2", "task-1", "read")
            # a fresh subject each time misses the cache and asks the enforcer
            c = engine.decide(f"acme-idp:c{number}-{count}", "acme", "proj-1", "*", "read")
            for index, decision in ((0, a), (1, c)):
                want = expected.get(decision.version)
                if want is None:
                    errors.append(f"unknown version {decision.version}")
                elif decision.allowed != want[index]:
                    errors.append(f"v{decision.version}: {decision} expected {want[index]}")

    readers = [threading.Thread(target=reader, args=(n,)) for n in range(6)]
    for thread in readers:
        thread.start()
    try:
        for i in range(12):
            text = (revoked, granted, revoked_extra)[i % 3]
            allowed_alice = text is granted
            # Register the expected answer before anyone can see the version.
            version = store.current_version(db) + 1
            expected[version] = (allowed_alice, True)
            assert store.replace_rules(db, parse_csv(text), actor="t", reason="swap") == version
            engine.refresh()
    finally:
        stop.set()
        for thread in readers:
            thread.join(10)
    assert not errors, errors[:5]
    assert engine.version == max(expected)
