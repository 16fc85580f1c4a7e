"""The OpenAPI 3.0 document of every HTTP endpoint, built here and kept in the repo
as docs/openapi.json (a test checks they match); served at /openapi.json.

    python -m restadapter.openapi > docs/openapi.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

from wsserver.search import MAX_QUERY_CHARS

MAX_ID = 2**63 - 1
_ERRORS = {
    "400": "bad request (a parameter, the body, or an unsupported upload type)",
    "401": "missing, invalid or expired token",
    "403": "this role (or a demo account) may not call this endpoint",
    "404": "not found, or not visible to the caller",
    "409": "conflict (e.g. the chat is archived)",
    "413": "too large",
    "415": "file type is not allowed",
    "503": "storage unavailable: retry",
}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _id(description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_ID}
    if description:
        out["description"] = description
    return out


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


STR = {"type": "string"}
TIME = {"type": "string", "format": "date-time"}
OBJ = {"type": "object", "additionalProperties": True}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "enum": [
                    "bad_request", "unauthorized", "forbidden", "not_found", "conflict",
                    "too_large", "rate_limited", "unavailable", "internal"]},
                "message": STR,
                "retry_after_ms": {"type": "integer"},
            },
        }},
    },
    "PageMeta": {
        "type": "object", "required": ["page", "per_page", "has_more"],
        "properties": {"page": {"type": "integer"}, "per_page": {"type": "integer"},
                       "has_more": {"type": "boolean"}},
    },
    "ChatItem": {
        "type": "object",
        "required": ["id", "name", "type", "group", "status", "order_id", "verification_id",
                     "last_message", "unread", "created_at", "updated_at"],
        "properties": {
            "id": _id(), "name": STR, "type": {"type": "string", "enum": ["private", "group"]},
            "group": STR, "status": {"type": "string", "enum": ["active", "archived"]},
            "order_id": _nullable(_id()), "verification_id": _nullable(_id()),
            "metadata": OBJ,
            "last_message": _nullable({"type": "string", "description":
                "latest message that is not deleted, in the caller's locale when translated, "
                "at most 200 code points cut between graphemes"}),
            "last_message_id": _nullable(_id()), "last_message_at": _nullable(TIME),
            "unread": {"type": "integer", "minimum": 0},
            "created_at": TIME, "updated_at": TIME,
        },
    },
    "Attachment": {
        "type": "object",
        "required": ["id", "type", "mime_type", "size", "name", "metadata"],
        "properties": {
            "id": _id(), "type": {"type": "string", "enum": ["audio", "image", "file"]},
            "mime_type": STR, "size": {"type": "integer"}, "name": _nullable(STR),
            "metadata": {"type": "object", "properties": {
                "name": _nullable(STR), "format": STR, "width": {"type": "integer"},
                "height": {"type": "integer"}, "duration": _nullable({"type": "number"})}},
            "url": {"type": "string", "description": "signed download link; expires"},
            "created_at": TIME,
        },
    },
    "Message": {
        "type": "object",
        "required": ["id", "chat_id", "seq", "rev", "user_id", "type", "content", "lang",
                     "metadata", "attachments", "reply_to_id", "message_key", "created_at",
                     "edited_at", "deleted_at"],
        "properties": {
            "id": _id(), "chat_id": _id(), "seq": {"type": "integer"}, "rev": {"type": "integer"},
            "user_id": _nullable(_id()),
            "type": {"type": "string", "enum": ["text", "audio", "image", "file", "system"]},
            "content": {"type": "object", "properties": {
                "ru": _nullable(STR), "en": _nullable(STR), "zh": _nullable(STR)}},
            "lang": _nullable({"type": "string", "enum": ["ru", "en", "zh"]}),
            "metadata": OBJ, "attachments": {"type": "array", "items": ref("Attachment")},
            "reply_to_id": _nullable(_id()), "message_key": STR, "created_at": TIME,
            "edited_at": _nullable(TIME), "deleted_at": _nullable(TIME),
            "duplicate": {"type": "boolean"},
        },
    },
    "Participant": {
        "type": "object", "required": ["user_id", "role"],
        "properties": {
            "user_id": _id(), "role": {"type": "string", "enum": ["owner", "admin", "member"]},
            "name": _nullable(STR), "user_role": _nullable(STR),
            "last_read_message_id": _nullable(_id()), "unread": {"type": "integer"},
            "is_muted": {"type": "boolean"}, "joined_at": TIME, "left_at": _nullable(TIME),
        },
    },
    "ChatDetail": {"allOf": [ref("ChatItem"), {
        "type": "object", "required": ["participants", "messages"],
        "properties": {
            "participants": {"type": "array", "items": ref("Participant")},
            "messages": {"type": "array", "items": ref("Message"), "maxItems": 50},
        }}]},
    "Order": {
        "type": "object", "required": ["order_id", "buyer_id", "manager_id", "fulfillment_id", "chats"],
        "properties": {
            "order_id": _nullable(_id()), "buyer_id": _nullable(_id()),
            "manager_id": _nullable(_id()),
            "fulfillment_id": {"oneOf": [_id(), {"type": "string", "enum": ["не назначен"]}]},
            "chats": {"type": "array", "items": ref("ChatItem")},
        },
    },
    "Chat": {
        "type": "object",
        "required": ["id", "type", "group", "name", "status", "order_id", "verification_id",
                     "metadata", "rev", "created_at", "updated_at", "deleted_at"],
        "properties": {
            "id": _id(), "type": STR, "group": STR, "name": STR, "status": STR,
            "order_id": _nullable(_id()), "verification_id": _nullable(_id()), "metadata": OBJ,
            "last_message_id": _nullable(_id()), "last_seq": {"type": "integer"},
            "rev": {"type": "integer"}, "created_at": TIME, "updated_at": TIME,
            "deleted_at": _nullable(TIME),
            "participants": {"type": "array", "items": ref("Participant")},
        },
    },
    "Translation": {
        "type": "object", "required": ["ru", "en", "zh", "lang", "missing"],
        "properties": {
            "ru": _nullable(STR), "en": _nullable(STR), "zh": _nullable(STR),
            "lang": {"type": "string", "enum": ["ru", "en", "zh"]},
            "missing": {"type": "array", "items": {"type": "string", "enum": ["ru", "en", "zh"]}},
        },
    },
    "UserIn": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 255},
        "role": {"type": "string", "enum": ["buyer", "client", "manager", "service"]},
        "locale": {"type": "string", "enum": ["ru", "en", "zh"]}, "is_demo": {"type": "boolean"}}},
    "OrderIn": {"type": "object", "properties": {
        "buyer_id": _nullable(_id()), "manager_id": _nullable(_id()),
        "fulfillment_id": _nullable(_id())}},
    "ChatUser": {"type": "object", "required": ["user_id"], "properties": {
        "user_id": _id(), "role": {"type": "string", "enum": [
            "owner", "admin", "member", "buyer", "client", "manager", "service"]}}},
    "ChatIn": {"type": "object", "properties": {
        "group": {"type": "string", "minLength": 1, "maxLength": 64},
        "type": {"type": "string", "enum": ["private", "group"]},
        "name": {"type": "string", "maxLength": 255},
        "users": {"type": "array", "items": ref("ChatUser"), "maxItems": 1000},
        "order_id": _nullable(_id()), "verification_id": _nullable(_id()),
        "metadata": _nullable(OBJ)}},
    "ChatPatch": {"type": "object", "properties": {
        "name": _nullable({"type": "string", "maxLength": 255}), "metadata": _nullable(OBJ),
        "group": _nullable({"type": "string", "minLength": 1, "maxLength": 64})}},
    "MessageIn": {"type": "object", "required": ["message_key"], "properties": {
        "message_key": {"type": "string", "minLength": 1, "maxLength": 64},
        "text": _nullable({"type": "string", "maxLength": 32768}),
        "type": {"type": "string", "enum": ["system", "text", "audio", "image", "file"]},
        "user_id": _nullable(_id()), "metadata": _nullable(OBJ),
        "attachments": {"type": "array", "items": _id(), "maxItems": 10},
        "reply_to_id": _nullable(_id())}},
    "ChatMessageIn": {"type": "object", "required": ["original_text", "message_key", "chat_id"],
                      "properties": {
        "original_text": {"type": "string", "minLength": 1},
        "message_key": {"type": "string", "minLength": 1, "maxLength": 64},
        "chat_id": _id()}},
}


def _data(schema: dict[str, Any], *, paged: bool = False) -> dict[str, Any]:
    props: dict[str, Any] = {"data": schema}
    required = ["data"]
    if paged:
        props["meta"] = ref("PageMeta")
        required.append("meta")
    return {"type": "object", "required": required, "properties": props}


def _op(
    summary: str, ok: dict[str, Any] | None, *, roles: str = "", params: list[Any] | None = None,
    body: str | None = None, status: str = "200", errors: tuple[str, ...] = ("400", "401", "403"),
    secured: bool = True, extra_ok: dict[str, Any] | None = None,
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        status: {"description": "success",
                 "content": {"application/json": {"schema": ok}} if ok is not None else {}}
    }
    if extra_ok:
        responses.update(extra_ok)
    for code in errors:
        responses[code] = {"description": _ERRORS[code],
                           "content": {"application/json": {"schema": ref("Error")}}}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if roles:
        op["description"] = f"Roles: {roles}."
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": ref(body)}}}
    op["security"] = [{"bearer": []}] if secured else []
    return op


def _q(name: str, schema: dict[str, Any], required: bool = False, desc: str = "") -> dict[str, Any]:
    p = {"name": name, "in": "query", "required": required, "schema": schema}
    if desc:
        p["description"] = desc
    return p


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _id()}


PAGING = [_q("page", {"type": "integer", "minimum": 1, "maximum": 100000}),
          _q("per_page", {"type": "integer", "minimum": 1, "maximum": 200})]
LIST_PARAMS = [_q("group", {"type": "string", "maxLength": 64}),
               _q("is_archive", {"type": "integer", "enum": [0, 1]}), *PAGING]
QUERY = _q("query", {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS}, True,
           "terms split on spaces, each must match; a term needs 3 characters, or is Chinese, "
           "or the whole query is an order id")
CHATS = _data({"type": "array", "items": ref("ChatItem")}, paged=True)
NF = ("400", "401", "403", "404")


def build() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/healthz": {"get": _op("liveness", OBJ, errors=(), secured=False)},
        "/readyz": {"get": _op("readiness: database and bus", OBJ, errors=("503",), secured=False)},
        "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {
            "200": {"description": "text exposition",
                    "content": {"text/plain": {"schema": STR}}}}}},
        "/openapi.json": {"get": _op("this document", OBJ, errors=(), secured=False)},
    }
    for role, demo in (("buyer", ", not demo"), ("client", ""), ("manager", "")):
        paths[f"/api/v1/{role}/chat"] = {"get": _op(
            f"{role}'s chats, newest activity first", CHATS, roles=role + demo, params=LIST_PARAMS)}
        if role != "manager":
            paths[f"/api/v1/{role}/chat/search"] = {"get": _op(
                "search chat names, participant names, order ids and message text", CHATS,
                roles=role, params=[QUERY, *PAGING])}
    paths["/api/v1/buyer/chat/get-chat"] = {"get": _op(
        "one chat with participants and its latest 50 messages", _data(ref("ChatDetail")),
        roles="buyer, not demo", params=[_q("chat_id", _id(), True)], errors=NF)}
    paths["/api/v1/manager/chat/search"] = {"get": _op(
        "orders by order id (or chats by text, grouped by order)",
        _data({"type": "array", "items": ref("Order")}, paged=True), roles="manager",
        params=[QUERY, *PAGING])}
    paths["/api/v1/manager/chat/getChat"] = {"get": _op(
        "one order's chats", _data(ref("Order")), roles="manager",
        params=[_q("order_id", _id(), True)], errors=NF)}
    paths["/api/v1/chat-message"] = {"post": _op(
        "translations of a text (never creates a message)", _data(ref("Translation")),
        roles="any participant", body="ChatMessageIn", errors=NF)}

    iv = "/internal/v1"
    svc = "service"
    chat = _data(ref("Chat"))
    paths[f"{iv}/users/{{id}}"] = {"put": {**_op("upsert a user projection", _data(OBJ),
                                                 roles=svc, body="UserIn"),
                                           "parameters": [_path("id")]}}
    paths[f"{iv}/orders/{{id}}"] = {"put": {**_op("upsert an order projection", _data(OBJ),
                                                  roles=svc, body="OrderIn"),
                                            "parameters": [_path("id")]}}
    paths[f"{iv}/chats"] = {"post": _op("create a chat (emits chat.update)", chat, roles=svc,
                                        body="ChatIn", status="201")}
    paths[f"{iv}/chats/{{id}}"] = {
        "parameters": [_path("id")],
        "get": _op("a chat with its participants", chat, roles=svc, errors=NF),
        "patch": _op("update name, metadata, group (emits chat.update)", chat, roles=svc,
                     body="ChatPatch", errors=NF),
        "delete": _op("soft delete (emits chat.archive with deleted: true)", chat, roles=svc,
                      errors=NF),
    }
    paths[f"{iv}/chats/{{id}}/archive"] = {"parameters": [_path("id")], "post": _op(
        "archive (emits chat.archive)", chat, roles=svc, errors=NF)}
    paths[f"{iv}/chats/{{id}}/unarchive"] = {"parameters": [_path("id")], "post": _op(
        "make active again (emits chat.update)", chat, roles=svc, errors=NF)}
    paths[f"{iv}/chats/{{id}}/participants"] = {
        "parameters": [_path("id")],
        "get": _op("participants, including those who left",
                   _data({"type": "array", "items": ref("Participant")}), roles=svc, errors=NF),
        "post": _op("add a participant (emits chat.user.join)", _data(OBJ), roles=svc,
                    body="ChatUser", errors=NF),
    }
    paths[f"{iv}/chats/{{id}}/participants/{{user_id}}"] = {
        "parameters": [_path("id"), _path("user_id")],
        "delete": _op("remove a participant (emits chat.user.leave)", _data(OBJ), roles=svc,
                      errors=NF)}
    paths[f"{iv}/chats/{{id}}/messages"] = {
        "parameters": [_path("id")],
        "post": _op("a system message, or one on a user's behalf (idempotent by message_key)",
                    _data(ref("Message")), roles=svc, body="MessageIn", status="201",
                    errors=("400", "401", "403", "404", "409"),
                    extra_ok={"200": {"description": "duplicate message_key: the first message",
                                      "content": {"application/json": {"schema": _data(ref("Message"))}}}}),
        "get": _op("messages by seq", _data({"type": "object", "properties": {
            "messages": {"type": "array", "items": ref("Message")},
            "has_more": {"type": "boolean"}}}), roles=svc, errors=NF, params=[
            _q("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
            _q("before_seq", {"type": "integer", "minimum": 0}),
            _q("after_seq", {"type": "integer", "minimum": 0})]),
    }
    paths[f"{iv}/messages/{{id}}/statuses"] = {"parameters": [_path("id")], "get": _op(
        "delivered/read per participant", _data({"type": "array", "items": OBJ}), roles=svc,
        errors=NF)}
    paths[f"{iv}/attachments"] = {"post": {
        **_op("upload a file (multipart, streamed; type sniffed from the bytes)",
              _data(ref("Attachment")), roles="any", status="201",
              errors=("400", "401", "403", "404", "413", "415")),
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary"},
                "chat_id": _id("optional: the chat it is for (must be yours)"),
                "user_id": _id("service tokens: the uploader"),
                "type": {"type": "string", "enum": ["audio", "image", "file"]}}}}}},
    }}
    paths[f"{iv}/attachments/{{id}}/download"] = {"get": {
        **_op("download by a signed link", None, errors=("400", "403", "404"), secured=False),
        "parameters": [_path("id"), _q("exp", {"type": "integer", "minimum": 0}, True),
                       _q("sig", {"type": "string", "maxLength": 64}, True)],
    }}
    paths[f"{iv}/attachments/{{id}}/download"]["get"]["responses"]["200"] = {
        "description": "the file", "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Beseda HTTP API", "version": "1",
                 "description": "Legacy chat endpoints (PROTOCOL.md section 6), the internal "
                                "API (section 7), attachments and translation. See docs/rest.md."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


def render() -> str:
    return json.dumps(build(), ensure_ascii=False, indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
