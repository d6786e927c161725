"""Drive the authorization code flow against the test IdP, the way a browser client would."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import requests

REDIRECT_URI = "http://127.0.0.1:1/callback"


def obtain_tokens(idp_url: str, sub: str, *, client_id: str = "gateway-tests") -> dict:
    """Return the token endpoint's JSON (access_token, id_token, ...) for user `sub`."""
    discovery = requests.get(f"{idp_url}/.well-known/openid-configuration", timeout=5).json()
    response = requests.post(
        discovery["authorization_endpoint"],
        params={
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "response_type": "code",
            "scope": "openid email profile",
            "state": "s",
        },
        data={"sub": sub},
        allow_redirects=False,
        timeout=5,
    )
    assert response.status_code == 302, response.text
    code = parse_qs(urlparse(response.headers["Location"]).query)["code"][0]
    token = requests.post(
        discovery["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
        },
        auth=(client_id, "secret"),
        timeout=5,
    )
    assert token.status_code == 200, token.text
    return token.json()
