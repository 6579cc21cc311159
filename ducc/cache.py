"""A blob cache on disk, keyed by digest: a blob enters only after its digest was verified.

Entries are written to a temporary name while they stream and renamed into
place by ``commit()``; an abandoned writer leaves nothing behind. Every commit
prunes the cache, oldest first, back to its byte budget, so any process that
fills it (the CLI, every worker) keeps it within ``DUCC_CACHE_MAX_BYTES``. A
cache that cannot be written (a full disk) is skipped, never a reason to fail.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ducc.model.digest import Digest

log = logging.getLogger(__name__)


class CacheWriter:
    def __init__(self, final: Path, on_commit: Callable[[], object] = lambda: None) -> None:
        self.final = final
        self.tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.part")
        self._on_commit = on_commit
        self._fh: BinaryIO | None = None
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.tmp, "wb")
        except OSError as exc:
            log.warning("blob cache unavailable for %s: %s", final.name[:12], exc)

    def write(self, data: bytes) -> None:
        if self._fh is not None:
            try:
                self._fh.write(data)
            except OSError as exc:  # a full cache disk costs the cache entry, not the conversion
                log.warning("blob cache: cannot keep %s: %s", self.final.name[:12], exc)
                self.abandon()

    def commit(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
                self._fh = None
                os.replace(self.tmp, self.final)
            except OSError as exc:
                log.warning("blob cache: cannot keep %s: %s", self.final.name[:12], exc)
                self.abandon()
                return
            self._on_commit()

    def abandon(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        try:
            self.tmp.unlink(missing_ok=True)
        except OSError:
            pass


class BlobCache:
    def __init__(self, directory: Path, max_bytes: int = 10 << 30) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._pruning = threading.Lock()  # layers commit from several threads

    def path(self, digest: Digest) -> Path:
        return self.directory / digest.algorithm / digest.prefix / digest.hex

    def get(self, digest: Digest) -> Path | None:
        path = self.path(digest)
        return path if path.is_file() else None

    def writer(self, digest: Digest) -> CacheWriter:
        return CacheWriter(self.path(digest), on_commit=self.prune)

    def prune(self) -> int:
        """Delete the oldest entries until the cache fits its budget; returns bytes freed.

        Entries being written (``.part``) count towards the budget but are never deleted.
        """
        with self._pruning:
            return self._prune()

    def _prune(self) -> int:
        entries = []
        partial = 0
        for path in self.directory.rglob("*"):
            try:
                st = path.lstat()
            except FileNotFoundError:  # another process pruned it meanwhile
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if path.name.endswith(".part"):
                partial += st.st_size
            else:
                entries.append((st.st_mtime, st.st_size, path))
        total = partial + sum(size for _, size, _ in entries)
        freed = 0
        for _, size, path in sorted(entries):
            if total - freed <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            freed += size
        if freed:
            log.info("blob cache pruned by %d bytes", freed)
        return freed
