"""Frame decoding and request validation: pure functions, no I/O.

`decode_request` turns one text frame into (type, id, payload) or raises a
BesedaError naming the field at fault. Text is Unicode scalar values: U+0000 and
lone surrogates are refused by field; sizes are checked in UTF-8 bytes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import msgspec

from ..errors import BadRequest, TooLarge
from . import messages as m

_envelope_decoder = msgspec.json.Decoder(m.Envelope)
_decoders = {name: msgspec.json.Decoder(cls) for name, cls in m.REQUEST_TYPES.items()}
# msgspec raises RecursionError past its nesting depth; that is the client's fault.
_TOO_DEEP = "json nested too deeply"
# Errors echo the id of a frame that failed to decode, even one over the 64-character
# limit (up to 256), so the client can still match the error to its request.
_ID_FIELD = re.compile(r'"id"\s*:\s*"((?:[^"\\]|\\.){0,256})"')


@dataclass(frozen=True, slots=True)
class Limits:
    max_text_bytes: int = 32 * 1024
    max_metadata_bytes: int = 4 * 1024


def _path(msg: str, root: str = "data") -> str:
    """msgspec says `... - at `$.chats[0].rev``; we name it `data.chats[0].rev`."""
    if root:
        return msg.replace("`$", f"`{root}")
    return msg.replace("`$.", "`").replace("`$`", "`envelope`")


def _bad_text(value: str) -> bool:
    if "\x00" in value:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _find_bad_string(value: Any, path: str) -> str | None:
    """The path of the first string holding U+0000 or a lone surrogate, if any.

    Walks with an explicit stack: a frame may nest as deep as the decoder allows."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if _bad_text(item):
                return where
        elif isinstance(item, dict):
            for k, v in reversed(list(item.items())):
                stack.append((v, f"{where}.{k}"))
            for k in item:
                if isinstance(k, str) and _bad_text(k):
                    return f"{where} (a key)"
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(item))))
    return None


def _invalid_string_error(frame: str | bytes) -> BadRequest | None:
    """Names the field with U+0000 or a lone surrogate (slow path, errors only)."""
    try:
        loose = json.loads(frame)
        if not isinstance(loose, dict):
            return None
        found = _find_bad_string(loose, "")
    except ValueError:
        return None
    except RecursionError:
        return BadRequest(_TOO_DEEP)
    if found is None:
        return None
    field = found.lstrip(".")
    return BadRequest(f"invalid character (U+0000 or lone surrogate) in `{field}`")


def peek_id(frame: str | bytes) -> str | None:
    """The request id of a frame that failed to decode, when one can be read."""
    text = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
    found = _ID_FIELD.search(text[:4096])
    if not found:
        return None
    try:
        value = json.loads(f'"{found.group(1)}"')
        value.encode("utf-8")  # a lone surrogate cannot be echoed back
    except (ValueError, UnicodeEncodeError):
        return None
    return value if isinstance(value, str) else None


def decode_request(
    frame: str | bytes, limits: Limits
) -> tuple[str, str | None, msgspec.Struct]:
    try:
        env = _envelope_decoder.decode(frame)
    except RecursionError:
        raise BadRequest(_TOO_DEEP) from None
    except msgspec.ValidationError as exc:
        raise BadRequest(_path(str(exc), root="")) from None
    except msgspec.DecodeError:
        bad = _invalid_string_error(frame)
        raise (bad or BadRequest("malformed json")) from None

    decoder = _decoders.get(env.type)
    if decoder is None:
        raise BadRequest(f"unknown type `{env.type[:64]}`")
    try:
        payload = decoder.decode(env.data)
    except RecursionError:
        raise BadRequest(_TOO_DEEP) from None
    except msgspec.ValidationError as exc:
        raise BadRequest(_path(str(exc))) from None
    except msgspec.DecodeError:
        bad = _invalid_string_error(frame)
        raise (bad or BadRequest("malformed json")) from None

    needle: Any = "\\u0000" if isinstance(frame, str) else b"\\u0000"
    if needle in frame:
        bad = _invalid_string_error(frame)
        if bad is not None:
            raise bad
    check_payload(env.type, payload, limits)
    return env.type, env.id, payload


def text_too_large(text: str, limit: int) -> bool:
    if len(text) * 4 <= limit:
        return False
    return len(text.encode("utf-8")) > limit


def check_text(text: str | None, field: str, limits: Limits, required: bool) -> None:
    if text is None or not text.strip():
        if required:
            raise BadRequest(f"`data.{field}` is required")
        return
    if text_too_large(text, limits.max_text_bytes):
        raise TooLarge(f"`data.{field}` is over {limits.max_text_bytes} bytes")


def check_payload(kind: str, payload: msgspec.Struct, limits: Limits) -> None:
    if isinstance(payload, m.MessageSend):
        needs_text = payload.type == "text"
        check_text(payload.text, "text", limits, required=needs_text)
        if not needs_text and not payload.attachments:
            raise BadRequest("`data.attachments` is required for this type")
        if payload.metadata is not None:
            size = len(m.encode(payload.metadata))
            if size > limits.max_metadata_bytes:
                raise TooLarge(f"`data.metadata` is over {limits.max_metadata_bytes} bytes")
    elif isinstance(payload, m.MessageEdit):
        check_text(payload.text, "text", limits, required=True)
    elif isinstance(payload, m.MessagesHistory):
        if payload.before_seq is not None and payload.after_seq is not None:
            raise BadRequest("give `data.before_seq` or `data.after_seq`, not both")

