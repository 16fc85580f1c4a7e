"""What the server needs from a bus: deliver frames to users and chat subscribers
wherever their sockets are, and answer who is online or typing."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

# Called for users reached on this node: (user ids reached, frame kind).
DeliveredHook = Callable[[list[int], bytes, str], None]

# Called when a chat.message.new reached users' sockets on this node later than
# publish_users returned (held back for order, or arriving from another node):
# (chat_id, seq, author, users reached).
MessageHook = Callable[[int, int, "int | None", list[int]], None]


class Bus(Protocol):
    name: str
    on_message: MessageHook | None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def attach(self, user_id: int) -> None:
        """A socket of the user is about to open on this node (before the 101):
        once this returns, events committed from now on reach this node."""
        ...

    def detach(self, user_id: int) -> None:
        """A socket of the user closed on this node."""
        ...

    def publish_users(
        self,
        user_ids: Iterable[int],
        frame: bytes,
        exclude: str | None = None,
        kind: str = "event",
        order: tuple[int, int, int | None] | None = None,
    ) -> list[int]:
        """Queue a frame for every socket of these users (any node); returns the
        users reached on this node now. `order` = (chat_id, seq, author) marks a
        chat.message.new, which every socket gets in seq order, once."""
        ...

    def publish_chat(
        self,
        chat_id: int,
        frame: bytes,
        exclude: str | None = None,
        typing: tuple[int, bool] | None = None,
        renew: bool = False,
    ) -> None:
        """Queue a frame for every socket subscribed to the chat (any node).
        `typing` = (user_id, typing) for chat.user.typing; `renew` marks a repeated
        typing.start that only keeps other nodes' view of it alive."""
        ...

    async def watch_chat(self, chat_id: int) -> None:
        """A local socket subscribed to the chat."""
        ...

    def typing(self, chat_id: int) -> list[int]:
        """Users typing in the chat on other nodes, as far as this node knows."""
        ...

    async def online(self, user_ids: Iterable[int]) -> list[int]: ...

    async def ready(self) -> bool: ...
