"""What one image may write (``DUCC_MAX_IMAGE_BYTES``, ``DUCC_MAX_LAYER_ENTRIES``): a value; the unpacker
enforces it (``ducc.unpack.limits``)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_IMAGE_BYTES = 100 << 30  # 100 GiB
# Large software stacks ship a few hundred thousand files; this is several times that, and far
# below what exhausts the inodes of a repository's filesystem.
DEFAULT_MAX_LAYER_ENTRIES = 1_000_000


@dataclass(frozen=True)
class Limits:
    """``max_image_bytes``: uncompressed bytes of regular files one conversion writes, over the layers it
    unpacks; ``max_layer_entries``: tar entries in one layer (every kind)."""

    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_layer_entries: int = DEFAULT_MAX_LAYER_ENTRIES
