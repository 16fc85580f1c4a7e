"""JWT verification with pinned algorithms, and the dev-token minter.

HS256 with a shared secret (a dev secret is generated once in the data folder when
none is configured), or RS256/ES256 with a public key or a JWKS file/URL. The
algorithm in a token's header never chooses the verification method.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from .config import Settings
from .errors import Unauthorized

ROLES = frozenset({"buyer", "client", "manager", "service"})
_MAX_ID = 2**63 - 1
# Verified tokens are remembered (by their exact text) for this long at most, and
# never past their own expiry; at most this many at a time.
TOKEN_CACHE_MAX_AGE_S = 300.0
TOKEN_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: int
    role: str
    demo: bool
    exp: float


def dev_secret(data_dir: Path) -> str:
    """The HS256 secret from the data folder, created on first use (mode 0600)."""
    path = data_dir / "jwt_dev_secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        data_dir.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret)
        return secret


def _read_key(value: str) -> str:
    """A PEM given inline or as a path to a file."""
    if "-----BEGIN" in value:
        return value
    return Path(value).read_text()


class TokenVerifier:
    """Verifies end-user and service tokens; cheap to call.

    Apps send the same token with every request for as long as it lives, so a
    token that passed is remembered by its exact text (a changed byte is another
    key, verified afresh by PyJWT) for `TOKEN_CACHE_MAX_AGE_S` at most and never
    past `exp` plus the leeway, the moment PyJWT would call it expired. The cache
    holds at most `TOKEN_CACHE_SIZE` tokens, the oldest going first. Refused
    tokens are never remembered."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._cache: dict[str, tuple[Identity, float]] = {}
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.leeway = settings.jwt_leeway_s
        self._jwk_client: jwt.PyJWKClient | None = None
        self._jwks_keys: dict[str, Any] = {}
        if settings.jwt_jwks:
            self.algorithms = ["RS256", "ES256"]
            src = settings.jwt_jwks
            if src.startswith(("http://", "https://")):
                self._jwk_client = jwt.PyJWKClient(src, cache_keys=True, lifespan=300)
            else:
                jwks = jwt.PyJWKSet.from_dict(json.loads(Path(src).read_text()))
                self._jwks_keys = {k.key_id: k for k in jwks.keys}
            self._key: Any = None
        elif settings.jwt_public_key:
            pem = _read_key(settings.jwt_public_key)
            self._key = pem
            self.algorithms = ["ES256"] if "EC" in _key_kind(pem) else ["RS256"]
        else:
            self._key = settings.jwt_secret or dev_secret(settings.data_dir)
            self.algorithms = ["HS256"]

    def _key_for(self, token: str) -> Any:
        if self._jwk_client is not None:
            return self._jwk_client.get_signing_key_from_jwt(token).key
        if self._jwks_keys:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._jwks_keys.get(kid)
            if key is None:
                raise Unauthorized("unknown key id")
            return key.key
        return self._key

    def verify(self, token: str) -> Identity:
        if not token or len(token) > 8192:
            raise Unauthorized("missing or malformed token")
        now = self.clock()
        cached = self._cache.get(token)
        if cached is not None:
            if now < cached[1]:
                return cached[0]
            del self._cache[token]
        identity = self._verify(token)
        until = min(identity.exp + self.leeway, now + TOKEN_CACHE_MAX_AGE_S)
        if now < until:
            if len(self._cache) >= TOKEN_CACHE_SIZE:
                del self._cache[next(iter(self._cache))]
            self._cache[token] = (identity, until)
        return identity

    def _verify(self, token: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                self._key_for(token),
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={
                    "require": ["exp", "iat", "sub"],
                    "verify_aud": self.audience is not None,
                    "verify_iss": self.issuer is not None,
                },
            )
        except Unauthorized:
            raise
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("token not yet valid") from None
        except (jwt.InvalidTokenError, ValueError, TypeError, KeyError):
            raise Unauthorized("invalid token") from None
        return _identity(claims)


def _key_kind(pem: str) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(pem.encode())
    return "EC" if isinstance(key, ec.EllipticCurvePublicKey) else "RSA"


def _identity(claims: dict[str, Any]) -> Identity:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.isdigit() or not sub.isascii():
        raise Unauthorized("invalid subject")
    if sub != str(int(sub)):  # "01" and "1" must not name one user two ways
        raise Unauthorized("invalid subject")
    user_id = int(sub)
    if not 1 <= user_id <= _MAX_ID:  # ids start at 1, as everywhere in the contract
        raise Unauthorized("invalid subject")
    role = claims.get("role")
    if role not in ROLES:
        raise Unauthorized("invalid role")
    demo = claims.get("demo", False)
    if not isinstance(demo, bool):
        raise Unauthorized("invalid demo claim")
    exp = claims["exp"]
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        raise Unauthorized("invalid exp")
    return Identity(user_id=user_id, role=role, demo=demo, exp=float(exp))


def mint(
    settings: Settings,
    sub: int | str,
    role: str,
    *,
    demo: bool = False,
    ttl_s: float = 3600,
    extra: dict[str, Any] | None = None,
) -> str:
    """A dev token signed with the configured HS256 secret (never for production)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(sub),
        "role": role,
        "iat": now,
        "exp": now + int(ttl_s),
    }
    if demo:
        claims["demo"] = True
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if extra:
        claims.update(extra)
    secret = settings.jwt_secret or dev_secret(settings.data_dir)
    return jwt.encode(claims, secret, algorithm="HS256")
