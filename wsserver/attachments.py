"""Attachments: what a file is (sniffed from its bytes), what it may be, what we
read from it (image size, audio duration), where it is recorded, and the signed,
expiring download links that messages carry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filetype

from .config import Settings
from .errors import BadRequest

SNIFF_BYTES = 8192
MAX_NAME_CHARS = 255
URL_BUCKET_S = 3600

# What may be uploaded, by the type sniffed from the bytes, and the message type
# it belongs to. Executables, archives and anything unrecognised that is not plain
# UTF-8 text are refused.
ALLOWED: dict[str, str] = {
    "image/jpeg": "image", "image/png": "image", "image/gif": "image", "image/webp": "image",
    "image/heic": "image", "image/avif": "image", "image/bmp": "image", "image/tiff": "image",
    "audio/mpeg": "audio", "audio/mp4": "audio", "audio/ogg": "audio", "audio/aac": "audio",
    "audio/x-wav": "audio", "audio/x-flac": "audio", "audio/amr": "audio", "audio/x-aiff": "audio",
    "video/mp4": "file", "video/quicktime": "file", "video/webm": "file", "video/3gpp": "file",
    "application/pdf": "file", "application/rtf": "file", "application/msword": "file",
    "application/vnd.ms-excel": "file", "application/vnd.ms-powerpoint": "file",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "file",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "file",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "file",
    "application/vnd.oasis.opendocument.text": "file",
    "application/vnd.oasis.opendocument.spreadsheet": "file",
    "text/plain": "file",
}


class UnsupportedType(BadRequest):
    """A file type that may not be uploaded (wire code bad_request, HTTP 415)."""

    http_status = 415


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the sniff window is still text.
        if exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")
    return all(ch in "\t\n\r\f" or unicodedata.category(ch) != "Cc" for ch in text)


def sniff(head: bytes) -> tuple[str, str]:
    """(mime type, attachment type) from the first bytes; refuses what is not allowed."""
    kind = filetype.guess(head)
    mime = kind.mime if kind is not None else ("text/plain" if _looks_like_text(head) else None)
    if mime is None:
        raise UnsupportedType("file type is not recognised")
    att_type = ALLOWED.get(mime)
    if att_type is None:
        raise UnsupportedType(f"file type {mime} is not allowed")
    return mime, att_type


def clean_name(name: str | None) -> str | None:
    """The file's base name without control characters, at most 255 characters."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    return base[:MAX_NAME_CHARS] or None


def read_metadata(path: Path, mime: str, att_type: str) -> dict[str, Any]:
    """Blocking: image width/height (Pillow), audio duration/format (mutagen).
    Runs in a worker thread."""
    meta: dict[str, Any] = {"format": mime.split("/", 1)[1]}
    if att_type == "image":
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    meta["width"], meta["height"] = img.size
                    meta["format"] = (img.format or meta["format"]).lower()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise BadRequest("image has too many pixels") from None
        except Exception:
            raise BadRequest("image could not be read") from None
    elif att_type == "audio":
        import mutagen

        try:
            audio = mutagen.File(path)
        except Exception:
            audio = None
        info = getattr(audio, "info", None)
        length = getattr(info, "length", None)
        meta["duration"] = round(float(length), 3) if length else None
        for attr in ("bitrate", "sample_rate", "channels"):
            value = getattr(info, attr, None)
            if isinstance(value, int) and value > 0:
                meta[attr] = value
    return meta


@dataclass(frozen=True, slots=True)
class Stored:
    id: int
    type: str
    mime_type: str
    size: int
    name: str | None
    metadata: dict[str, Any]
    created_at: str


# -- signed links -------------------------------------------------------------------------


def _secret_file(data_dir: Path) -> str:
    path = data_dir / "url_signing_secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        data_dir.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(48)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as f:
            f.write(value)
        return value


class LinkSigner:
    """HMAC-SHA256 links `/internal/v1/attachments/{id}/download?exp=..&sig=..`.

    The key is BESEDA_URL_SECRET, else derived from the HS256 JWT secret, else one
    generated in the data folder; nodes that share a database must share it. Expiry
    is rounded up to the hour so a link stays the same for an hour (cacheable).
    """

    def __init__(self, settings: Settings, base_url: str = "") -> None:
        root = settings.url_secret or settings.jwt_secret or _secret_file(settings.data_dir)
        self._key = hmac.new(root.encode(), b"beseda attachment links", hashlib.sha256).digest()
        self.ttl_s = settings.url_ttl_s
        self.base_url = base_url.rstrip("/")

    def _sig(self, att_id: int, exp: int) -> str:
        mac = hmac.new(self._key, f"{att_id}.{exp}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:24]).decode()

    def url(self, att_id: int, now: float | None = None) -> str:
        now = time.time() if now is None else now
        exp = (int(now + self.ttl_s) // URL_BUCKET_S + 1) * URL_BUCKET_S
        return (
            f"{self.base_url}/internal/v1/attachments/{att_id}/download"
            f"?exp={exp}&sig={self._sig(att_id, exp)}"
        )

    def valid(self, att_id: int, exp: int, sig: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if exp < now:
            return False
        return hmac.compare_digest(self._sig(att_id, exp).encode(), sig.encode("utf-8"))
