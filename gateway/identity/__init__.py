"""Who is calling: OIDC access-token validation (JWT and opaque) into a Principal."""

from gateway.identity.principal import AuthError, Principal
from gateway.identity.verifier import TokenVerifier

__all__ = ["AuthError", "Principal", "TokenVerifier"]
