"""The detectors: each turns hourly aggregates (and a few raw rows) into explained findings.

Every finding names its detector, a severity, the contractor, the window it covers, when
a scan could first have raised it (`detected_at`), a score, an explanation that cites the
numbers it was decided on, evidence (access-log row ids and request ids, plus the filters
that list every row behind it) and a dedup key: detector + contractor + window, so a
rescan finds the same keys and updates alerts instead of adding new ones.

All detectors are causal: a decision about an hour or a day uses only data up to its end,
so one retrospective scan over a month (the evaluation) raises what periodic scans over
that month would have raised, at the same times.
"""

from gateway.anomaly.detectors.behaviour import sequence_stats
from gateway.anomaly.detectors.common import (
    EVIDENCE_ROWS,
    Finding,
    iso,
    median_without,
    severity_at_least,
    spearman,
)
from gateway.anomaly.detectors.run import (
    SERIES_DETECTORS,
    detect,
    locations_for,
    lookback_days,
)

__all__ = [
    "EVIDENCE_ROWS",
    "SERIES_DETECTORS",
    "Finding",
    "detect",
    "iso",
    "locations_for",
    "lookback_days",
    "median_without",
    "sequence_stats",
    "severity_at_least",
    "spearman",
]
