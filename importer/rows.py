"""COPY rows in PostgreSQL's text format.

asyncpg's `copy_records_to_table` sends every field of every tuple through its
codec for the column (binary format), a few microseconds a message from Python.
The importer writes `messages` as text lines instead, one f-string a row for the
plain columns and the two JSON columns as the UTF-8 bytes msgspec encoded, and
sends a batch as one buffer; the timestamps are text already (the export's own
when it is in the canonical shape, else `ts`).

Text format: fields separated by a tab, rows ended by a newline, `\\N` for NULL; a
backslash, tab, newline or carriage return inside a value is escaped with a
backslash. JSON made by msgspec never holds a raw control character (the encoder
escapes them), so only its backslashes are doubled (load.Loader does it on the
bytes).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

NULL = "\\N"

# The columns of a COPY into messages, in the order load.Loader writes them.
MSG_COPY_COLUMNS = ("id", "chat_id", "seq", "rev", "created_rev", "reply_to_id",
                    "user_id", "type", "lang", "message_key", "external_id", "created_at",
                    "edited_at", "content", "metadata")

_SPECIAL = re.compile(r"[\\\t\n\r]")
needs_escape = _SPECIAL.search  # None when a text value can go into a line as it is
_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UTC = timezone.utc
_MAX = datetime.max


def _escape_match(m: re.Match[str]) -> str:
    return _ESCAPES[m.group()]


def text(s: str | None) -> str:
    """A text value (any characters)."""
    if s is None:
        return NULL
    if _SPECIAL.search(s) is None:
        return s
    return _SPECIAL.sub(_escape_match, s)


def ts(t: datetime | None) -> str:
    """A timestamptz value: the instant asyncpg's binary codec would send for `t`."""
    if t is None:
        return NULL
    if t.tzinfo is None:  # asyncpg reads a naive datetime as local time
        if t == _MAX:
            return "infinity"
        t = t.astimezone(_UTC)
    return str(t)
