"""Path normalisation on the raw request target, before any route is matched.

We look at the path exactly as the client sent it (gunicorn's RAW_URI), because by the
time a WSGI server has decoded `%2f` into `/` the trick can no longer be seen. Anything
that a server, a framework or the upstream could read as a different path is refused
rather than repaired: there is no legitimate reason for a contractor's client to send it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
# Characters a path may carry verbatim (RFC 3986 pchar without '%' and ';').
_ALLOWED = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,=:@/%]*\Z")
# Bytes that must never arrive percent-encoded: separators, dots, escapes, controls.
_FORBIDDEN_ENCODED = frozenset(b"/\\.;%?#") | frozenset(range(0x20)) | {0x7F}
MAX_PATH_LENGTH = 2048


class PathRejected(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def normalise_path(raw_path: str) -> str:
    """Return the decoded path, or raise PathRejected naming the trick."""
    if not raw_path.startswith("/"):
        raise PathRejected("path must start with '/'")
    if len(raw_path) > MAX_PATH_LENGTH:
        raise PathRejected("path is too long")
    if "\\" in raw_path:
        raise PathRejected("backslash in path")
    if ";" in raw_path:
        raise PathRejected("';' path parameters are not accepted")
    if not _ALLOWED.match(raw_path):
        raise PathRejected("path contains characters that must be percent-encoded")
    for match in _PERCENT.finditer(raw_path):
        if int(match.group(1), 16) in _FORBIDDEN_ENCODED:
            raise PathRejected(f"encoded {match.group(0)} in path")
    if "%" in _PERCENT.sub("", raw_path):
        raise PathRejected("malformed percent-encoding")
    try:
        path = unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        raise PathRejected("path is not valid UTF-8") from None
    segments = path.split("/")[1:]
    if any(segment in (".", "..") for segment in segments):
        raise PathRejected("dot segment in path")
    if "" in segments[:-1]:
        raise PathRejected("empty segment ('//') in path")
    return path


def split_request_target(target: str) -> tuple[str, str]:
    """Split a raw request target into (path, query); absolute-form targets keep their path."""
    # A fragment never belongs in a request target; an upstream would drop it and act on a
    # different query than the one checked here.
    if "#" in target:
        raise PathRejected("fragment in request target")
    if target.startswith(("http://", "https://")):
        after_scheme = target.split("://", 1)[1]
        end = re.search(r"[/?#]", after_scheme)
        if end is None:
            return "/", ""
        if end.group(0) != "/":
            # `http://h?x=/api/...` has path "" to any other parser; refuse the ambiguity.
            raise PathRejected("absolute-form target without a path")
        target = after_scheme[end.start() :]
    path, _, query = target.partition("?")
    return path, query
