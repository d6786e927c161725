"""`gunicorn gateway.wsgi:app`: the WSGI entry point; the configuration comes from
GATEWAY_CONFIG."""

from gateway import create_app, server_errors
from gateway.config import ConfigError, load_config
from gateway.keys import KeysError
from gateway.server_settings import running_config

server_errors.install()

try:
    # Under gateway/gunicorn.conf.py: the configuration the master read (see there).
    app = create_app(running_config() or load_config())
except (ConfigError, KeysError) as error:
    # One clear line instead of a worker traceback; gunicorn then stops for good.
    raise SystemExit(f"gateway: {error}") from None
