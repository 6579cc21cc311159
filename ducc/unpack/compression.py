"""Decompressing layer streams: gzip (ISA-L, decompressed in a helper thread), zstd, or none.

The format is sniffed from the first bytes rather than trusted from the media
type: registries in the field serve uncompressed blobs under gzip media types.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import isal.igzip_threaded
import zstandard

from ducc.errors import UnsupportedLayer
from ducc.verify import Readable

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _Peeked:
    """A reader with its first bytes already taken off and put back in front."""

    def __init__(self, head: bytes, rest: Readable) -> None:
        self._head = head
        self._rest = rest

    def read(self, n: int = -1, /) -> bytes:
        if self._head:
            if n is None or n < 0 or n >= len(self._head):
                head, self._head = self._head, b""
                more = self._rest.read(n - len(head)) if n is not None and n > len(head) else b""
                return head + more
            head, self._head = self._head[:n], self._head[n:]
            return head
        return self._rest.read(n)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def sniff(head: bytes) -> str:
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


@contextmanager
def decompressed(source: Readable) -> Iterator[Readable]:
    """The uncompressed tar stream of ``source``."""
    head = source.read(4)
    kind = sniff(head)
    peeked = _Peeked(head, source)
    if kind == "gzip":
        reader = isal.igzip_threaded.open(peeked, "rb", threads=1, block_size=1 << 20)  # type: ignore[no-untyped-call]
        try:
            yield reader
        finally:
            reader.close()
    elif kind == "zstd":
        with zstandard.ZstdDecompressor().stream_reader(
            peeked,  # type: ignore[arg-type]  # any object with read() works
            read_size=1 << 20,
            read_across_frames=True,
            closefd=False,
        ) as reader:
            yield reader
    elif kind == "none":
        yield peeked
    else:  # pragma: no cover - sniff returns one of the above
        raise UnsupportedLayer(f"unknown compression {kind}")
