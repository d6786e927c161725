"""Get an access token from the demo IdP the way a real client does: the authorization code flow.

`python -m gateway.demo.token --sub alice` prints alice's access token and nothing else, so
`TOKEN=$(python -m gateway.demo.token --sub alice)` works in a shell. The IdP is `--idp`,
else `$DEMO_IDP_URL` (which the demo's `var/demo.env` exports), else the demo's default
port. Demo users: contractors alice, bob (vendor acme) and carol (globex); the lab's ann
(role admin) and audrey (role auditor), whose roles the demo config trusts.

The demo IdP is the stock `oidc-provider-mock`: its login page is a form with a `sub` field
and it accepts any client id with any secret. This module plays browser and client at once:

1. GET the discovery document;
2. POST the login form (`sub=...`) to the authorization endpoint with the usual
   client_id / redirect_uri / response_type=code / scope / state query parameters;
3. take the `code` from the 302 redirect (without following it);
4. POST it to the token endpoint with HTTP Basic client authentication.

Nothing here mints a token: the IdP issues it, and the gateway checks it at the IdP.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import click
import orjson
import urllib3

DEFAULT_IDP = "http://127.0.0.1:9400"
REDIRECT_URI = "http://127.0.0.1/demo-callback"  # never visited: the redirect is read, not followed
CLIENT_SECRET = "demo-secret"  # noqa: S105 - oidc-provider-mock accepts any secret
SCOPE = "openid email profile"
TIMEOUT = urllib3.Timeout(connect=3.0, read=10.0)


class TokenFlowError(Exception):
    """The flow failed; the message says at which step and why."""


def _request(http: urllib3.PoolManager, method: str, url: str, **kwargs: Any) -> Any:
    try:
        return http.request(method, url, timeout=TIMEOUT, retries=False, redirect=False, **kwargs)
    except urllib3.exceptions.HTTPError as error:
        reason = "connection refused" if "refused" in str(error) else type(error).__name__
        raise TokenFlowError(f"cannot reach {url}: {reason} (is `make demo` running?)") from None


def _detail(response: Any) -> str:
    """A short, single-line hint from an error body (OAuth error JSON or plain text)."""
    try:
        body = orjson.loads(response.data)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and "error" in body:
        return f": {body['error']} {body.get('error_description') or ''}".rstrip()
    if "html" in response.headers.get("Content-Type", ""):
        return ""
    text = " ".join(response.data[:200].decode("utf-8", "replace").split())
    return f": {text}" if text else ""


def _json(response: Any, what: str) -> dict[str, Any]:
    try:
        body = orjson.loads(response.data)
    except orjson.JSONDecodeError:
        body = None
    if response.status != 200 or not isinstance(body, dict):
        raise TokenFlowError(f"{what} answered HTTP {response.status}{_detail(response)}")
    return body


def obtain_access_token(idp_url: str, sub: str, client_id: str = "demo-cli") -> str:
    """Run the authorization code flow for user `sub` and return the access token."""
    if not sub:
        raise TokenFlowError("a subject (user name) is required")
    idp_url = idp_url.rstrip("/")
    http = urllib3.PoolManager(num_pools=2)

    discovery_url = f"{idp_url}/.well-known/openid-configuration"
    metadata = _json(_request(http, "GET", discovery_url), "discovery")
    authorization_endpoint = metadata.get("authorization_endpoint")
    token_endpoint = metadata.get("token_endpoint")
    if not isinstance(authorization_endpoint, str) or not isinstance(token_endpoint, str):
        raise TokenFlowError(f"{discovery_url} names no authorization or token endpoint")

    state = secrets.token_urlsafe(16)
    query = urlencode(
        {
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "response_type": "code",
            "scope": SCOPE,
            "state": state,
        }
    )
    separator = "&" if "?" in authorization_endpoint else "?"
    login = _request(
        http,
        "POST",
        f"{authorization_endpoint}{separator}{query}",
        fields={"sub": sub},
        encode_multipart=False,
    )
    if login.status not in (302, 303):
        raise TokenFlowError(f"authorization endpoint answered HTTP {login.status}{_detail(login)}")
    params = parse_qs(urlsplit(login.headers.get("Location", "")).query)
    if "error" in params:
        detail = params.get("error_description", params["error"])[0]
        raise TokenFlowError(f"authorization refused: {params['error'][0]} ({detail})")
    if params.get("state") != [state]:
        raise TokenFlowError("authorization redirect carries the wrong state")
    code = params.get("code", [""])[0]
    if not code:
        raise TokenFlowError("authorization redirect carries no code")

    headers = urllib3.make_headers(basic_auth=f"{client_id}:{CLIENT_SECRET}")
    token_response = _request(
        http,
        "POST",
        token_endpoint,
        fields={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI},
        encode_multipart=False,
        headers=headers,
    )
    tokens = _json(token_response, "token endpoint")
    access_token = tokens.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise TokenFlowError("token endpoint returned no access_token")
    return access_token


@click.command()
@click.option(
    "--idp",
    "idp_url",
    envvar="DEMO_IDP_URL",
    default=DEFAULT_IDP,
    show_default=True,
    help="IdP base URL (or DEMO_IDP_URL)",
)
@click.option(
    "--sub",
    required=True,
    help="user to log in as (demo users: alice, bob, carol; ann: admin, audrey: auditor)",
)
@click.option("--client-id", default="demo-cli", show_default=True)
def main(idp_url: str, sub: str, client_id: str) -> None:
    """Log in at the demo IdP and print the access token."""
    try:
        click.echo(obtain_access_token(idp_url, sub, client_id))
    except TokenFlowError as error:
        raise click.ClickException(str(error)) from None


if __name__ == "__main__":
    main()
