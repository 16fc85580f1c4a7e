"""One node, no Redis: the bus is the local registry."""

from __future__ import annotations

from collections.abc import Iterable

from ..registry import Registry


class MemoryBus:
    name = "memory"

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def publish_users(
        self, user_ids: Iterable[int], frame: bytes, exclude: str | None = None,
        kind: str = "event",
    ) -> list[int]:
        return self.registry.deliver_users(user_ids, frame, exclude, kind)

    def publish_chat(self, chat_id: int, frame: bytes, exclude: str | None = None) -> None:
        self.registry.deliver_chat(chat_id, frame, exclude)

    async def online(self, user_ids: Iterable[int]) -> list[int]:
        return self.registry.online(user_ids)

    async def ready(self) -> bool:
        return True
