"""Query strings and JSON bodies, parsed strictly.

Query strings decode as HTML forms do (`+` is a space); a malformed escape, a value
that is not UTF-8, U+0000, a repeated or overlong parameter is a 400 naming it.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes

import msgspec
from starlette.requests import Request

from wsserver.errors import BadRequest, TooLarge

MAX_QUERY_STRING_BYTES = 4096
MAX_PARAM_CHARS = 200
MAX_ID = 2**63 - 1
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 200
MAX_PAGE = 100_000
_HEX = re.compile(rb"%(?![0-9A-Fa-f]{2})")
T = TypeVar("T")


def _unquote(raw: bytes, what: str) -> str:
    if _HEX.search(raw):
        raise BadRequest(f"malformed percent-escape in `{what}`")
    try:
        text = unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"`{what}` is not valid UTF-8") from None
    if "\x00" in text:
        raise BadRequest(f"`{what}` contains U+0000")
    return text


class Query:
    """The parsed query string of one request."""

    def __init__(self, request: Request) -> None:
        raw: bytes = request.scope.get("query_string", b"")
        if len(raw) > MAX_QUERY_STRING_BYTES:
            raise BadRequest(f"query string is longer than {MAX_QUERY_STRING_BYTES} bytes")
        self.values: dict[str, str] = {}
        for part in raw.split(b"&"):
            if not part:
                continue
            key_raw, _, value_raw = part.partition(b"=")
            key = _unquote(key_raw, "parameter name")
            value = _unquote(value_raw, key if key.isprintable() and len(key) < 40 else "value")
            if key in self.values:
                raise BadRequest(f"`{key}` is given more than once")
            self.values[key] = value

    def text(self, name: str, *, required: bool = False, max_chars: int = MAX_PARAM_CHARS) -> str | None:
        value = self.values.get(name)
        if value is None:
            if required:
                raise BadRequest(f"`{name}` is required")
            return None
        if len(value) > max_chars:
            raise BadRequest(f"`{name}` is longer than {max_chars} characters")
        return value

    def integer(
        self, name: str, *, required: bool = False, default: int | None = None,
        lo: int = 1, hi: int = MAX_ID,
    ) -> int | None:
        value = self.values.get(name)
        if value is None or value == "":
            if required:
                raise BadRequest(f"`{name}` is required")
            return default
        if not (value.isascii() and value.isdigit()) or len(value) > 19:
            raise BadRequest(f"`{name}` must be an integer from {lo} to {hi}")
        n = int(value)
        if not lo <= n <= hi:
            raise BadRequest(f"`{name}` must be an integer from {lo} to {hi}")
        return n

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.values.get(name)
        if value is None or value == "":
            return default
        if value not in ("0", "1"):
            raise BadRequest(f"`{name}` must be 0 or 1")
        return value == "1"

    def page(self) -> tuple[int, int]:
        page = self.integer("page", default=1, hi=MAX_PAGE)
        per_page = self.integer("per_page", default=DEFAULT_PER_PAGE, hi=MAX_PER_PAGE)
        assert page is not None and per_page is not None
        return page, per_page


def path_id(request: Request, name: str) -> int:
    raw = request.path_params[name]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or not 1 <= int(raw) <= MAX_ID:
        raise BadRequest(f"`{name}` must be a positive integer id")
    return int(raw)


_decoders: dict[type, msgspec.json.Decoder[Any]] = {}


async def body(request: Request, kind: type[T], *, max_bytes: int = 64 * 1024) -> T:
    """The JSON body as `kind` (a msgspec Struct): strict types, unknown fields
    ignored, errors naming the field."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise BadRequest("content type must be application/json")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"body is larger than {max_bytes} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    dec = _decoders.get(kind)
    if dec is None:
        dec = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        value = dec.decode(raw)
    except msgspec.ValidationError as exc:
        raise BadRequest(_field_message(str(exc))) from None
    except msgspec.DecodeError:
        raise BadRequest("body is not valid JSON") from None
    except RecursionError:
        raise BadRequest("body json nested too deeply") from None
    check_text(value)
    return value


def _field_message(msg: str) -> str:
    # msgspec: "Expected `int`, got `str` - at `$.chat_id`"
    return msg[:1].lower() + msg[1:] if msg else "invalid body"


def check_text(value: Any, path: str = "$") -> None:
    """No U+0000 and no lone surrogate anywhere in a request's strings."""
    if isinstance(value, str):
        if "\x00" in value:
            raise BadRequest(f"U+0000 at `{path}`")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(f"lone surrogate at `{path}`") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            check_text(k, path)
            check_text(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_text(v, f"{path}[{i}]")
    elif isinstance(value, msgspec.Struct):
        for f in value.__struct_fields__:
            check_text(getattr(value, f), f"{path}.{f}")
