"""Bearer tokens on REST: who is calling, with which role, demo or not."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from starlette.requests import Request

from wsserver.auth import Identity
from wsserver.errors import Forbidden, Unauthorized

if TYPE_CHECKING:
    from wsserver.app import Node


def bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("missing token")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("missing or malformed token")
    return value.strip()


async def authenticate(
    request: Request, roles: Collection[str], *, allow_demo: bool = True
) -> Identity:
    """The caller's identity; 401 for a bad token, 403 for a role, or for a token
    with `demo: true` where the endpoint refuses demo accounts (the projection's
    `is_demo` is checked by the query that follows: `Viewer.refuse_demo`)."""
    node: Node = request.app.state.node
    identity = node.verifier.verify(bearer(request))
    if identity.role not in roles:
        raise Forbidden("this role may not call this endpoint")
    if not allow_demo and identity.demo:
        raise Forbidden("demo accounts may not call this endpoint")
    return identity
