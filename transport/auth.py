"""Token authentication of the handshake (PROTOCOL.md, "Connecting"): JWT, HS256.

The user id comes from the token's ``sub`` and nowhere else. ``exp`` is honoured when present.
"""

from __future__ import annotations

import time
from typing import Mapping
from urllib.parse import parse_qs, urlsplit

import jwt

from actors.messages import is_user_id

ALGORITHM = "HS256"


class AuthError(Exception):
    """The handshake's token is missing or not acceptable; the message is the 401's body."""


def token_of(path: str, headers: Mapping[str, str]) -> str | None:
    """The token of a handshake: ``Authorization: Bearer <token>``, else ``?token=``."""
    auth = headers.get("Authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return ""  # present but not a bearer token: malformed
    tokens = parse_qs(urlsplit(path).query).get("token")
    return tokens[0] if tokens else None


def verify(token: str | None, secret: str) -> str:
    """The user id a token vouches for. Raises ``AuthError`` with a short reason."""
    if token is None:
        raise AuthError("missing token")
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM],
                            options={"require": ["sub"], "verify_exp": True})
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.InvalidSignatureError:
        raise AuthError("invalid token signature") from None
    except jwt.MissingRequiredClaimError:
        raise AuthError("token has no sub claim") from None
    except jwt.InvalidTokenError:
        raise AuthError("malformed token") from None
    user_id = claims["sub"]
    if not is_user_id(user_id):
        raise AuthError("sub must be 1-128 characters of A-Z a-z 0-9 _ . : @ -")
    return user_id


def mint(user_id: str, secret: str, ttl: float | None = None) -> str:
    """A token for ``user_id``, valid for ``ttl`` seconds (``None``: no expiry)."""
    if not is_user_id(user_id):
        raise ValueError(f"invalid user id {user_id!r}")
    claims: dict[str, object] = {"sub": user_id, "iat": int(time.time())}
    if ttl is not None:
        claims["exp"] = int(time.time() + ttl)
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
