"""HMAC-SHA256 signatures of webhook bodies, and their check on the receiving side.

    X-Gateway-Timestamp: 1764820800
    X-Gateway-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

The timestamp is signed with the body, so a captured delivery cannot be replayed after
the receiver's window (5 minutes by default); each attempt is signed anew. The delivery
id (`X-Gateway-Delivery`, also the body's `id`) stays the same across retries: a receiver
that has seen it has seen this notification.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SCHEME = "v1"
DEFAULT_TOLERANCE_SECONDS = 300


class SignatureInvalid(ValueError):
    pass


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SCHEME}={digest.hexdigest()}"


def verify(
    secret: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Raise SignatureInvalid unless `signature` signs `body` at `timestamp`, recently."""
    if not timestamp or not signature:
        raise SignatureInvalid("missing X-Gateway-Timestamp or X-Gateway-Signature")
    try:
        moment = int(timestamp)
    except ValueError:
        raise SignatureInvalid("timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - moment) > tolerance:
        raise SignatureInvalid("timestamp outside the replay window")
    expected = sign(secret, moment, body)
    offered = [part.strip() for part in signature.split(",")]
    if not any(hmac.compare_digest(expected, candidate) for candidate in offered):
        raise SignatureInvalid("signature does not match")
