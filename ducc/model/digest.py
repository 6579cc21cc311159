"""Content digests (``sha256:<hex>``) as a type, so nobody slices strings by hand."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from ducc.errors import InvalidDigest

_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_ENCODED = re.compile(r"^[a-f0-9]+$")


@dataclass(frozen=True, order=True)
class Digest:
    """A validated content digest. ``str(d)`` gives ``algorithm:hex``."""

    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        length = _HEX_LENGTH.get(self.algorithm)
        if length is None:
            raise InvalidDigest(f"unsupported digest algorithm {self.algorithm!r}")
        if len(self.hex) != length or not _ENCODED.match(self.hex):
            raise InvalidDigest(f"malformed {self.algorithm} digest {self.hex!r}")

    @classmethod
    def parse(cls, text: str) -> Digest:
        algorithm, sep, encoded = str(text).partition(":")
        if not sep:
            raise InvalidDigest(f"digest {text!r} has no algorithm prefix")
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls("sha256", hashlib.sha256(data).hexdigest())

    def hasher(self) -> hashlib._Hash:
        """A fresh hash object of this digest's algorithm."""
        return hashlib.new(self.algorithm)

    @property
    def prefix(self) -> str:
        """The two leading hex characters that shard ``.layers`` and ``.flat``."""
        return self.hex[:2]

    @property
    def short(self) -> str:
        return self.hex[:12]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"
