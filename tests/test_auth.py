"""Token verification without sockets: claims the server insists on."""

from __future__ import annotations

import time

import jwt
import pytest

from wsserver.auth import TokenVerifier
from wsserver.config import Settings
from wsserver.errors import Unauthorized

SECRET = "k" * 40


def token(**claims: object) -> str:
    now = int(time.time())
    body = {"sub": "42", "role": "buyer", "iat": now, "exp": now + 60, **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    "claims",
    [{"sub": "01"}, {"sub": "0042"}, {"sub": "-1"}, {"sub": "0"}, {"sub": "４２"}, {"sub": 42},
     {"role": "admin"}, {"demo": "yes"}, {"sub": str(2**63)}],
)
def test_verifier_refuses_ambiguous_or_invalid_claims(claims):
    verifier = TokenVerifier(Settings(jwt_secret=SECRET))
    with pytest.raises(Unauthorized):
        verifier.verify(token(**claims))


def test_verifier_accepts_a_plain_token():
    ident = TokenVerifier(Settings(jwt_secret=SECRET)).verify(token(demo=True))
    assert (ident.user_id, ident.role, ident.demo) == (42, "buyer", True)
