"""What the server needs from a bus: deliver frames to users and chat subscribers
wherever their sockets are, and answer who is online or typing."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

# Called for users reached on this node: (user ids reached, frame kind).
DeliveredHook = Callable[[list[int], bytes, str], None]


class Bus(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def publish_users(
        self, user_ids: Iterable[int], frame: bytes, exclude: str | None = None,
        kind: str = "event",
    ) -> list[int]:
        """Queue a frame for every socket of these users (any node); returns the
        users reached on this node."""
        ...

    def publish_chat(self, chat_id: int, frame: bytes, exclude: str | None = None) -> None:
        """Queue a frame for every socket subscribed to the chat (any node)."""
        ...

    async def online(self, user_ids: Iterable[int]) -> list[int]: ...

    async def ready(self) -> bool: ...
