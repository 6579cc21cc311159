"""What one image may write (``DUCC_MAX_IMAGE_BYTES``, ``DUCC_MAX_LAYER_ENTRIES``, ``DUCC_MAX_PATH_DEPTH``,
``DUCC_MAX_PATH_BYTES``): a value; the unpacker enforces it (``ducc.unpack.limits``). Also the defaults of
what a registry may cost (``DUCC_MIN_TRANSFER_RATE``/``_TIME``, ``DUCC_MAX_TAG_PAGES``/``DUCC_MAX_TAGS``),
which the registry client enforces: one place for each default, read by the settings and the client."""

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

# A transfer may take DEFAULT_MIN_TRANSFER_TIME seconds plus its size at DEFAULT_MIN_TRANSFER_RATE
# bytes/s: a slow but working registry passes, one that trickles a byte at a time does not.
DEFAULT_MIN_TRANSFER_RATE = 16 << 10
DEFAULT_MIN_TRANSFER_TIME = 60
# A tag glob lists a repository's tags page by page; a Link chain that never ends stops here.
DEFAULT_MAX_TAG_PAGES = 1000
DEFAULT_MAX_TAGS = 100_000


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
