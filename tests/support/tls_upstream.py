"""The sample dataset service behind TLS that requires a client certificate (mutual TLS).

    python -m tests.support.tls_upstream --port 9443 --token T --cert server.pem \
        --key server.key --client-ca ca.pem
"""

from __future__ import annotations

import ssl

import click
import werkzeug.serving

from gateway.demo.upstream import create_upstream_app


@click.command()
@click.option("--host", default="127.0.0.1")
@click.option("--port", type=int, required=True)
@click.option("--token", required=True)
@click.option("--cert", required=True)
@click.option("--key", required=True)
@click.option("--client-ca", required=True, help="CA whose client certificates are accepted")
def main(host: str, port: int, token: str, cert: str, key: str, client_ca: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(client_ca)
    app = create_upstream_app(token)
    werkzeug.serving.run_simple(host, port, app, threaded=True, ssl_context=context)


if __name__ == "__main__":
    main()
