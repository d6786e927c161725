"""Detector thresholds: a model of defaults, optionally overridden by an `[anomaly]` table.

The table sits in the gateway config file (which validates it at start-up too), or in a
separate file (`--thresholds FILE` or `GATEWAY_ANOMALY_CONFIG`) holding the same
`[anomaly]` table, which wins. Environment variables `GATEWAY_ANOMALY__<KEY>=value`
override single keys, like the rest of the gateway config.

    [anomaly]
    volume_own_z = 6.0
    auto_lock_detectors = ["canary_touch"]
    auto_lock_min_severity = "critical"
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, model_validator

from gateway.configbase import (
    ConfigError,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Problem,
    Section,
    Share,
    validated,
)

Severity = Literal["low", "medium", "high", "critical"]
Detector = Literal[
    "volume_spike",
    "slow_exfiltration",
    "breadth",
    "enumeration",
    "probing",
    "credential_sharing",
    "off_hours",
    "impossible_travel",
    "locked_attempt",
    "canary_touch",
    "catalogue_mismatch",
    "combined",
    "vendor_rise",
]
SEVERITIES: tuple[str, ...] = get_args(Severity)
DETECTORS: tuple[str, ...] = get_args(Detector)


class AnomalyConfig(Section):
    # --- history and peers -------------------------------------------------------------
    history_days: PositiveInt = 28
    """Days of history behind every scored hour or day."""
    min_history_days: PositiveInt = 7
    """Active days a contractor needs before being scored against their own history; before that
    (a new contractor) only against peers.
    """
    peer_min: PositiveInt = 4
    """Peers (same vendor and project) needed for a peer baseline; fewer → vendor-wide."""

    # --- volume spike (records per hour) ----------------------------------------------
    volume_min_records: PositiveInt = 60
    volume_own_z: PositiveFloat = 7.0
    """Robust z-score against the contractor's own hours of the same kind (weekday or weekend,
    same hour of day): (x - median) / (1.4826 MAD), MAD floored.
    """
    volume_min_scale: PositiveFloat = 10.0
    """Floor of the z-score's scale, in records (Poisson noise of small counts)."""
    volume_own_ratio: PositiveFloat = 3.5
    volume_peer_ratio: PositiveFloat = 2.0
    """... and at the same time this far above the peers' median hour."""
    volume_new_peer_ratio: PositiveFloat = 6.0
    """New contractors: peers only, stricter."""
    volume_new_peer_z: PositiveFloat = 5.0

    # --- slow exfiltration (records per day, EWMA) -------------------------------------
    exfil_alpha: Share = 0.2
    exfil_ratio: PositiveFloat = 1.05
    """EWMA of reads/day, peer-normalised, at least this far above the contractor's own baseline
    (a sustained rise, however small) ...
    """
    exfil_unworked_ratio: PositiveFloat = 1.1
    """... and read requests per annotation submitted this far above the own baseline (checked
    when the log has annotation submissions for the contractor) ...
    """
    exfil_z: PositiveFloat = 5.0
    """... with a z-score (EWMA over the robust day-to-day spread; of the annotation signal, or
    of both combined) of at least this; reads alone when no annotations.
    """
    exfil_min_days: PositiveInt = 3
    exfil_baseline_gap_days: PositiveInt = 7
    """The baseline ends this many days before the scored day and needs this many days."""
    exfil_min_baseline_days: PositiveInt = 5
    exfil_min_excess_records: PositiveInt = 100
    """Fetches above what the own annotation rate (or own level) explains, recent days."""

    # --- breadth (distinct project/tasks per day) -------------------------------------
    breadth_min_tasks: PositiveInt = 6
    breadth_peer_ratio: PositiveFloat = 3.0

    # --- enumeration (sequential record ids) ------------------------------------------
    enum_min_requests: PositiveInt = 100
    """Hours with fewer read requests are not looked at (annotators do not get near it)."""
    enum_min_run: PositiveInt = 40
    enum_max_stride: PositiveInt = 3
    enum_min_spearman: Share = 0.95
    enum_max_median_step: PositiveInt = 5

    # --- probing (denials, filtered records, unmatched routes) -------------------------
    probe_min_requests: PositiveInt = 10
    probe_min_distinct_paths: PositiveInt = 6

    # --- credential sharing (one subject from several IPs at once) ---------------------
    share_min_requests: PositiveInt = 5
    share_min_overlap_minutes: PositiveInt = 15
    share_min_hours: PositiveInt = 2

    # --- impossible travel (needs locations of addresses) ------------------------------
    ip_locations: str = ""
    """A CSV of networks with coordinates (see gateway/anomaly/locations.py; a relative path is
    taken from the file that sets it); empty: the detector is off.
    """
    travel_min_km: PositiveFloat = 500.0
    """Two places at least this far apart, reached faster than this: impossible."""
    travel_max_kmh: PositiveFloat = 1000.0

    # --- off-hours (against the contractor's own hours of day) -------------------------
    offhours_min_records: PositiveInt = 40
    offhours_min_distance_hours: PositiveInt = 4
    offhours_max_share: Share = 0.02
    """An hour of day the contractor was active on at most this share of their days."""
    offhours_usual_share: Share = 0.1
    """Hours of day active on at least this share of days are the contractor's usual hours."""
    offhours_volume_ratio: PositiveFloat = 3.0
    """Off-hours volume this far above the contractor's median hour alerts even from a known
    address.
    """

    # --- canary records fetched through the gateway ------------------------------------
    canary_on_fetch: Literal["withhold", "release"] = "withhold"
    """"withhold": the request is refused and nothing of it released; "release": released and
    marked. Either way the fetch is logged `canary`, locks at once and alerts.
    """
    canary_lock: Literal["contractor", "vendor", "none"] = "contractor"
    """Who is locked the moment a canary record is fetched: contractor, vendor or none."""

    # --- records asked for under another project's path (record catalogue) ----------
    catalogue_mismatch_min_rows: PositiveInt = 1
    """Rows withheld or refused as `catalogue_mismatch` by one contractor in one UTC day that
    raise an alert; one such row is already a probe of the upstream's IDOR.
    """
    catalogue_mismatch_severity: Severity = "high"

    # --- weak signals combined (detectors/signals.py, detectors/combined.py) ----------
    combined_threshold: PositiveFloat = 8.0
    """A contractor's combined score (points of the day + decay x the previous day's score)
    that raises a `combined` alert.
    """
    combined_decay: Share = 0.5
    """How much of the previous day's score carries into the next day."""
    combined_signal_cap: PositiveFloat = 10.0
    """No one signal counts for more than this (nats, before its weight)."""
    combined_min_points: NonNegativeFloat = 1.0
    """Signals worth fewer points are left out (everyday noise)."""
    grant_recent_days: PositiveInt = 3
    """A first access to a project within this many days of a policy grant of it is expected."""
    vendor_min_contractors: PositiveInt = 4
    """Contractors with history (of the vendor, and of the other vendors on its projects)
    needed to score a vendor's day.
    """
    vendor_cusum_slack: NonNegativeFloat = 0.25
    vendor_cusum_threshold: PositiveFloat = 6.0
    """CUSUM of the vendor's daily z (its contractors' rise against other vendors') that
    raises a `vendor_rise` alert.
    """

    # --- alerts -> locks --------------------------------------------------------------
    auto_lock_detectors: Annotated[tuple[Detector, ...], Field(strict=False)] = ()
    auto_lock_min_severity: Severity = "critical"
    auto_lock_kind: Literal["contractor", "vendor"] = "contractor"
    auto_lock_ttl_hours: NonNegativeFloat = 0.0  # 0: until lifted

    # --- scanning ----------------------------------------------------------------------
    rollup_late_hours: PositiveInt = 2
    """The rollup re-aggregates this many recent hours on every scan (late audit rows)."""
    watch_interval_seconds: PositiveFloat = 60.0
    scan_window_hours: PositiveInt = 48
    """What `scan` without --since (and every `watch` round) looks at."""

    @model_validator(mode="after")
    def _consistent(self) -> AnomalyConfig:
        if self.min_history_days > self.history_days:
            raise Problem("min_history_days", "must not exceed history_days")
        if self.exfil_baseline_gap_days + self.exfil_min_baseline_days > self.history_days:
            raise Problem(
                "exfil_min_baseline_days",
                "the baseline (gap + days) must fit in history_days",
            )
        if self.offhours_max_share >= self.offhours_usual_share:
            raise Problem("offhours_max_share", "must be below offhours_usual_share")
        if self.rollup_late_hours > self.scan_window_hours:
            raise Problem("rollup_late_hours", "must not exceed scan_window_hours")
        return self

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump()


# Kept for callers that catch it: a bad `[anomaly]` value is a ConfigError like any other.
AnomalyConfigError = ConfigError


def parse_anomaly_table(raw: Any) -> AnomalyConfig:
    """An `[anomaly]` table → AnomalyConfig, refusing unknown keys and wrong values."""
    return validated(AnomalyConfig, {} if raw is None else raw, "anomaly")


def resolve_anomaly_paths(table: Any, config_file: str | os.PathLike[str]) -> None:
    """A relative `ip_locations` is taken from the directory of the file that sets it."""
    if not isinstance(table, dict):
        return
    locations = table.get("ip_locations")
    if isinstance(locations, str) and locations and not os.path.isabs(locations):
        base = os.path.dirname(os.path.abspath(config_file))
        table["ip_locations"] = os.path.join(base, locations)


def read_anomaly_table(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The `[anomaly]` table of a TOML file ({} when there is none)."""
    if not path:
        return {}
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise AnomalyConfigError("anomaly", f"file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise AnomalyConfigError("anomaly", f"{path} is not valid TOML: {error}") from None
    table = raw.get("anomaly", {})
    if not isinstance(table, dict):
        raise AnomalyConfigError("anomaly", "must be a table")
    table = dict(table)
    resolve_anomaly_paths(table, path)
    return table


def load_anomaly_config(
    config_path: str | os.PathLike[str] | None = None,
    thresholds_path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> AnomalyConfig:
    """Defaults ← `[anomaly]` of the gateway config ← thresholds file ← environment."""
    from gateway.config import apply_env_overrides

    env = os.environ if environ is None else environ
    table = read_anomaly_table(config_path or env.get("GATEWAY_CONFIG"))
    table.update(read_anomaly_table(thresholds_path or env.get("GATEWAY_ANOMALY_CONFIG")))
    # GATEWAY_ANOMALY__<KEY> last, parsed like every other GATEWAY_<SECTION>__<KEY>.
    raw = {"anomaly": table}
    apply_env_overrides(raw, {k: v for k, v in env.items() if k.startswith("GATEWAY_ANOMALY__")})
    return parse_anomaly_table(raw["anomaly"])
