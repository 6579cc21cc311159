"""A blob cache on disk, keyed by digest: a blob enters only after its digest was verified.

Entries are written to a temporary name (``.part``) while they stream and
renamed into place by ``commit()``; an abandoned writer leaves nothing behind.
Every commit prunes the cache back to its byte budget, so any process that
fills it (the CLI, every worker) keeps it within ``DUCC_CACHE_MAX_BYTES``:
first the ``.part`` files of writers that died (killed, no write for
``stale_after`` seconds), then entries, oldest first. A cache that cannot be
written (a full disk) is skipped, never a reason to fail. An entry whose bytes
no longer hash to its digest (a disk error, a hand edit) is evicted when it is
looked up, so the blob is fetched again instead of failing its image forever.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import threading
import time
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


STALE_AFTER = 1800.0  # a live writer writes at least every read timeout (60 s); a dead one never again


class BlobCache:
    def __init__(self, directory: Path, max_bytes: int = 10 << 30, stale_after: float = STALE_AFTER) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.stale_after = stale_after
        self._pruning = threading.Lock()  # layers commit from several threads

    def path(self, digest: Digest) -> Path:
        return self.directory / digest.algorithm / digest.prefix / digest.hex

    def get(self, digest: Digest, size: int | None = None) -> Path | None:
        """The entry for ``digest``, checked: ``size`` bytes (when given) that hash to ``digest``. An
        entry that fails the check is evicted, and None returned: the caller fetches the blob again."""
        path = self.path(digest)
        try:
            with open(path, "rb") as fh:
                actual = os.fstat(fh.fileno()).st_size
                why = f"{actual} bytes instead of {size}" if size is not None and actual != size else None
                if why is None:
                    hasher = digest.hasher()
                    while chunk := fh.read(1 << 20):
                        hasher.update(chunk)
                    if hasher.hexdigest() != digest.hex:
                        why = f"its bytes hash to {digest.algorithm}:{hasher.hexdigest()}"
        except FileNotFoundError:
            return None
        except OSError as exc:
            why = f"unreadable: {exc.strerror or exc}"
        if why is None:
            return path
        log.warning("blob cache: entry %s is corrupt (%s); evicted, the blob is fetched again", digest, why)
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
        return None

    def writer(self, digest: Digest) -> CacheWriter:
        return CacheWriter(self.path(digest), on_commit=self.prune)

    def prune(self) -> int:
        """Delete the ``.part`` files of dead writers, then the oldest entries until the cache fits its
        budget; returns bytes freed. ``.part`` files being written count towards the budget but stay."""
        with self._pruning:
            return self._prune()

    def _prune(self) -> int:
        entries = []
        partial = 0
        freed = 0
        stale = time.time() - self.stale_after
        for path in self.directory.rglob("*"):
            try:
                st = path.lstat()
            except FileNotFoundError:  # another process pruned it meanwhile
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if path.name.endswith(".part"):
                if st.st_mtime < stale:  # its writer died (a killed process): nobody will finish or remove it
                    path.unlink(missing_ok=True)
                    log.info("blob cache: removed %s, left by an interrupted download", path.name)
                    freed += st.st_size
                else:
                    partial += st.st_size
            else:
                entries.append((st.st_mtime, st.st_size, path))
        total = partial + sum(size for _, size, _ in entries) + freed
        for _, size, path in sorted(entries):
            if total - freed <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            freed += size
        if freed:
            log.info("blob cache pruned by %d bytes", freed)
        return freed
