"""The HTTP app on the HTTP port: health, readiness and metrics; the legacy and
internal APIs mount here. Thin: it reuses the node's store, writer and bus."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from wsserver import store as store_module
from wsserver.attachments import LinkSigner
from wsserver.chatlist import ChatList
from wsserver.chats import ChatService
from wsserver.storage import LocalStorage

from . import attachments, internal, legacy, openapi, translate
from .responses import Handler, on_http_error

if TYPE_CHECKING:
    from wsserver.app import Node


class _App(Starlette):
    """Starlette, with a shortcut for the hottest reads: a GET to one of `direct`'s
    exact paths goes straight to its handler. Each is wrapped by
    `responses.endpoint`, which turns every failure into its JSON error, so the
    error middleware and the router that it skips would add nothing but time.
    Any other request (another method, a trailing slash) takes the usual way."""

    direct: dict[str, Handler] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            handler = self.direct.get(scope["path"])
            if handler is not None:
                scope["app"] = self
                response = await handler(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def build_app(node: "Node") -> Starlette:
    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> Response:
        checks: dict[str, Any] = await node.readiness()
        ready = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    async def metrics(_request: Request) -> Response:
        node.refresh_gauges()
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    spec = openapi.render().encode()

    async def openapi_json(_request: Request) -> Response:
        return Response(spec, media_type="application/json")

    routes = [
        Route("/openapi.json", openapi_json),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        *legacy.routes,
        *internal.routes,
        *attachments.routes,
        *translate.routes,
    ]
    app = _App(routes=routes, exception_handlers={HTTPException: on_http_error})
    app.direct = legacy.direct
    app.state.node = node
    app.state.chatlist = ChatList(node.store)
    app.state.chats = ChatService(node)
    app.state.storage = LocalStorage(node.settings.data_dir / "uploads")
    app.state.signer = LinkSigner(node.settings)
    store_module.attachment_url = app.state.signer.url
    return app
