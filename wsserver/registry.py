"""This node's own sockets: by user (fan-out) and by chat subscription (typing).

Pure bookkeeping on the event loop; knows nothing of other nodes.
"""

from __future__ import annotations

from collections.abc import Iterable

from .session import Session


class Registry:
    def __init__(self) -> None:
        self.by_user: dict[int, list[Session]] = {}
        self.by_chat: dict[int, set[Session]] = {}
        self.count = 0

    def add(self, session: Session) -> None:
        self.by_user.setdefault(session.user_id, []).append(session)
        self.count += 1

    def remove(self, session: Session) -> None:
        sessions = self.by_user.get(session.user_id)
        if sessions is not None and session in sessions:
            sessions.remove(session)
            self.count -= 1
            if not sessions:
                del self.by_user[session.user_id]
        for chat_id in list(session.subscriptions):
            subs = self.by_chat.get(chat_id)
            if subs is not None:
                subs.discard(session)
                if not subs:
                    del self.by_chat[chat_id]

    def subscribe(self, session: Session, chat_id: int) -> None:
        session.subscribe(chat_id)
        self.by_chat.setdefault(chat_id, set()).add(session)

    def unsubscribe(self, session: Session, chat_id: int) -> None:
        session.unsubscribe(chat_id)
        subs = self.by_chat.get(chat_id)
        if subs is not None:
            subs.discard(session)
            if not subs:
                del self.by_chat[chat_id]

    def sessions_of(self, user_id: int) -> list[Session]:
        return self.by_user.get(user_id, [])

    def connections_of(self, user_id: int) -> int:
        return len(self.by_user.get(user_id, ()))

    def deliver_users(
        self, user_ids: Iterable[int], frame: bytes, exclude: str | None = None,
        kind: str = "event",
    ) -> list[int]:
        """Pushes to every socket of these users; returns the users reached."""
        reached: list[int] = []
        by_user = self.by_user
        for uid in user_ids:
            sessions = by_user.get(uid)
            if not sessions:
                continue
            hit = False
            for s in tuple(sessions):
                if s.conn_id != exclude and s.push(frame, kind):
                    hit = True
            if hit:
                reached.append(uid)
        return reached

    def deliver_chat(self, chat_id: int, frame: bytes, exclude: str | None = None) -> None:
        for s in tuple(self.by_chat.get(chat_id, ())):
            if s.conn_id != exclude:
                s.push(frame, "typing")

    def online(self, user_ids: Iterable[int]) -> list[int]:
        return [u for u in user_ids if u in self.by_user]
