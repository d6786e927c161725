"""Detector thresholds: a dataclass of defaults, optionally overridden by an `[anomaly]` table.

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
from dataclasses import dataclass, fields, replace
from typing import Any

SEVERITIES = ("low", "medium", "high", "critical")
DETECTORS = (
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
)


class AnomalyConfigError(ValueError):
    """A bad `[anomaly]` value; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config key 'anomaly.{key}': {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class AnomalyConfig:
    # --- history and peers -------------------------------------------------------------
    # Days of history behind every scored hour or day.
    history_days: int = 28
    # Active days a contractor needs before being scored against their own history;
    # before that (a new contractor) only against peers.
    min_history_days: int = 7
    # Peers (same vendor and project) needed for a peer baseline; fewer → vendor-wide.
    peer_min: int = 4

    # --- volume spike (records per hour) ----------------------------------------------
    volume_min_records: int = 60
    # Robust z-score against the contractor's own hours of the same kind (weekday or
    # weekend, same hour of day): (x - median) / (1.4826 MAD), MAD floored.
    volume_own_z: float = 7.0
    # Floor of the z-score's scale, in records (Poisson noise of small counts).
    volume_min_scale: float = 10.0
    volume_own_ratio: float = 3.5
    # ... and at the same time this far above the peers' median hour.
    volume_peer_ratio: float = 2.0
    # New contractors: peers only, stricter.
    volume_new_peer_ratio: float = 6.0
    volume_new_peer_z: float = 5.0

    # --- slow exfiltration (records per day, EWMA) -------------------------------------
    exfil_alpha: float = 0.2
    # EWMA of reads/day, peer-normalised, at least this far above the contractor's own
    # baseline (a sustained rise, however small) ...
    exfil_ratio: float = 1.05
    # ... and read requests per annotation submitted this far above the own baseline
    # (checked when the log has annotation submissions for the contractor) ...
    exfil_unworked_ratio: float = 1.1
    # ... with a z-score (EWMA over the robust day-to-day spread; of the annotation
    # signal, or of both combined) of at least this; reads alone when no annotations.
    exfil_z: float = 5.0
    exfil_min_days: int = 3
    # The baseline ends this many days before the scored day and needs this many days.
    exfil_baseline_gap_days: int = 7
    exfil_min_baseline_days: int = 5
    # Fetches above what the own annotation rate (or own level) explains, recent days.
    exfil_min_excess_records: int = 100

    # --- breadth (distinct project/tasks per day) -------------------------------------
    breadth_min_tasks: int = 6
    breadth_peer_ratio: float = 3.0

    # --- enumeration (sequential record ids) ------------------------------------------
    # Hours with fewer read requests are not looked at (annotators do not get near it).
    enum_min_requests: int = 100
    enum_min_run: int = 40
    enum_max_stride: int = 3
    enum_min_spearman: float = 0.95
    enum_max_median_step: int = 5

    # --- probing (denials, filtered records, unmatched routes) -------------------------
    probe_min_requests: int = 10
    probe_min_distinct_paths: int = 6

    # --- credential sharing (one subject from several IPs at once) ---------------------
    share_min_requests: int = 5
    share_min_overlap_minutes: int = 15
    share_min_hours: int = 2

    # --- impossible travel (needs locations of addresses) ------------------------------
    # A CSV of networks with coordinates (see gateway/anomaly/locations.py; a relative
    # path is taken from the file that sets it); empty: the detector is off.
    ip_locations: str = ""
    # Two places at least this far apart, reached faster than this: impossible.
    travel_min_km: float = 500.0
    travel_max_kmh: float = 1000.0

    # --- off-hours (against the contractor's own hours of day) -------------------------
    offhours_min_records: int = 40
    offhours_min_distance_hours: int = 4
    # An hour of day the contractor was active on at most this share of their days.
    offhours_max_share: float = 0.02
    # Hours of day active on at least this share of days are the contractor's usual hours.
    offhours_usual_share: float = 0.1
    # Off-hours volume this far above the contractor's median hour alerts even from a
    # known address.
    offhours_volume_ratio: float = 3.0

    # --- canary records fetched through the gateway ------------------------------------
    # "withhold": the request is refused and nothing of it released; "release": released
    # and marked. Either way the fetch is logged `canary`, locks at once and alerts.
    canary_on_fetch: str = "withhold"
    # Who is locked the moment a canary record is fetched: contractor, vendor or none.
    canary_lock: str = "contractor"

    # --- records asked for under another project's path (record catalogue) ----------
    # Rows withheld or refused as `catalogue_mismatch` by one contractor in one UTC day
    # that raise an alert; one such row is already a probe of the upstream's IDOR.
    catalogue_mismatch_min_rows: int = 1
    catalogue_mismatch_severity: str = "high"

    # --- alerts -> locks --------------------------------------------------------------
    auto_lock_detectors: tuple[str, ...] = ()
    auto_lock_min_severity: str = "critical"
    auto_lock_kind: str = "contractor"
    auto_lock_ttl_hours: float = 0.0  # 0: until lifted

    # --- scanning ----------------------------------------------------------------------
    # The rollup re-aggregates this many recent hours on every scan (late audit rows).
    rollup_late_hours: int = 2
    watch_interval_seconds: float = 60.0
    # What `scan` without --since (and every `watch` round) looks at.
    scan_window_hours: int = 48

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def parse_anomaly_table(raw: Any) -> AnomalyConfig:
    """An `[anomaly]` table → AnomalyConfig, refusing unknown keys and wrong types."""
    if raw is None:
        return AnomalyConfig()
    if not isinstance(raw, Mapping):
        raise AnomalyConfigError("", "must be a table")
    defaults = AnomalyConfig()
    known = {f.name for f in fields(AnomalyConfig)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise AnomalyConfigError(key, "unknown key")
        default = getattr(defaults, key)
        if isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise AnomalyConfigError(key, "must be a list of strings")
            value = tuple(value)
        elif isinstance(default, str):
            if not isinstance(value, str) or not value:
                raise AnomalyConfigError(key, "must be a non-empty string")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise AnomalyConfigError(key, "must be true or false")
        elif isinstance(default, int | float):
            expected = (int, float) if isinstance(default, float) else int
            if isinstance(value, bool) or not isinstance(value, expected):
                raise AnomalyConfigError(key, f"must be a {type(default).__name__}")
            if value < 0 or (value == 0 and default != 0):
                raise AnomalyConfigError(key, "must be positive")
            value = float(value) if isinstance(default, float) else value
        values[key] = value
    config = replace(defaults, **values)
    for detector in config.auto_lock_detectors:
        if detector not in DETECTORS:
            raise AnomalyConfigError(
                "auto_lock_detectors", f"unknown detector {detector!r} (known: {list(DETECTORS)})"
            )
    if config.auto_lock_min_severity not in SEVERITIES:
        raise AnomalyConfigError("auto_lock_min_severity", f"must be one of {list(SEVERITIES)}")
    if config.catalogue_mismatch_severity not in SEVERITIES:
        raise AnomalyConfigError(
            "catalogue_mismatch_severity", f"must be one of {list(SEVERITIES)}"
        )
    if config.canary_on_fetch not in ("withhold", "release"):
        raise AnomalyConfigError("canary_on_fetch", "must be withhold or release")
    if config.canary_lock not in ("contractor", "vendor", "none"):
        raise AnomalyConfigError("canary_lock", "must be contractor, vendor or none")
    if config.auto_lock_kind not in ("contractor", "vendor"):
        raise AnomalyConfigError("auto_lock_kind", "must be contractor or vendor")
    for key in ("exfil_alpha", "offhours_max_share", "offhours_usual_share"):
        if not 0 < getattr(config, key) <= 1:
            raise AnomalyConfigError(key, "must be in (0, 1]")
    return config


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
        raise AnomalyConfigError("", f"file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise AnomalyConfigError("", f"{path} is not valid TOML: {error}") from None
    table = raw.get("anomaly", {})
    if not isinstance(table, dict):
        raise AnomalyConfigError("", "must be a table")
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
