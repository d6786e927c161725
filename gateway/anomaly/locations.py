"""Where client addresses are: a CSV of networks with coordinates, for impossible travel.

The file has a header row naming at least `network`, `latitude` and `longitude`, and
optionally `place` and `accuracy_radius` (km); one network (CIDR, IPv4 or IPv6) per row.
MaxMind's GeoLite2-City blocks CSVs have these columns (the IPv4 and IPv6 files may be
concatenated: a repeated header row is skipped); a lab can also list its vendors' offices
and VPN exits by hand. Lookups take the longest matching prefix; IPv4-mapped IPv6
addresses are looked up as IPv4.

    network,latitude,longitude,place
    203.0.113.0/24,52.52,13.40,Berlin office
    198.51.100.0/24,14.60,120.98,Manila office
"""

from __future__ import annotations

import csv
import ipaddress
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from gateway.anomaly.config import AnomalyConfigError

EARTH_RADIUS_KM = 6371.0
KEY = "anomaly.ip_locations"


@dataclass(frozen=True)
class Place:
    latitude: float
    longitude: float
    name: str
    accuracy_km: float = 0.0

    def km_apart(self, other: Place) -> float:
        """The least distance the two places can be apart, given their accuracy."""
        return max(0.0, self.km_to(other) - self.accuracy_km - other.accuracy_km)

    def km_to(self, other: Place) -> float:
        """Great-circle distance (haversine) between the two points."""
        lat1, lat2 = math.radians(self.latitude), math.radians(other.latitude)
        dlat = lat2 - lat1
        dlon = math.radians(other.longitude - self.longitude)
        a = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
        return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


class IpLocations:
    """Longest-prefix lookup: one dict per (IP version, prefix length) present."""

    def __init__(self, networks: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, Place]):
        self._tables: dict[tuple[int, int], dict[int, Place]] = {}
        for network, place in networks.items():
            table = self._tables.setdefault((network.version, network.prefixlen), {})
            table[int(network.network_address)] = place
        # Longest prefixes first.
        self._order = sorted(self._tables, key=lambda vp: -vp[1])
        self.lookup = lru_cache(maxsize=65536)(self._lookup)

    def __len__(self) -> int:
        return sum(len(table) for table in self._tables.values())

    def _lookup(self, address: str | None) -> Place | None:
        if not address:
            return None
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        bits = 32 if ip.version == 4 else 128
        value = int(ip)
        for version, prefix in self._order:
            if version != ip.version:
                continue
            masked = value & (((1 << prefix) - 1) << (bits - prefix)) if prefix else 0
            place = self._tables[(version, prefix)].get(masked)
            if place is not None:
                return place
        return None


def load_locations(path: str | Path) -> IpLocations:
    """Read the CSV; a bad file is refused with the line named (config key ip_locations)."""
    networks: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, Place] = {}
    try:
        # utf-8-sig: a byte-order mark is not part of the first column's name.
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [name.strip().lower() for name in next(reader, [])]
            missing = {"network", "latitude", "longitude"} - set(header)
            if missing:
                raise AnomalyConfigError(
                    KEY, f"{path}: the header row lacks {', '.join(sorted(missing))}"
                )
            column = {name: i for i, name in enumerate(header)}
            for row in reader:
                line = reader.line_num
                cells = {name: row[i].strip() if i < len(row) else "" for name, i in column.items()}
                if not any(cells.values()) or cells["network"].lower() == "network":
                    continue  # a blank line, or the header of a concatenated file
                try:
                    network = ipaddress.ip_network(cells["network"], strict=False)
                except ValueError:
                    raise AnomalyConfigError(
                        KEY, f"{path} line {line}: {cells['network'][:60]!r} is not a network"
                    ) from None
                if not cells["latitude"] and not cells["longitude"]:
                    continue  # GeoLite2 rows without coordinates place nothing
                try:
                    latitude, longitude = float(cells["latitude"]), float(cells["longitude"])
                    accuracy = float(cells.get("accuracy_radius") or 0)
                except ValueError:
                    raise AnomalyConfigError(
                        KEY,
                        f"{path} line {line}: latitude, longitude or accuracy_radius "
                        "is not a number",
                    ) from None
                if not (-90 <= latitude <= 90 and -180 <= longitude <= 180) or accuracy < 0:
                    raise AnomalyConfigError(KEY, f"{path} line {line}: coordinates out of range")
                name = cells.get("place") or f"{latitude:.2f},{longitude:.2f}"
                networks[network] = Place(latitude, longitude, name, accuracy)
    except FileNotFoundError:
        raise AnomalyConfigError(KEY, f"file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise AnomalyConfigError(KEY, f"{path} cannot be read: {error}") from None
    return IpLocations(networks)
