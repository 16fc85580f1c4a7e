"""Attachment storage for imported media: files under `<data_dir>/attachments/`.

A deliberately small interface (`put(key, src_path)`) until the REST side brings
the real store; keys are relative paths made only of safe characters.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*$")


class StorageError(Exception):
    """the storage refused a key or could not write"""


class LocalStorage:
    """Copies files into a folder tree; a put of an existing key overwrites it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        if not _SAFE_KEY.match(key) or ".." in key.split("/"):
            raise StorageError(f"unsafe storage key {key!r}")
        return self.root / key

    def put(self, key: str, src_path: Path) -> int:
        """Copy `src_path` under `key` (atomically: temp file, then rename); return its size."""
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + f".part{os.getpid()}")
        shutil.copyfile(src_path, tmp)
        os.replace(tmp, dest)
        return dest.stat().st_size

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()
