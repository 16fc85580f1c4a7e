"""The JWT matrix at the handshake: every kind of bad token is HTTP 401 with no
upgrade, as `Authorization: Bearer` and as `?token=`; the genuine one upgrades."""

from __future__ import annotations

import json
import time
import warnings
from typing import Any

import jwt
import jwt.warnings
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.wire import claims_of, handshake, hmac_token, retamper, unsigned_token

ISSUER = "marketplace-test"
AUDIENCE = "beseda-test"


def rsa_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def hs512(claims: dict[str, Any], secret: str) -> str:
    with warnings.catch_warnings():  # the test secret is short for SHA-512, on purpose
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm="HS512")


def bad_tokens(world: Any, uid: int) -> dict[str, str]:
    secret = world.settings.jwt_secret
    valid = world.token(uid)
    claims = claims_of(valid)
    now = int(time.time())
    without = lambda *names: {k: v for k, v in claims.items() if k not in names}  # noqa: E731
    return {
        "alg none": unsigned_token("none", claims),
        "HS512 with the secret": hs512(claims, secret),
        "RS256 header, HMAC with the secret": hmac_token(
            {"alg": "RS256", "typ": "JWT"}, claims, secret
        ),
        "RS256 with an RSA key": jwt.encode(claims, rsa_pem(), algorithm="RS256"),
        "wrong key": jwt.encode(
            claims, "another-secret-" + "q" * 32, algorithm="HS256"
        ),
        "expired": jwt.encode(
            {**claims, "iat": now - 600, "exp": now - 60}, secret, algorithm="HS256"
        ),
        "nbf in the future": jwt.encode(
            {**claims, "nbf": now + 60}, secret, algorithm="HS256"
        ),
        "tampered payload": retamper(valid, role="manager"),
        "no exp": jwt.encode(without("exp"), secret, algorithm="HS256"),
        "no sub": jwt.encode(without("sub"), secret, algorithm="HS256"),
        "sub not decimal": jwt.encode(
            {**claims, "sub": "42abc"}, secret, algorithm="HS256"
        ),
        "sub as number": jwt.encode({**claims, "sub": uid}, secret, algorithm="HS256"),
        "unknown role": jwt.encode(
            {**claims, "role": "admin"}, secret, algorithm="HS256"
        ),
        "not a jwt": "not.a.jwt",
    }


async def assert_refused(
    port: int, token: str | None, via_query: bool, name: str
) -> None:
    status, headers, body = await handshake(port, token, via_query=via_query)
    assert status == 401, name
    assert "upgrade" not in headers and "sec-websocket-accept" not in headers, name
    assert json.loads(body)["error"]["code"] == "unauthorized", name


@pytest.mark.parametrize("via_query", [False, True], ids=["header", "query"])
async def test_handshake_is_401_without_upgrade_when_token_is_bad(
    world_with, via_query
):
    """Each bad token is refused; the genuine token upgrades (101)."""
    world = await world_with()
    uid = await world.user()
    port = world.node.ws_port
    status, _, _ = await handshake(port, world.token(uid), via_query=via_query)
    assert status == 101
    for name, token in bad_tokens(world, uid).items():
        await assert_refused(port, token, via_query, name)


async def test_handshake_is_401_when_token_is_missing_or_not_bearer(world_with):
    """No token at all, an empty one, or another scheme: 401, no upgrade."""
    world = await world_with()
    port = world.node.ws_port
    await assert_refused(port, None, False, "missing")
    await assert_refused(port, "", True, "empty query")


@pytest.mark.parametrize("via_query", [False, True], ids=["header", "query"])
async def test_handshake_checks_issuer_and_audience_when_configured(
    world_with, via_query
):
    """With iss and aud configured: wrong or missing ones are refused."""
    world = await world_with(jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    uid = await world.user()
    port = world.node.ws_port
    valid = world.token(uid)
    assert claims_of(valid)["iss"] == ISSUER and claims_of(valid)["aud"] == AUDIENCE
    status, _, _ = await handshake(port, valid, via_query=via_query)
    assert status == 101
    secret = world.settings.jwt_secret
    claims = claims_of(valid)
    variants = {
        "wrong iss": {**claims, "iss": "someone-else"},
        "wrong aud": {**claims, "aud": "another-service"},
        "no iss": {k: v for k, v in claims.items() if k != "iss"},
        "no aud": {k: v for k, v in claims.items() if k != "aud"},
    }
    for name, forged in variants.items():
        await assert_refused(
            port, jwt.encode(forged, secret, algorithm="HS256"), via_query, name
        )
