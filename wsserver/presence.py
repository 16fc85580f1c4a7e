"""Typing state with a time to live (in-process backend).

A typing flag lives `ttl_s` unless renewed by another typing.start; when it lapses,
or the typist disconnects, `on_expire(chat_id, user_id)` is called so the server can
tell subscribers typing=false.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .tasks import cancel_and_wait

ExpireHook = Callable[[int, int], None]


class MemoryPresence:
    name = "memory"

    def __init__(self, ttl_s: float, on_expire: ExpireHook) -> None:
        self.ttl_s = ttl_s
        self.on_expire = on_expire
        self._typing: dict[int, dict[int, float]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sweep())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def start_typing(self, chat_id: int, user_id: int) -> bool:
        """Marks the user typing; True when they were not typing before."""
        users = self._typing.setdefault(chat_id, {})
        fresh = user_id not in users
        users[user_id] = time.monotonic() + self.ttl_s
        return fresh

    def stop_typing(self, chat_id: int, user_id: int) -> bool:
        users = self._typing.get(chat_id)
        if not users or user_id not in users:
            return False
        del users[user_id]
        if not users:
            del self._typing[chat_id]
        return True

    def typing(self, chat_id: int) -> list[int]:
        now = time.monotonic()
        return [u for u, until in self._typing.get(chat_id, {}).items() if until > now]

    async def _sweep(self) -> None:
        interval = min(0.5, self.ttl_s / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            lapsed = [
                (chat_id, user_id)
                for chat_id, users in self._typing.items()
                for user_id, until in users.items()
                if until <= now
            ]
            for chat_id, user_id in lapsed:
                if self.stop_typing(chat_id, user_id):
                    self.on_expire(chat_id, user_id)
