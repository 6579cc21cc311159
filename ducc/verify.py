"""Readers that hash what flows through them, so digests are checked while streaming.

Nothing is buffered: a layer passes through these a chunk at a time on its way
to the unpacker. The caller calls ``verify()`` after the consumer is done; it
drains whatever the consumer left (tar padding, trailing zeros) before hashing
the whole, so a short or padded stream cannot slip through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ducc.errors import DigestMismatch
from ducc.model.digest import Digest

CHUNK = 1 << 20
# The most one read() takes from the source. A decompressor asks for megabytes at a time; served in
# smaller pieces, whoever watches the stream (progress, a cancel, the cache) hears from it every
# quarter MiB even on a slow link. Readers of streams take short reads as a matter of course.
MAX_READ = 256 << 10


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class VerifyingReader:
    """Wraps ``source``; ``verify()`` raises DigestMismatch unless the bytes read hash to ``digest``.

    ``size`` (when known) is enforced too; ``on_read`` sees every chunk (progress, tee to cache). ``what``
    names the stream in errors, digest included where it matters (``layer sha256:…``).
    """

    def __init__(
        self,
        source: Readable,
        digest: Digest,
        *,
        what: str,
        size: int | None = None,
        on_read: Callable[[bytes], None] | None = None,
    ) -> None:
        self._source = source
        self.digest = digest
        self.what = what
        self.size = size
        self._hash = digest.hasher()
        self._on_read = on_read
        self.bytes_read = 0

    def read(self, n: int = -1, /) -> bytes:
        data = self._source.read(min(n, MAX_READ) if n is not None and n >= 0 else MAX_READ)
        if data:
            self._hash.update(data)
            self.bytes_read += len(data)
            if self._on_read is not None:
                self._on_read(data)
        return data

    def readinto(self, buffer: memoryview | bytearray) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def verify(self) -> None:
        self.drain()
        actual = Digest(self.digest.algorithm, self._hash.hexdigest())
        if self.size is not None and self.bytes_read != self.size:
            raise DigestMismatch(self.what, f"{self.size} bytes", f"{self.bytes_read} bytes")
        if actual != self.digest:
            raise DigestMismatch(f"{self.what} content", self.digest, actual)
