"""One node, no Redis: the bus is the local registry."""

from __future__ import annotations

from collections.abc import Iterable

from ..registry import Registry
from .base import MessageHook


class MemoryBus:
    name = "memory"

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.on_message: MessageHook | None = None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def attach(self, user_id: int) -> None:
        return None

    def detach(self, user_id: int) -> None:
        return None

    def publish_users(
        self,
        user_ids: Iterable[int],
        frame: bytes,
        exclude: str | None = None,
        kind: str = "event",
        order: tuple[int, int, int | None] | None = None,
    ) -> list[int]:
        # One node: the writer lanes already commit and fan out a chat in seq order.
        return self.registry.deliver_users(user_ids, frame, exclude, kind)

    def publish_chat(
        self,
        chat_id: int,
        frame: bytes,
        exclude: str | None = None,
        typing: tuple[int, bool] | None = None,
        renew: bool = False,
    ) -> None:
        if not renew:
            self.registry.deliver_chat(chat_id, frame, exclude)

    async def watch_chat(self, chat_id: int) -> None:
        return None

    def typing(self, chat_id: int) -> list[int]:
        return []

    async def online(self, user_ids: Iterable[int]) -> list[int]:
        return self.registry.online(user_ids)

    async def ready(self) -> bool:
        return True
