"""The database side of cross-node recovery: the messages a hold-back gap is
missing, and the users whose chats changed while Redis was out of reach.

PostgreSQL is the truth; these reads only tell a node what its sockets may lack.
"""

from __future__ import annotations

from typing import Any

from ..protocol import messages as m
from ..store import ATTACHMENTS_COL, MSG_COLS, message_out

FILL_LIMIT = 500


async def messages_before(
    store: Any, chat_id: int, after_seq: int | None, before_seq: int, lookback_s: float
) -> list[tuple[int, int | None, bytes]]:
    """`chat.message.new` frames for the messages with after_seq < seq < before_seq
    (oldest first); with after_seq None, only those stored in the last lookback_s
    seconds (by the database clock)."""
    async with store.connection() as conn:
        if after_seq is None:
            rows = await conn.fetch(
                f"""SELECT {MSG_COLS}, {ATTACHMENTS_COL} FROM messages m
                     WHERE m.chat_id = $1 AND m.seq < $2
                       AND m.created_at >= now() - make_interval(secs => $3)
                     ORDER BY m.seq DESC LIMIT $4""",
                chat_id,
                before_seq,
                lookback_s,
                FILL_LIMIT,
            )
            rows = list(reversed(rows))
        else:
            rows = await conn.fetch(
                f"""SELECT {MSG_COLS}, {ATTACHMENTS_COL} FROM messages m
                     WHERE m.chat_id = $1 AND m.seq > $2 AND m.seq < $3
                     ORDER BY m.seq LIMIT $4""",
                chat_id,
                after_seq,
                before_seq,
                FILL_LIMIT,
            )
    out = []
    for r in rows:
        msg = message_out(r)
        out.append((msg.seq, msg.user_id, m.event_frame("chat.message.new", msg)))
    return out


async def users_with_changes(
    store: Any, user_ids: list[int], window_s: float
) -> list[int]:
    """Of these users, those taking part in a chat that changed in the last window_s
    seconds (by the database clock)."""
    async with store.connection() as conn:
        rows = await conn.fetch(
            """SELECT DISTINCT p.user_id FROM chat_participants p
                 JOIN chats c ON c.id = p.chat_id
                WHERE p.user_id = ANY($1::bigint[])
                  AND c.updated_at >= now() - make_interval(secs => $2)""",
            user_ids,
            window_s,
        )
    return [r["user_id"] for r in rows]
