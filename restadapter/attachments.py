"""`POST /internal/v1/attachments` (multipart, streamed to storage) and the signed
download route. The file is never held in memory: parts are parsed as they arrive
(python-multipart) and written straight into a staging file."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route

from wsserver import attachments as att
from wsserver.chatlist import ChatList, Viewer
from wsserver.errors import BadRequest, Forbidden, NotFound, TooLarge
from wsserver.storage import Storage
from wsserver.store import iso

from .auth import authenticate
from .params import MAX_ID, Query, path_id
from .responses import endpoint, ok

log = logging.getLogger(__name__)

MULTIPART_OVERHEAD_BYTES = 64 * 1024
MAX_FIELD_BYTES = 1024
FILE_FIELD = "file"


class _Upload:
    """Callbacks for python-multipart: one file part streamed to `path`, small text
    fields kept, everything else refused."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.size = 0
        self.head = bytearray()
        self.file: IO[bytes] | None = None
        self.got_file = False
        self._headers: dict[str, bytes] = {}
        self._field = b""
        self._value = b""
        self._part_name: str | None = None
        self._is_file = False
        self._buf = bytearray()

    # header parsing
    def on_part_begin(self) -> None:
        self._headers = {}
        self._buf = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = self._value
        self._field = b""
        self._value = b""

    def on_headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get("content-disposition", b""))
        if disposition != b"form-data" or b"name" not in params:
            raise BadRequest("each part needs a form-data content-disposition with a name")
        self._part_name = params[b"name"].decode("utf-8", "replace")
        self._is_file = b"filename" in params
        if self._is_file:
            if self._part_name != FILE_FIELD or self.got_file:
                raise BadRequest("send exactly one file, in the `file` field")
            self.got_file = True
            try:
                self.filename = params[b"filename"].decode("utf-8")
            except UnicodeDecodeError:
                self.filename = None
            self.file = open(self.path, "wb")  # noqa: SIM115 - closed in finish()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._is_file:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise TooLarge(f"file is larger than {self.max_bytes} bytes")
            if len(self.head) < att.SNIFF_BYTES:
                self.head += chunk[: att.SNIFF_BYTES - len(self.head)]
            assert self.file is not None
            self.file.write(chunk)
        else:
            self._buf += chunk
            if len(self._buf) > MAX_FIELD_BYTES:
                raise BadRequest(f"form field `{self._part_name}` is too long")

    def on_part_end(self) -> None:
        if not self._is_file and self._part_name is not None:
            try:
                self.fields[self._part_name] = self._buf.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"form field `{self._part_name}` is not UTF-8") from None

    def callbacks(self) -> dict[str, Any]:
        return {
            name: getattr(self, name)
            for name in ("on_part_begin", "on_header_field", "on_header_value", "on_header_end",
                         "on_headers_finished", "on_part_data", "on_part_end")
        }

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _field_id(fields: dict[str, str], name: str) -> int | None:
    raw = fields.get(name)
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or not 1 <= int(raw) <= MAX_ID:
        raise BadRequest(f"`{name}` must be a positive integer id")
    return int(raw)


async def _receive(request: Request, up: _Upload) -> None:
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise BadRequest("content type must be multipart/form-data with a boundary")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > up.max_bytes + MULTIPART_OVERHEAD_BYTES:
        raise TooLarge(f"file is larger than {up.max_bytes} bytes")
    parser = MultipartParser(params[b"boundary"], up.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except (BadRequest, TooLarge):
        raise
    except Exception:
        raise BadRequest("malformed multipart body") from None
    if not up.got_file:
        raise BadRequest("`file` is required")
    if up.size == 0:
        raise BadRequest("file is empty")


@endpoint
async def upload(request: Request) -> Response:
    node = request.app.state.node
    storage: Storage = request.app.state.storage
    signer: att.LinkSigner = request.app.state.signer
    who = await authenticate(request, ("buyer", "client", "manager", "service"))
    staged = storage.staging_path()
    up = _Upload(staged, node.settings.max_upload_bytes)
    try:
        try:
            await _receive(request, up)
        finally:
            up.close()
        uploader = who.user_id
        if who.role == "service":
            uploader = _field_id(up.fields, "user_id")  # type: ignore[assignment]
            if uploader is None:
                raise BadRequest("`user_id` is required with a service token")
        chat_id = _field_id(up.fields, "chat_id")
        if chat_id is not None and who.role != "service":
            chatlist: ChatList = request.app.state.chatlist
            await chatlist.check_visible(Viewer(who.user_id, who.role), chat_id)
        mime, att_type = att.sniff(bytes(up.head))
        declared = up.fields.get("type")
        if declared not in (None, "", att_type):
            raise att.UnsupportedType(f"content is {att_type}, not {declared}")
        meta = await asyncio.to_thread(att.read_metadata, staged, mime, att_type)
        name = att.clean_name(up.filename)
        meta["name"] = name
        key = await storage.commit(staged)
    except BaseException:
        await storage.discard(staged)
        raise
    async with node.store.connection() as conn:
        row = await conn.fetchrow(
            """INSERT INTO message_attachments (uploader_id, type, mime_type, size, name,
                                                storage_key, metadata)
               VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id, created_at""",
            uploader, att_type, mime, up.size, name, key, meta,
        )
    log.debug("attachment.stored id=%s type=%s bytes=%d", row["id"], att_type, up.size)
    return ok(
        {
            "id": row["id"], "type": att_type, "mime_type": mime, "size": up.size,
            "name": name, "metadata": meta, "url": signer.url(row["id"]),
            "created_at": iso(row["created_at"]),
        },
        status=201,
    )


@endpoint
async def download(request: Request) -> Response:
    node = request.app.state.node
    storage: Storage = request.app.state.storage
    signer: att.LinkSigner = request.app.state.signer
    att_id = path_id(request, "id")
    q = Query(request)
    exp = q.integer("exp", required=True, lo=0)
    sig = q.text("sig", required=True, max_chars=64)
    assert exp is not None and sig is not None
    if not signer.valid(att_id, exp, sig):
        raise Forbidden("link is invalid or expired")
    async with node.store.connection() as conn:
        row = await conn.fetchrow(
            """SELECT a.mime_type, a.name, a.storage_key, a.status, m.deleted_at
                 FROM message_attachments a LEFT JOIN messages m ON m.id = a.message_id
                WHERE a.id = $1""",
            att_id,
        )
    if row is None or row["storage_key"] is None or row["status"] != "stored" or row["deleted_at"]:
        raise NotFound("attachment not found")
    name = row["name"] or f"attachment-{att_id}"
    headers = {
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, max-age=3600",
    }
    path = storage.local_path(row["storage_key"])
    if path is not None:
        return FileResponse(path, media_type=row["mime_type"], headers=headers)
    return StreamingResponse(storage.read(row["storage_key"]), media_type=row["mime_type"], headers=headers)


routes = [
    Route("/internal/v1/attachments", upload, methods=["POST"]),
    Route("/internal/v1/attachments/{id}/download", download, methods=["GET"]),
]
