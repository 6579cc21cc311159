"""What one image may write (``DUCC_MAX_IMAGE_BYTES``, ``DUCC_MAX_LAYER_ENTRIES``, ``DUCC_MAX_PATH_DEPTH``,
``DUCC_MAX_PATH_BYTES``): a value; the unpacker enforces it (``ducc.unpack.limits``)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_IMAGE_BYTES = 100 << 30  # 100 GiB
# Large software stacks ship a few hundred thousand files; this is several times that, and far
# below what exhausts the inodes of a repository's filesystem.
DEFAULT_MAX_LAYER_ENTRIES = 1_000_000
# Real images nest a few dozen levels (deep node_modules trees perhaps a hundred or two); a layer of
# thousands of nested directories is an attack on whatever walks the tree.
DEFAULT_MAX_PATH_DEPTH = 512
# Paths of real images are at most a few hundred bytes. Under PATH_MAX (4,096) with room to spare
# for the repository's own prefix (``/cvmfs/<repo>/.flat/xx/<digest>/``), so that every published
# path can still be opened by its full name on the nodes that run the image.
DEFAULT_MAX_PATH_BYTES = 3072


@dataclass(frozen=True)
class Limits:
    """``max_image_bytes``: uncompressed bytes of regular files one conversion writes, over the layers it
    unpacks; ``max_layer_entries``: tar entries in one layer (every kind); ``max_path_depth``: components
    of one entry's path in the image (``a/b/c`` is 3); ``max_path_bytes``: bytes of one entry's path
    (UTF-8, without a leading ``/``). The path limits also bound hardlink targets."""

    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_layer_entries: int = DEFAULT_MAX_LAYER_ENTRIES
    max_path_depth: int = DEFAULT_MAX_PATH_DEPTH
    max_path_bytes: int = DEFAULT_MAX_PATH_BYTES
