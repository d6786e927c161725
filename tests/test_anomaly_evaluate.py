"""The evaluation reproduces the figures documented in bench/RESULTS.md (small scale, one
held-out seed), and the simulator is deterministic."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.anomaly.config import AnomalyConfig
from gateway.anomaly.evaluate import HELD_OUT_SEEDS, TUNING_SEEDS, evaluate, summary_line
from gateway.anomaly.simulate import FAMILIES, simulate

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "RESULTS.md"


def documented_small_figures() -> str:
    text = RESULTS.read_text(encoding="utf-8")
    section = text[
        text.index("<!-- anomaly_eval:start -->") : text.index("<!-- anomaly_eval:end -->")
    ]
    match = re.search(
        r"^figures: (generator=simulator seeds=101 contractors=60 .*)$", section, re.MULTILINE
    )
    assert match, "bench/RESULTS.md has no small-scale figures line"
    return match.group(1).strip()


def test_evaluation_reproduces_the_documented_small_scale_figures() -> None:
    assert set(HELD_OUT_SEEDS).isdisjoint(TUNING_SEEDS)
    report = evaluate([101], AnomalyConfig(), contractors=60, vendors=5, days=30)
    assert summary_line(report) == documented_small_figures()
    # Every family is injected and scored.
    assert [row["family"] for row in report.families()] == list(FAMILIES)
    assert all(row["attacks"] > 0 for row in report.families())


def test_simulation_is_seeded() -> None:
    a = simulate(5, contractors=20, vendors=2, days=24)
    b = simulate(5, contractors=20, vendors=2, days=24)
    assert a.requests == b.requests and [x.as_dict() for x in a.labels] == [
        x.as_dict() for x in b.labels
    ]
    c = simulate(6, contractors=20, vendors=2, days=24)
    assert c.requests != a.requests
    families = {label.family for label in a.labels}
    assert families == set(FAMILIES)
    kinds = {case.kind for case in a.benign}
    assert {"travel", "reassignment", "project_ramp_up"} <= kinds
