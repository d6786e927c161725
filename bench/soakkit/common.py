"""Settings and names the soak's parts share."""

from __future__ import annotations

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
UA_PREFIX = "soak"
RECORDS_PER_TASK = 300  # the sample service's default; an export chunk is one task's records
EXPORT_CHUNKS = 2
EXPORT_DELAY = 0.3
LOCKED_CONTRACTOR = "acme-idp:bob"
LOCKED_VENDOR = "acme"
# The grant the policy changes toggle, and the path whose answer it decides.
TOGGLED_GRANT = ("acme-idp:alice", "proj-2", "task-2", "read")
TOGGLED_RULE = "p, acme-idp:alice, proj-2, task-2, read, allow"
# Client i is SUBJECTS[i % 5]: 2/5 alice, 2/5 bob, 1/5 carol (opaque token, other vendor).
SUBJECTS = ("alice", "bob", "alice", "bob", "carol")
