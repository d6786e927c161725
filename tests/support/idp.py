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


def build_app(jwt_audience: str | None, users: list[dict], token_max_age: int) -> flask.Flask:
    app = flask.Flask("test-idp")
    if jwt_audience:
        app.config["OAUTH2_ACCESS_TOKEN_GENERATOR"] = _MockJWTAccessTokens(jwt_audience)
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
def main(
    host: str, port: int, jwt_audience: str | None, user_claims: tuple[str, ...], token_max_age: int
) -> None:
    import werkzeug.serving

    users = [json.loads(text) for text in user_claims]
    app = build_app(jwt_audience, users, token_max_age)
    werkzeug.serving.run_simple(host, port, app, threaded=True)


if __name__ == "__main__":
    main()
