"""What a tar entry may do, decided without touching the disk (OCI image spec, layer rules).

- Names are confined: an absolute name or a ``..`` component is refused, never
  "cleaned" into something else, because a layer that tries it is hostile.
- ``.wh.<name>`` deletes ``<name>`` from lower layers; ``.wh..wh..opq`` hides
  every lower child of its directory.
- Everything published must be readable (and directories traversable) by the
  unprivileged user who runs the image; the owner's own bits are kept.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from ducc.errors import UnsafeLayer

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"


def shown_name(name: str) -> str:
    """``name`` quoted for a one-line message: in full up to 512 characters (a name over NAME_MAX is shown
    whole), else its start and end; a hostile path can be kilobytes long (and hold newlines)."""
    if len(name) <= 512:
        return repr(name)
    return repr(name[:60]) + f"...({len(name)} characters)..." + repr(name[-40:])


def clean_name(name: str) -> str:
    """The entry's path relative to the root (``""`` is the root itself), or UnsafeLayer."""
    if name.startswith("/"):
        raise UnsafeLayer(f"absolute path {name!r} in layer")
    if "\x00" in name:
        raise UnsafeLayer(f"NUL byte in layer entry name {name!r}")
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise UnsafeLayer(f"'..' in layer entry {name!r}")
        parts.append(part)
    return "/".join(parts)


@dataclass(frozen=True)
class Whiteout:
    """A whiteout entry: ``opaque`` for ``.wh..wh..opq``, else ``target`` is the name it deletes."""

    directory: str
    target: str | None

    @property
    def opaque(self) -> bool:
        return self.target is None


def whiteout_of(path: str) -> Whiteout | None:
    directory, _, base = path.rpartition("/")
    if base == OPAQUE:
        return Whiteout(directory, None)
    if base.startswith(WHITEOUT_PREFIX):
        target = base[len(WHITEOUT_PREFIX) :]
        if not target or target in (".", ".."):
            raise UnsafeLayer(f"malformed whiteout {path!r}")
        return Whiteout(directory, target)
    return None


def readable_mode(mode: int, is_dir: bool) -> int:
    """Permission bits with read for everyone (and search on directories, exec where the owner has it)."""
    bits = stat.S_IMODE(mode)
    if is_dir:
        return bits | 0o555
    bits |= 0o444
    if bits & 0o100:
        bits |= 0o111
    return bits
