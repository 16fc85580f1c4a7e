"""msgspec structs for every envelope, request payload and event of the wire contract.

Requests arrive as `Envelope` (type, id, raw data); the type picks the payload struct.
Unknown fields in `data` are ignored; types are strict (`true` is not a number).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

MAX_ID = 2**63 - 1
Id = Annotated[int, Meta(ge=1, le=MAX_ID)]
Seq = Annotated[int, Meta(ge=0, le=MAX_ID)]
RequestId = Annotated[str, Meta(max_length=64)]
MessageKey = Annotated[str, Meta(min_length=1, max_length=64)]
SendType = Literal["text", "audio", "image", "file"]


class Envelope(Struct):
    type: str
    id: RequestId | None = None
    data: msgspec.Raw = msgspec.Raw(b"{}")


class MessageSend(Struct):
    chat_id: Id
    message_key: MessageKey
    type: SendType = "text"
    text: str | None = None
    attachments: Annotated[list[Id], Meta(max_length=10)] = []
    reply_to_id: Id | None = None
    metadata: dict[str, Any] | None = None


class MessageEdit(Struct):
    message_id: Id
    text: str


class MessageDelete(Struct):
    message_id: Id


class MessageRead(Struct):
    chat_id: Id
    message_id: Id


class ChatRef(Struct):
    chat_id: Id


class MessagesHistory(Struct):
    chat_id: Id
    before_seq: Seq | None = None
    after_seq: Seq | None = None
    limit: Annotated[int, Meta(ge=1, le=100)] = 50


class SyncChat(Struct):
    chat_id: Id
    rev: Seq


class ChatsSync(Struct):
    chats: Annotated[list[SyncChat], Meta(max_length=200)]


class AuthRefresh(Struct):
    token: Annotated[str, Meta(min_length=1, max_length=8192)]


REQUEST_TYPES: dict[str, type[Struct]] = {
    "message.send": MessageSend,
    "message.edit": MessageEdit,
    "message.delete": MessageDelete,
    "message.read": MessageRead,
    "typing.start": ChatRef,
    "typing.stop": ChatRef,
    "chat.subscribe": ChatRef,
    "chat.unsubscribe": ChatRef,
    "messages.history": MessagesHistory,
    "chats.sync": ChatsSync,
    "auth.refresh": AuthRefresh,
}


# Outgoing shapes ---------------------------------------------------------------


class Content(Struct, omit_defaults=False):
    ru: str | None = None
    en: str | None = None
    zh: str | None = None


class MessageOut(Struct, omit_defaults=False):
    id: int
    chat_id: int
    seq: int
    rev: int
    user_id: int | None
    type: str
    content: Content
    lang: str | None
    metadata: Any  # a dict, or msgspec.Raw of the JSON object as the sender gave it
    attachments: list[dict[str, Any]]
    reply_to_id: int | None
    message_key: str
    created_at: str
    edited_at: str | None
    deleted_at: str | None


class SendAck(MessageOut, omit_defaults=False):
    duplicate: bool = False


class DeleteOut(Struct):
    id: int
    chat_id: int
    rev: int
    deleted_at: str


class StatusOut(Struct):
    chat_id: int
    user_id: int
    status: str
    message_id: int | None


class TypingOut(Struct):
    chat_id: int
    user_id: int
    typing: bool


class ReadAck(Struct):
    chat_id: int
    last_read_message_id: int | None
    unread: int


class HistoryAck(Struct):
    messages: list[MessageOut]
    has_more: bool


class Change(Struct):
    type: str
    data: Any


class SyncChatOut(Struct):
    chat_id: int
    rev: int
    changes: list[Change]
    has_more: bool
    reset: bool


class SyncAck(Struct):
    chats: list[SyncChatOut]


class SubscribeAck(Struct):
    typing: list[int]
    online: list[int]


class ErrorBody(Struct, omit_defaults=True):
    code: str
    message: str
    retry_after_ms: int | None = None


_encoder = msgspec.json.Encoder()
encode = _encoder.encode


def event_frame(event_type: str, data: Any) -> bytes:
    """A server-pushed event: {"type": ..., "data": ...} (no id)."""
    return b'{"type":"%s","data":%s}' % (event_type.encode(), _encoder.encode(data))


def ack_frame(request_id: str | None, data: Any) -> bytes:
    if request_id is None:
        return b'{"type":"ack","data":%s}' % _encoder.encode(data)
    return b'{"type":"ack","id":%s,"data":%s}' % (
        _encoder.encode(request_id),
        _encoder.encode(data),
    )


def error_frame(request_id: str | None, body: dict[str, Any]) -> bytes:
    if request_id is None:
        return b'{"type":"error","error":%s}' % _encoder.encode(body)
    return b'{"type":"error","id":%s,"error":%s}' % (
        _encoder.encode(request_id),
        _encoder.encode(body),
    )


def message_frames(
    msg: MessageOut, request_id: str | None, duplicate: bool
) -> tuple[bytes, bytes]:
    """The sender's ack and everyone else's chat.message.new, the message encoded once."""
    body = _encoder.encode(msg)
    tail = b',"duplicate":true}}' if duplicate else b',"duplicate":false}}'
    if request_id is None:
        ack = b'{"type":"ack","data":' + body[:-1] + tail
    else:
        ack = b'{"type":"ack","id":' + _encoder.encode(request_id) + b',"data":' + body[:-1] + tail
    return ack, b'{"type":"chat.message.new","data":' + body + b"}"
