"""ChatService: what the marketplace backend does to chats, users and orders.

Every change to a chat takes the chat's next `rev` and is written to `chat_events`
in the same transaction, so `chats.sync` replays it; after commit the event goes to
the participants' sockets through the bus. Used by the internal REST API and the
CLI; the socket path never calls it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import asyncpg

from . import lang
from .errors import BadRequest, NotFound
from .protocol import messages as m
from .store import ATTACHMENTS_COL, MSG_COLS, SendRow, chat_out, iso, message_out

if TYPE_CHECKING:
    from .app import Node

log = logging.getLogger(__name__)

PARTICIPANT_ROLES = ("owner", "admin", "member")


def participant_role(role: str) -> str:
    """Chat roles are owner/admin/member; a marketplace role given instead means member."""
    return role if role in PARTICIPANT_ROLES else "member"


class ChatService:
    def __init__(self, node: "Node") -> None:
        self.node = node
        self.store = node.store

    # -- projections -----------------------------------------------------------------

    async def upsert_user(
        self, user_id: int, *, name: str, role: str, locale: str, is_demo: bool
    ) -> dict[str, Any]:
        async with self.store.connection() as conn:
            r = await conn.fetchrow(
                """INSERT INTO users (id, name, role, locale, is_demo) VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, role = EXCLUDED.role,
                       locale = EXCLUDED.locale, is_demo = EXCLUDED.is_demo, updated_at = now()
                   RETURNING *""",
                user_id, name, role, locale, is_demo,
            )
        return {
            "id": r["id"], "name": r["name"], "role": r["role"], "locale": r["locale"],
            "is_demo": r["is_demo"], "updated_at": iso(r["updated_at"]),
        }

    async def upsert_order(
        self, order_id: int, *, buyer_id: int | None, manager_id: int | None,
        fulfillment_id: int | None,
    ) -> dict[str, Any]:
        async with self.store.connection() as conn:
            r = await conn.fetchrow(
                """INSERT INTO orders (id, buyer_id, manager_id, fulfillment_id)
                   VALUES ($1, $2, $3, $4)
                   ON CONFLICT (id) DO UPDATE SET buyer_id = EXCLUDED.buyer_id,
                       manager_id = EXCLUDED.manager_id,
                       fulfillment_id = EXCLUDED.fulfillment_id, updated_at = now()
                   RETURNING *""",
                order_id, buyer_id, manager_id, fulfillment_id,
            )
        return {
            "id": r["id"], "buyer_id": r["buyer_id"], "manager_id": r["manager_id"],
            "fulfillment_id": r["fulfillment_id"], "updated_at": iso(r["updated_at"]),
        }

    # -- chats -------------------------------------------------------------------------

    async def create(
        self, *, group: str, type: str, name: str, users: Sequence[tuple[int, str]],
        order_id: int | None, verification_id: int | None, metadata: dict[str, Any] | None,
    ) -> dict[str, Any]:
        chat = await self.store.create_chat(
            group=group, type=type, name=name,
            users=[(u, participant_role(r)) for u, r in dict(users).items()],
            order_id=order_id, verification_id=verification_id, metadata=metadata,
        )
        members = [p["user_id"] for p in chat["participants"]]
        self._publish(members, "chat.update", {k: v for k, v in chat.items() if k != "participants"})
        return chat

    async def _chat_row(self, conn: asyncpg.Connection, chat_id: int, *, lock: bool = False) -> Any:
        row = await conn.fetchrow(
            "SELECT * FROM chats WHERE id = $1" + (" FOR UPDATE" if lock else ""), chat_id
        )
        if row is None or row["deleted_at"] is not None:
            raise NotFound("chat not found")
        return row

    async def get(self, chat_id: int) -> dict[str, Any]:
        async with self.store.connection() as conn:
            row = await self._chat_row(conn, chat_id)
            parts = await self._participant_rows(conn, chat_id, current_only=True)
        return chat_out(row, [{"user_id": p["user_id"], "role": p["role"]} for p in parts])

    async def _record(
        self, conn: asyncpg.Connection, chat_id: int, kind: str, data: dict[str, Any],
        sets: str = "", args: Sequence[Any] = (),
    ) -> tuple[Any, dict[str, Any]]:
        """Takes the chat's next rev (applying `sets`), logs the event; returns the
        chat row and the event data with its rev."""
        row = await conn.fetchrow(
            f"UPDATE chats SET rev = rev + 1, updated_at = now(){sets} WHERE id = $1 RETURNING *",
            chat_id, *args,
        )
        event = dict(data)
        if kind == "chat.update":
            event = chat_out(row)
        event["rev"] = row["rev"]
        await conn.execute(
            "INSERT INTO chat_events (chat_id, rev, type, data) VALUES ($1, $2, $3, $4)",
            chat_id, row["rev"], kind, event,
        )
        return row, event

    async def update(
        self, chat_id: int, *, name: str | None, metadata: dict[str, Any] | None,
        group: str | None,
    ) -> dict[str, Any]:
        async with self.store.connection() as conn, conn.transaction():
            await self._chat_row(conn, chat_id, lock=True)
            row, event = await self._record(
                conn, chat_id, "chat.update", {},
                """, name = COALESCE($2, name), metadata = COALESCE($3, metadata),
                   "group" = COALESCE($4, "group")""",
                (name, metadata, group),
            )
            members = await self._members(conn, chat_id)
        self._publish(members, "chat.update", event)
        return chat_out(row)

    async def set_archived(self, chat_id: int, archived: bool) -> dict[str, Any]:
        status = "archived" if archived else "active"
        async with self.store.connection() as conn, conn.transaction():
            row = await self._chat_row(conn, chat_id, lock=True)
            if row["status"] == status:
                return chat_out(row)
            kind = "chat.archive" if archived else "chat.update"
            row, event = await self._record(
                conn, chat_id, kind, {"chat_id": chat_id}, ", status = $2", (status,)
            )
            members = await self._members(conn, chat_id)
        self._publish(members, kind, event)
        return chat_out(row)

    async def delete(self, chat_id: int) -> dict[str, Any]:
        """Soft delete: hidden from every list; participants get `chat.archive`
        with `deleted: true`, and their next `chats.sync` says reset."""
        async with self.store.connection() as conn, conn.transaction():
            await self._chat_row(conn, chat_id, lock=True)
            row, event = await self._record(
                conn, chat_id, "chat.archive", {"chat_id": chat_id, "deleted": True},
                ", deleted_at = now()",
            )
            members = await self._members(conn, chat_id)
        self._publish(members, "chat.archive", event)
        for uid in members:
            self.node.server.forget_membership(uid, chat_id)
        return chat_out(row)

    # -- participants --------------------------------------------------------------------

    async def _participant_rows(
        self, conn: asyncpg.Connection, chat_id: int, *, current_only: bool = False
    ) -> list[Any]:
        return list(await conn.fetch(
            """SELECT p.*, GREATEST(c.last_seq - p.last_read_seq, 0) AS unread
                 FROM chat_participants p JOIN chats c ON c.id = p.chat_id
                WHERE p.chat_id = $1 AND ($2 = false OR p.left_at IS NULL)
                ORDER BY p.joined_at, p.user_id""",
            chat_id, current_only,
        ))

    async def participants(self, chat_id: int) -> list[dict[str, Any]]:
        async with self.store.connection() as conn:
            await self._chat_row(conn, chat_id)
            rows = await self._participant_rows(conn, chat_id)
        return [
            {
                "user_id": p["user_id"],
                "role": p["role"],
                "last_read_message_id": p["last_read_message_id"],
                "unread": p["unread"] if p["left_at"] is None else 0,
                "is_muted": p["is_muted"],
                "joined_at": iso(p["joined_at"]),
                "left_at": iso(p["left_at"]),
            }
            for p in rows
        ]

    async def add_participant(self, chat_id: int, user_id: int, role: str) -> dict[str, Any]:
        role = participant_role(role)
        async with self.store.connection() as conn, conn.transaction():
            await self._chat_row(conn, chat_id, lock=True)
            before = await conn.fetchrow(
                "SELECT role, left_at FROM chat_participants WHERE chat_id = $1 AND user_id = $2",
                chat_id, user_id,
            )
            if before is not None and before["left_at"] is None and before["role"] == role:
                return {"chat_id": chat_id, "user_id": user_id, "role": role, "changed": False}
            # A new or returning participant starts with everything before now read:
            # what was said while they were away is history, not unread news.
            await conn.execute(
                """INSERT INTO chat_participants AS p (chat_id, user_id, role, last_read_seq,
                                                       last_read_message_id, delivered_seq)
                   SELECT $1, $2, $3, c.last_seq, c.last_message_id, c.last_seq
                     FROM chats c WHERE c.id = $1
                   ON CONFLICT (chat_id, user_id) DO UPDATE SET role = EXCLUDED.role,
                       left_at = NULL,
                       joined_at = CASE WHEN p.left_at IS NULL THEN p.joined_at ELSE now() END,
                       last_read_seq = CASE WHEN p.left_at IS NULL OR
                                                 p.last_read_seq >= EXCLUDED.last_read_seq
                                            THEN p.last_read_seq
                                            ELSE EXCLUDED.last_read_seq END,
                       last_read_message_id = CASE WHEN p.left_at IS NULL OR
                                                        p.last_read_seq >= EXCLUDED.last_read_seq
                                                   THEN p.last_read_message_id
                                                   ELSE EXCLUDED.last_read_message_id END,
                       delivered_seq = CASE WHEN p.left_at IS NULL THEN p.delivered_seq
                                            ELSE GREATEST(p.delivered_seq,
                                                          EXCLUDED.delivered_seq) END""",
                chat_id, user_id, role,
            )
            _row, event = await self._record(
                conn, chat_id, "chat.user.join",
                {"chat_id": chat_id, "user_id": user_id, "role": role},
            )
            members = await self._members(conn, chat_id)
        self._publish(members, "chat.user.join", event)
        return {**event, "changed": True}

    async def remove_participant(self, chat_id: int, user_id: int) -> dict[str, Any]:
        async with self.store.connection() as conn, conn.transaction():
            await self._chat_row(conn, chat_id, lock=True)
            role = await conn.fetchval(
                """UPDATE chat_participants SET left_at = now()
                    WHERE chat_id = $1 AND user_id = $2 AND left_at IS NULL RETURNING role""",
                chat_id, user_id,
            )
            if role is None:
                raise NotFound("participant not found")
            _row, event = await self._record(
                conn, chat_id, "chat.user.leave",
                {"chat_id": chat_id, "user_id": user_id, "role": role},
            )
            members = await self._members(conn, chat_id)
        self._publish([*members, user_id], "chat.user.leave", event)
        self.node.server.forget_membership(user_id, chat_id)
        return event

    # -- messages ----------------------------------------------------------------------

    async def post_message(
        self, chat_id: int, *, message_key: str, text: str | None, type: str,
        user_id: int | None, metadata: dict[str, Any] | None, attachments: list[int],
        reply_to_id: int | None,
    ) -> tuple[m.MessageOut, bool]:
        """A system message (or one on a user's behalf); same idempotency by key."""
        if user_id is not None and not await self.store.is_member(chat_id, user_id):
            async with self.store.connection() as conn:
                await self._chat_row(conn, chat_id)
            raise BadRequest("`user_id` is not a participant of this chat")
        row = SendRow(
            chat_id=chat_id,
            user_id=user_id,
            message_key=message_key,
            type=type,
            text=text,
            lang=lang.detect(text),
            metadata=None if metadata is None else m.encode(metadata).decode(),
            reply_to_id=reply_to_id,
            check_member=user_id is not None,
            attachments=attachments,
        )
        result = await self.node.writer.write(row)
        if result.error is not None:
            raise result.error
        msg = result.message
        assert msg is not None
        if not result.duplicate:
            self.node.server.deliver_message(msg, result.members)
        return msg, result.duplicate

    async def messages(
        self, chat_id: int, *, limit: int, before_seq: int | None, after_seq: int | None
    ) -> tuple[list[m.MessageOut], bool]:
        async with self.store.connection() as conn:
            await self._chat_row(conn, chat_id)
            if after_seq is not None:
                rows = await conn.fetch(
                    f"""SELECT {MSG_COLS}, {ATTACHMENTS_COL} FROM messages m
                         WHERE m.chat_id = $1 AND m.seq > $2 ORDER BY m.seq LIMIT $3""",
                    chat_id, after_seq, limit + 1,
                )
                more = len(rows) > limit
                rows = rows[:limit]
            else:
                rows = await conn.fetch(
                    f"""SELECT {MSG_COLS}, {ATTACHMENTS_COL} FROM messages m
                         WHERE m.chat_id = $1 AND m.seq < $2 ORDER BY m.seq DESC LIMIT $3""",
                    chat_id, before_seq if before_seq is not None else 2**63 - 1, limit + 1,
                )
                more = len(rows) > limit
                rows = list(reversed(rows[:limit]))
        return [message_out(r) for r in rows], more

    async def statuses(self, message_id: int) -> list[dict[str, Any]]:
        async with self.store.connection() as conn:
            msg = await conn.fetchrow(
                """SELECT m.chat_id, m.seq, m.user_id FROM messages m
                     JOIN chats c ON c.id = m.chat_id AND c.deleted_at IS NULL
                    WHERE m.id = $1""",
                message_id,
            )
            if msg is None:
                raise NotFound("message not found")
            rows = await conn.fetch(
                """SELECT user_id, delivered_seq, delivered_at, last_read_seq, last_read_at
                     FROM chat_participants
                    WHERE chat_id = $1 AND user_id IS DISTINCT FROM $2 AND left_at IS NULL
                    ORDER BY user_id""",
                msg["chat_id"], msg["user_id"],
            )
        out = []
        for r in rows:
            read = r["last_read_seq"] >= msg["seq"]
            delivered = read or r["delivered_seq"] >= msg["seq"]
            out.append({
                "user_id": r["user_id"],
                "status": "read" if read else "delivered" if delivered else None,
                "delivered_at": iso(r["delivered_at"]) if delivered else None,
                "read_at": iso(r["last_read_at"]) if read else None,
            })
        return out

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    async def _members(conn: asyncpg.Connection, chat_id: int) -> list[int]:
        rows = await conn.fetch(
            "SELECT user_id FROM chat_participants WHERE chat_id = $1 AND left_at IS NULL",
            chat_id,
        )
        return [r["user_id"] for r in rows]

    def _publish(self, user_ids: Sequence[int], kind: str, data: Any) -> None:
        self.node.bus.publish_users(list(dict.fromkeys(user_ids)), m.event_frame(kind, data))

