"""`POST /api/v1/chat-message`: translations of a text for a chat's participant.

Never creates a message. The answer holds `ru`, `en`, `zh` (the original under its
detected language), `null` and a `missing` entry for what no provider gave, and
`lang`. The provider is called with a timeout (BESEDA_TRANSLATE_TIMEOUT_S): a slow
or absent provider gives nulls, never an error and never a made-up translation.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wsserver.chatlist import ChatList, Viewer
from wsserver.errors import BadRequest, NotFound
from wsserver.protocol.messages import Id, MessageKey

from .auth import authenticate
from .params import body
from .responses import endpoint, ok

MAX_TEXT_BYTES = 32 * 1024


class ChatMessageIn(Struct):
    original_text: Annotated[str, Meta(min_length=1)]
    message_key: MessageKey
    chat_id: Id


@endpoint
async def chat_message(request: Request) -> Response:
    node = request.app.state.node
    who = await authenticate(request, ("buyer", "client", "manager", "service"))
    b = await body(request, ChatMessageIn)
    if len(b.original_text.encode()) > MAX_TEXT_BYTES:
        raise BadRequest(f"`original_text` is larger than {MAX_TEXT_BYTES} bytes")
    if not b.original_text.strip():
        raise BadRequest("`original_text` is blank")
    async with node.store.connection() as conn:
        if who.role == "service":
            found = await conn.fetchval(
                "SELECT 1 FROM chats WHERE id = $1 AND deleted_at IS NULL", b.chat_id
            )
            if found is None:
                raise NotFound("chat not found")
        locale = await conn.fetchval("SELECT locale FROM users WHERE id = $1", who.user_id)
    if who.role != "service":
        chatlist: ChatList = request.app.state.chatlist
        await chatlist.check_visible(Viewer(who.user_id, who.role), b.chat_id)
    result = await node.translations.for_request(
        b.chat_id, b.message_key, b.original_text, locale or node.settings.default_lang
    )
    return ok(result.wire())


routes = [Route("/api/v1/chat-message", chat_message, methods=["POST"])]
