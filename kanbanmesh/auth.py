"""Access tokens: who a connection is, in what role, on which boards.

A token is a JWT signed with HMAC-SHA256 (PyJWT) under the server's secret, with claims `sub`
(the subject), `role` (a `TokenRole`: `kanbanmesh/board/roles.py`), `boards` (board names, or
`*` for every board), `iat` and `exp`. The server checks it before a websocket is accepted;
what the connection may then write is decided per role (`kanbanmesh/server/authz.py`).
"""

from __future__ import annotations

import math
import time

import jwt
from pydantic import BaseModel, Field, ValidationError

from kanbanmesh.board.roles import TokenRole
from kanbanmesh.errors import KanbanMeshError

_ALGORITHM = "HS256"
ALL_BOARDS = "*"
MIN_SECRET_BYTES = 32  # RFC 7518: an HS256 key at least as long as the hash
MIN_TTL_S = 1.0  # a token's shortest lifetime (`exp` counts whole seconds)


class AuthError(KanbanMeshError):
    """A token is missing, malformed, expired, forged, or not valid for what is asked."""

    def __init__(self, message: str, *, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class Identity(BaseModel):
    """Who is on the other end of a connection."""

    subject: str = Field(min_length=1, max_length=200)
    role: TokenRole
    boards: list[str] = Field(min_length=1)
    # When the token stops being valid (seconds since the epoch); None: never (an open server).
    # The server closes a connection at that moment (4401), whatever it is doing.
    expires_at: float | None = None

    def may_open(self, board: str) -> bool:
        return ALL_BOARDS in self.boards or board in self.boards


# Who may write anything: a server with no secret runs open (everyone is this).
OPEN_ACCESS = Identity(subject="anonymous", role=TokenRole.ADMIN, boards=[ALL_BOARDS])


def create_token(secret: str, identity: Identity, ttl_s: float) -> str:
    """A signed token for `identity`, valid for `ttl_s` seconds."""
    check_secret(secret)
    if not ttl_s >= MIN_TTL_S:  # NaN too
        # `exp` is in whole seconds: a shorter lifetime gives a token that is expired already.
        raise AuthError(f"a token needs a lifetime of at least {MIN_TTL_S:g} s, not {ttl_s:g}")
    now = int(time.time())
    claims = {
        "sub": identity.subject,
        "role": identity.role.value,
        "boards": identity.boards,
        "iat": now,
        "exp": now + math.ceil(ttl_s),
    }
    return jwt.encode(claims, secret, algorithm=_ALGORITHM)


def verify_token(secret: str, token: str) -> Identity:
    """The identity a token names; raises `AuthError` (401) for anything wrong with it."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=[_ALGORITHM], options={"require": ["exp", "sub", "role"]}
        )
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("token expired") from exc
    except jwt.InvalidSignatureError as exc:
        raise AuthError("token signature does not match this server's secret") from exc
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}") from exc
    try:
        return Identity(subject=claims["sub"], role=claims["role"], boards=claims.get("boards") or [],
                        expires_at=claims["exp"])
    except ValidationError as exc:
        raise AuthError(f"invalid token claims: {exc.errors()[0]['msg']}") from exc


def check_secret(secret: str) -> None:
    if len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
        raise AuthError(f"the auth secret must be at least {MIN_SECRET_BYTES} bytes", status=500)
