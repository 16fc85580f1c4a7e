"""The legacy endpoints of PROTOCOL.md section 6 (chat lists, search, one chat,
a manager's orders), over `wsserver.chatlist`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wsserver.chatlist import ChatList, Page, Viewer
from wsserver.errors import BadRequest
from wsserver.search import MAX_QUERY_CHARS, QueryTooShort, SearchQuery, parse

from .auth import authenticate
from .params import Query
from .responses import endpoint, ok, page_meta

MAX_GROUP_CHARS = 64


def _chatlist(request: Request) -> ChatList:
    return request.app.state.chatlist  # type: ignore[no-any-return]


def _search_query(q: Query) -> SearchQuery:
    text = q.text("query", required=True, max_chars=MAX_QUERY_CHARS)
    assert text is not None
    try:
        return parse(text)
    except QueryTooShort as exc:
        raise BadRequest(str(exc)) from None


def _list_endpoint(role: str, *, allow_demo: bool) -> Route:
    @endpoint
    async def handler(request: Request) -> Response:
        who = await authenticate(request, (role,), allow_demo=allow_demo)
        q = Query(request)
        group = q.text("group", max_chars=MAX_GROUP_CHARS) or None
        archived = q.flag("is_archive")
        page, per_page = q.page()
        items, more = await _chatlist(request).list_chats(
            Viewer(who.user_id, who.role, refuse_demo=not allow_demo), archived=archived, group=group,
            page=Page(page, per_page),
        )
        return ok(items, meta=page_meta(page, per_page, more))

    return Route(f"/api/v1/{role}/chat", handler, methods=["GET"], name=f"{role}_chats")


def _search_endpoint(role: str) -> Route:
    @endpoint
    async def handler(request: Request) -> Response:
        who = await authenticate(request, (role,))
        q = Query(request)
        sq = _search_query(q)
        page, per_page = q.page()
        items, more = await _chatlist(request).search(
            Viewer(who.user_id, who.role), sq, Page(page, per_page)
        )
        return ok(items, meta=page_meta(page, per_page, more))

    return Route(f"/api/v1/{role}/chat/search", handler, methods=["GET"], name=f"{role}_search")


@endpoint
async def buyer_get_chat(request: Request) -> Response:
    who = await authenticate(request, ("buyer",), allow_demo=False)
    chat_id = Query(request).integer("chat_id", required=True)
    assert chat_id is not None
    chat = await _chatlist(request).chat_detail(
        Viewer(who.user_id, who.role, refuse_demo=True), chat_id
    )
    return ok(chat)


@endpoint
async def manager_search(request: Request) -> Response:
    who = await authenticate(request, ("manager",))
    q = Query(request)
    sq = _search_query(q)
    page, per_page = q.page()
    orders, more = await _chatlist(request).manager_search(
        Viewer(who.user_id, who.role), sq, Page(page, per_page)
    )
    return ok(orders, meta=page_meta(page, per_page, more))


@endpoint
async def manager_get_chat(request: Request) -> Response:
    who = await authenticate(request, ("manager",))
    order_id = Query(request).integer("order_id", required=True)
    assert order_id is not None
    order = await _chatlist(request).manager_order(Viewer(who.user_id, who.role), order_id)
    return ok(order)


routes = [
    _list_endpoint("buyer", allow_demo=False),
    _search_endpoint("buyer"),
    Route("/api/v1/buyer/chat/get-chat", buyer_get_chat, methods=["GET"]),
    _list_endpoint("client", allow_demo=True),
    _search_endpoint("client"),
    _list_endpoint("manager", allow_demo=True),
    Route("/api/v1/manager/chat/search", manager_search, methods=["GET"]),
    Route("/api/v1/manager/chat/getChat", manager_get_chat, methods=["GET"]),
]

# The reads that skip Starlette's middleware and router (`app._App`): GET only.
direct = {
    "/api/v1/buyer/chat/get-chat": buyer_get_chat,
    **{
        r.path: r.endpoint
        for r in routes
        if r.path in ("/api/v1/buyer/chat", "/api/v1/client/chat", "/api/v1/manager/chat")
    },
}
