"""gunicorn settings for the gateway (`gateway serve` and the container image use this
file; so can `gunicorn -c <this file>`). They come from the gateway's configuration
(`[server]`, `[metrics]`, the log format): see gateway/server_settings.py.

gunicorn runs this file again on SIGHUP: a changed `[server]` table or log format applies
on the graceful reload (new workers start, old ones finish within graceful_timeout).
"""

import os
import tempfile

# Before anything imports prometheus_client: its multiprocess mode is chosen at import.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ["GATEWAY_METRICS_DIR_OWNED"] = "1"  # removed when the master exits

from gateway.server_settings import (  # noqa: F401 - gunicorn reads the hooks by name
    child_exit,
    gunicorn_settings,
    on_exit,
    on_starting,
    when_ready,
)

globals().update(gunicorn_settings())
