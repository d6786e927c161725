"""`gunicorn gateway.wsgi:app`: the WSGI entry point; the configuration comes from
GATEWAY_CONFIG."""

from gateway import create_app
from gateway.config import load_config

app = create_app(load_config())
