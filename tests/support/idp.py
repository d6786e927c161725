"""A real OIDC provider process for tests and benchmarks: oidc-provider-mock, optionally
issuing RFC 9068 JWT access tokens (authlib's JWTBearerTokenGenerator) instead of its
default opaque ones.

    python -m tests.support.idp --port 9400 --jwt-audience https://gateway.test \
        --user-claims '{"sub": "alice", "vendor": "acme"}'
"""

from __future__ import annotations

import json
from datetime import timedelta

import click
import flask
import oidc_provider_mock
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from oidc_provider_mock._storage import User


class _MockJWTAccessTokens(JWTBearerTokenGenerator):
    """Signs with the provider's own key, so its published JWKS verifies the tokens."""

    def __init__(self, audience: str) -> None:
        super().__init__(issuer="")
        self.audience = audience

    def get_jwks(self):  # type: ignore[no-untyped-def]
        storage = flask.g.oidc_provider_mock_storage
        return {"keys": [storage.jwk.as_dict(is_private=True)]}

    def get_audiences(self, client, user, scope):  # type: ignore[no-untyped-def]
        return self.audience

    def get_extra_claims(self, client, grant_type, user, scope):  # type: ignore[no-untyped-def]
        return {k: v for k, v in user.claims.items() if k not in ("sub", "iss", "aud", "exp")}

    def __call__(self, client, grant_type, user, scope):  # type: ignore[no-untyped-def]
        self.issuer = flask.request.host_url.rstrip("/")
        return self.access_token_generator(client, grant_type, _UserView(user), scope)


class _UserView:
    """The mock's User, with the accessor authlib's generator asks for."""

    def __init__(self, user: User) -> None:
        self.claims = user.claims
        self.sub = user.sub

    def get_user_id(self) -> str:
        return self.sub


class _Introspection(IntrospectionEndpoint):
    """RFC 7662 over the mock's token store (authlib's endpoint, mock's storage)."""

    audience = ""

    def query_token(self, token_string, token_type_hint):  # type: ignore[no-untyped-def]
        return flask.g.oidc_provider_mock_storage.get_access_token(token_string)

    def check_permission(self, token, client, request):  # type: ignore[no-untyped-def]
        return True

    def introspect_token(self, token):  # type: ignore[no-untyped-def]
        user = flask.g.oidc_provider_mock_storage.get_user(token.user_id)
        claims = dict(user.claims) if user else {}
        return {
            **claims,
            "active": True,
            "sub": token.user_id,
            "iss": flask.request.host_url.rstrip("/"),
            "aud": self.audience,
            "exp": int(token.expires_at.timestamp()),
            "scope": token.scope,
            "token_type": "access_token",
        }


def _add_introspection(app: flask.Flask, audience: str) -> None:
    _Introspection.audience = audience

    @app.post("/oauth2/introspect")
    def introspect():  # type: ignore[no-untyped-def]
        server = flask.g._authlib_authorization_server
        if "introspection" not in getattr(server, "_endpoints", {}):
            server.register_endpoint(_Introspection)
        return server.create_endpoint_response("introspection")

    @app.after_request
    def advertise(response: flask.Response) -> flask.Response:
        if flask.request.path == "/.well-known/openid-configuration":
            document = json.loads(response.get_data())
            document["introspection_endpoint"] = flask.request.host_url + "oauth2/introspect"
            response.set_data(json.dumps(document))
        return response


def _add_key_rotation(app: flask.Flask, jwks_max_age: int | None) -> None:
    """`POST /test/rotate-key`: a new signing key replaces the old one, which disappears
    from the JWKS (a withdrawn key). `--jwks-max-age` adds Cache-Control to the JWKS."""

    @app.post("/test/rotate-key")
    def rotate_key():  # type: ignore[no-untyped-def]
        storage = flask.g.oidc_provider_mock_storage
        old = storage.jwk.as_dict().get("kid")
        storage.jwk = type(storage.jwk).generate_key(is_private=True)
        return {"withdrawn": old, "current": storage.jwk.as_dict().get("kid")}

    @app.after_request
    def cache_control(response: flask.Response) -> flask.Response:
        if jwks_max_age is not None and flask.request.path == "/jwks":
            response.headers["Cache-Control"] = f"public, max-age={jwks_max_age}"
        return response


def build_app(
    jwt_audience: str | None,
    users: list[dict],
    token_max_age: int,
    introspection: str | None,
    jwks_max_age: int | None = None,
) -> flask.Flask:
    app = flask.Flask("test-idp")
    _add_key_rotation(app, jwks_max_age)
    if jwt_audience:
        app.config["OAUTH2_ACCESS_TOKEN_GENERATOR"] = _MockJWTAccessTokens(jwt_audience)
    if introspection:
        _add_introspection(app, introspection)
    oidc_provider_mock.init_app(
        app,
        user_claims=[User(sub=u["sub"], claims=u) for u in users],
        access_token_max_age=timedelta(seconds=token_max_age),
    )
    return app


@click.command()
@click.option("--host", default="127.0.0.1")
@click.option("--port", type=int, required=True)
@click.option("--jwt-audience", default=None, help="issue JWT access tokens for this audience")
@click.option("--user-claims", multiple=True, help="JSON object with at least 'sub'")
@click.option("--token-max-age", default=3600)
@click.option("--introspection-audience", default=None, help="serve RFC 7662 introspection")
@click.option("--jwks-max-age", type=int, default=None, help="Cache-Control max-age of the JWKS")
@click.option("--tls-cert", default=None, help="serve HTTPS with this certificate (PEM)")
@click.option("--tls-key", default=None, help="... and this key")
def main(
    host: str,
    port: int,
    jwt_audience: str | None,
    user_claims: tuple[str, ...],
    token_max_age: int,
    introspection_audience: str | None,
    jwks_max_age: int | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    import werkzeug.serving

    users = [json.loads(text) for text in user_claims]
    app = build_app(jwt_audience, users, token_max_age, introspection_audience, jwks_max_age)
    tls = (tls_cert, tls_key) if tls_cert and tls_key else None
    werkzeug.serving.run_simple(host, port, app, threaded=True, ssl_context=tls)


if __name__ == "__main__":
    main()
