"""A blob cache on disk, keyed by digest: a blob enters only after its digest was verified.

Entries are written to a temporary name while they stream and renamed into
place by ``commit()``; an abandoned writer leaves nothing behind. The cache
is pruned oldest-first to a byte budget.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import BinaryIO

from ducc.model.digest import Digest

log = logging.getLogger(__name__)


class CacheWriter:
    def __init__(self, final: Path) -> None:
        self.final = final
        self.tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.part")
        final.parent.mkdir(parents=True, exist_ok=True)
        self._fh: BinaryIO | None = open(self.tmp, "wb")

    def write(self, data: bytes) -> None:
        if self._fh is not None:
            self._fh.write(data)

    def commit(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            os.replace(self.tmp, self.final)

    def abandon(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.tmp.unlink(missing_ok=True)


class BlobCache:
    def __init__(self, directory: Path, max_bytes: int = 10 << 30) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    def path(self, digest: Digest) -> Path:
        return self.directory / digest.algorithm / digest.prefix / digest.hex

    def get(self, digest: Digest) -> Path | None:
        path = self.path(digest)
        return path if path.is_file() else None

    def writer(self, digest: Digest) -> CacheWriter:
        return CacheWriter(self.path(digest))

    def prune(self) -> int:
        """Delete the oldest entries until the cache fits its budget; returns bytes freed."""
        entries = []
        for path in self.directory.rglob("*"):
            if path.is_file():
                st = path.stat()
                entries.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        freed = 0
        for _, size, path in sorted(entries):
            if total - freed <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            freed += size
        if freed:
            log.info("blob cache pruned by %d bytes", freed)
        return freed
