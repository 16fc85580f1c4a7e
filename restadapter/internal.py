"""The internal API of PROTOCOL.md section 7 (service tokens): user and order
projections and ChatService, each change emitting its event."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wsserver.chats import ChatService
from wsserver.errors import BadRequest
from wsserver.protocol.messages import MAX_ID, Id, MessageKey, encode
from wsserver.store import send_ack

from .auth import authenticate
from .params import Query, body, path_id
from .responses import endpoint, ok

Name = Annotated[str, Meta(max_length=255)]
Group = Annotated[str, Meta(min_length=1, max_length=64)]
OptId = Annotated[int, Meta(ge=1, le=MAX_ID)] | None
UserRole = Literal["buyer", "client", "manager", "service"]
ChatRole = Literal["owner", "admin", "member", "buyer", "client", "manager", "service"]
MAX_METADATA_BYTES = 4096


class UserIn(Struct):
    name: Name = ""
    role: UserRole = "buyer"
    locale: Literal["ru", "en", "zh"] = "ru"
    is_demo: bool = False


class OrderIn(Struct):
    buyer_id: OptId = None
    manager_id: OptId = None
    fulfillment_id: OptId = None


class ChatUser(Struct):
    user_id: Id
    role: ChatRole = "member"


class ChatIn(Struct):
    group: Group = "order"
    type: Literal["private", "group"] = "group"
    name: Name = ""
    users: Annotated[list[ChatUser], Meta(max_length=1000)] = []
    order_id: OptId = None
    verification_id: OptId = None
    metadata: dict[str, Any] | None = None


class ChatPatch(Struct):
    name: Name | None = None
    metadata: dict[str, Any] | None = None
    group: Group | None = None


class MessageIn(Struct):
    message_key: MessageKey
    text: Annotated[str, Meta(max_length=32768)] | None = None
    type: Literal["system", "text", "audio", "image", "file"] = "system"
    user_id: OptId = None
    metadata: dict[str, Any] | None = None
    attachments: Annotated[list[Id], Meta(max_length=10)] = []
    reply_to_id: OptId = None


def _service(request: Request) -> ChatService:
    return request.app.state.chats  # type: ignore[no-any-return]


async def _auth(request: Request) -> None:
    await authenticate(request, ("service",))


def _check_metadata(metadata: dict[str, Any] | None) -> None:
    if metadata is not None and len(encode(metadata)) > MAX_METADATA_BYTES:
        raise BadRequest(f"`metadata` is larger than {MAX_METADATA_BYTES} bytes")


@endpoint
async def put_user(request: Request) -> Response:
    await _auth(request)
    uid = path_id(request, "id")
    b = await body(request, UserIn)
    return ok(await _service(request).upsert_user(
        uid, name=b.name, role=b.role, locale=b.locale, is_demo=b.is_demo
    ))


@endpoint
async def put_order(request: Request) -> Response:
    await _auth(request)
    oid = path_id(request, "id")
    b = await body(request, OrderIn)
    return ok(await _service(request).upsert_order(
        oid, buyer_id=b.buyer_id, manager_id=b.manager_id, fulfillment_id=b.fulfillment_id
    ))


@endpoint
async def create_chat(request: Request) -> Response:
    await _auth(request)
    b = await body(request, ChatIn)
    _check_metadata(b.metadata)
    chat = await _service(request).create(
        group=b.group, type=b.type, name=b.name, users=[(u.user_id, u.role) for u in b.users],
        order_id=b.order_id, verification_id=b.verification_id, metadata=b.metadata,
    )
    return ok(chat, status=201)


@endpoint
async def get_chat(request: Request) -> Response:
    await _auth(request)
    return ok(await _service(request).get(path_id(request, "id")))


@endpoint
async def patch_chat(request: Request) -> Response:
    await _auth(request)
    chat_id = path_id(request, "id")
    b = await body(request, ChatPatch)
    _check_metadata(b.metadata)
    return ok(await _service(request).update(
        chat_id, name=b.name, metadata=b.metadata, group=b.group
    ))


@endpoint
async def delete_chat(request: Request) -> Response:
    await _auth(request)
    return ok(await _service(request).delete(path_id(request, "id")))


@endpoint
async def archive_chat(request: Request) -> Response:
    await _auth(request)
    return ok(await _service(request).set_archived(path_id(request, "id"), True))


@endpoint
async def unarchive_chat(request: Request) -> Response:
    await _auth(request)
    return ok(await _service(request).set_archived(path_id(request, "id"), False))


@endpoint
async def list_participants(request: Request) -> Response:
    await _auth(request)
    return ok(await _service(request).participants(path_id(request, "id")))


@endpoint
async def add_participant(request: Request) -> Response:
    await _auth(request)
    chat_id = path_id(request, "id")
    b = await body(request, ChatUser)
    return ok(await _service(request).add_participant(chat_id, b.user_id, b.role))


@endpoint
async def remove_participant(request: Request) -> Response:
    await _auth(request)
    chat_id = path_id(request, "id")
    user_id = path_id(request, "user_id")
    return ok(await _service(request).remove_participant(chat_id, user_id))


@endpoint
async def post_message(request: Request) -> Response:
    await _auth(request)
    chat_id = path_id(request, "id")
    b = await body(request, MessageIn)
    _check_metadata(b.metadata)
    if b.type == "system" and b.user_id is not None:
        raise BadRequest("a `system` message has no `user_id`")
    if b.type != "system" and b.user_id is None:
        raise BadRequest("`user_id` is required for a message on a user's behalf")
    if b.text is not None and len(b.text.encode()) > 32768:
        raise BadRequest("`text` is larger than 32768 bytes")
    if not b.text and not b.attachments:
        raise BadRequest("`text` or `attachments` is required")
    msg, duplicate = await _service(request).post_message(
        chat_id, message_key=b.message_key, text=b.text, type=b.type, user_id=b.user_id,
        metadata=b.metadata, attachments=list(b.attachments), reply_to_id=b.reply_to_id,
    )
    return ok(send_ack(msg, duplicate), status=200 if duplicate else 201)


@endpoint
async def list_messages(request: Request) -> Response:
    await _auth(request)
    chat_id = path_id(request, "id")
    q = Query(request)
    limit = q.integer("limit", default=50, hi=100)
    before = q.integer("before_seq", lo=0)
    after = q.integer("after_seq", lo=0)
    if before is not None and after is not None:
        raise BadRequest("give `before_seq` or `after_seq`, not both")
    assert limit is not None
    msgs, more = await _service(request).messages(
        chat_id, limit=limit, before_seq=before, after_seq=after
    )
    return ok({"messages": msgs, "has_more": more})


@endpoint
async def message_statuses(request: Request) -> Response:
    await _auth(request)
    return ok(await _service(request).statuses(path_id(request, "id")))


PREFIX = "/internal/v1"
routes = [
    Route(f"{PREFIX}/users/{{id}}", put_user, methods=["PUT"]),
    Route(f"{PREFIX}/orders/{{id}}", put_order, methods=["PUT"]),
    Route(f"{PREFIX}/chats", create_chat, methods=["POST"]),
    Route(f"{PREFIX}/chats/{{id}}", get_chat, methods=["GET"]),
    Route(f"{PREFIX}/chats/{{id}}", patch_chat, methods=["PATCH"]),
    Route(f"{PREFIX}/chats/{{id}}", delete_chat, methods=["DELETE"]),
    Route(f"{PREFIX}/chats/{{id}}/archive", archive_chat, methods=["POST"]),
    Route(f"{PREFIX}/chats/{{id}}/unarchive", unarchive_chat, methods=["POST"]),
    Route(f"{PREFIX}/chats/{{id}}/participants", list_participants, methods=["GET"]),
    Route(f"{PREFIX}/chats/{{id}}/participants", add_participant, methods=["POST"]),
    Route(f"{PREFIX}/chats/{{id}}/participants/{{user_id}}", remove_participant, methods=["DELETE"]),
    Route(f"{PREFIX}/chats/{{id}}/messages", post_message, methods=["POST"]),
    Route(f"{PREFIX}/chats/{{id}}/messages", list_messages, methods=["GET"]),
    Route(f"{PREFIX}/messages/{{id}}/statuses", message_statuses, methods=["GET"]),
]
