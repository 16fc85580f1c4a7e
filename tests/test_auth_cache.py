"""The cache of verified tokens in `TokenVerifier`: it saves repeating PyJWT for a
token already accepted, and never answers for a token PyJWT would now refuse."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from wsserver import auth
from wsserver.auth import TokenVerifier
from wsserver.config import Settings
from wsserver.errors import Unauthorized

SECRET = "cache-test-" + "k" * 40


def token(secret: str = SECRET, **claims: object) -> str:
    now = int(time.time())
    body = {"sub": "42", "role": "buyer", "iat": now, "exp": now + 600, **claims}
    return jwt.encode(body, secret, algorithm="HS256")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def counting(verifier: TokenVerifier) -> list[str]:
    """Records every token that goes through the full (PyJWT) verification."""
    calls: list[str] = []
    full = verifier._verify

    def wrapped(t: str) -> Any:
        calls.append(t)
        return full(t)

    verifier._verify = wrapped  # type: ignore[method-assign]
    return calls


def test_a_repeated_token_is_answered_without_verifying_again():
    verifier = TokenVerifier(Settings(jwt_secret=SECRET))
    calls = counting(verifier)
    t = token()
    first = verifier.verify(t)
    assert verifier.verify(t) is first
    assert calls == [t]


def test_the_cache_never_answers_past_exp_plus_leeway():
    settings = Settings(jwt_secret=SECRET)
    now = int(time.time())
    clock = Clock(now)
    verifier = TokenVerifier(settings, clock=clock)
    t = token(exp=now + 60)
    verifier.verify(t)
    assert verifier._cache[t][1] == now + 60 + settings.jwt_leeway_s
    calls = counting(verifier)
    clock.now = now + 59
    verifier.verify(t)
    assert calls == []
    clock.now = now + 60 + settings.jwt_leeway_s  # PyJWT would refuse from here on
    verifier.verify(t)  # (its own clock is the real one, where the token is still valid)
    assert calls == [t]


def test_a_long_lived_token_is_verified_again_after_the_max_age():
    now = int(time.time())
    clock = Clock(now)
    verifier = TokenVerifier(Settings(jwt_secret=SECRET), clock=clock)
    t = token(exp=now + 86_400)
    verifier.verify(t)
    assert verifier._cache[t][1] == now + auth.TOKEN_CACHE_MAX_AGE_S
    calls = counting(verifier)
    clock.now = now + auth.TOKEN_CACHE_MAX_AGE_S
    verifier.verify(t)
    assert calls == [t]


def test_an_expired_token_is_refused_and_not_remembered():
    now = int(time.time())
    verifier = TokenVerifier(Settings(jwt_secret=SECRET))
    expired = token(iat=now - 3600, exp=now - 600)
    for _ in range(2):
        with pytest.raises(Unauthorized, match="expired"):
            verifier.verify(expired)
    assert verifier._cache == {}


def test_the_cache_is_keyed_by_the_exact_text_and_keeps_no_refusal():
    verifier = TokenVerifier(Settings(jwt_secret=SECRET))
    good = token()
    verifier.verify(good)
    head, body, sig = good.split(".")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    forged_body = jwt.encode({"sub": "7", "role": "manager"}, "x" * 40).split(".")[1]
    variants = [
        f"{head}.{body}.{flipped}",  # tampered signature
        f"{head}.{forged_body}.{sig}",  # another body under the good signature
        f"{head}.{body}.",  # signature cut
        token(secret="another-" + "s" * 40),  # signed with another key
        good + " ",
    ]
    for bad in variants:
        for _ in range(2):  # asked twice: still refused, never cached
            with pytest.raises(Unauthorized):
                verifier.verify(bad)
    assert list(verifier._cache) == [good]


def test_the_cache_is_bounded_oldest_out_first(monkeypatch):
    monkeypatch.setattr(auth, "TOKEN_CACHE_SIZE", 3)
    verifier = TokenVerifier(Settings(jwt_secret=SECRET))
    tokens = [token(sub=str(i)) for i in range(1, 6)]
    for t in tokens:
        verifier.verify(t)
    assert list(verifier._cache) == tokens[-3:]
    assert [verifier.verify(t).user_id for t in tokens] == [1, 2, 3, 4, 5]
    assert len(verifier._cache) == 3
