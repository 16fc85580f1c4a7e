"""Where attachment bytes live: a small interface and the local-folder default.

An upload is streamed into a temporary file next to the store (`staging_path`),
then handed over whole with `commit`; a failed upload is `discard`ed. Another
backend (S3 and the like) implements the same four calls.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

CHUNK_BYTES = 64 * 1024


class Storage(Protocol):
    def staging_path(self) -> Path:
        """A fresh local path to stream an upload into."""
        ...

    async def commit(self, staged: Path) -> str:
        """Moves a finished upload into the store; returns its storage key."""
        ...

    async def discard(self, staged: Path) -> None: ...

    def local_path(self, key: str) -> Path | None:
        """The file on this machine, when the backend keeps one (served directly)."""
        ...

    def read(self, key: str) -> AsyncIterator[bytes]: ...


class LocalStorage:
    """Files under `root/ab/<key>`, staged in `root/.staging` (same filesystem, so
    commit is one rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.staging = self.root / ".staging"
        self.staging.mkdir(parents=True, exist_ok=True)

    def staging_path(self) -> Path:
        return self.staging / uuid.uuid4().hex

    def _path(self, key: str) -> Path:
        if len(key) != 32 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError("bad storage key")
        return self.root / key[:2] / key

    async def commit(self, staged: Path) -> str:
        key = uuid.uuid4().hex
        target = self._path(key)

        def move() -> None:
            target.parent.mkdir(exist_ok=True)
            os.replace(staged, target)

        await asyncio.to_thread(move)
        return key

    async def discard(self, staged: Path) -> None:
        await asyncio.to_thread(staged.unlink, True)

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    async def read(self, key: str) -> AsyncIterator[bytes]:
        f = await asyncio.to_thread(open, self._path(key), "rb")
        try:
            while chunk := await asyncio.to_thread(f.read, CHUNK_BYTES):
                yield chunk
        finally:
            f.close()
