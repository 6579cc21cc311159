"""How much one image may write: ``DUCC_MAX_IMAGE_BYTES`` and ``DUCC_MAX_LAYER_ENTRIES``, checked per tar entry.

An allowed repository is not a trusted one: a layer can expand to far more than
its compressed size, or hold millions of empty files. The unpacker asks the
image's ``Budget`` before it writes each entry, so a layer is refused as soon
as the entry that crosses a limit is read (its bytes are never written, the rest
of the blob never downloaded) with ``LimitExceeded``, a permanent error: the
image is not published and retrying would refuse it again.

Bytes are the regular files' uncompressed sizes that this conversion writes,
summed over the layers it unpacks (in parallel: the budget is shared and
locked); layers already in the repository cost nothing. Entries are counted per
layer, every tar entry (directories, links and whiteouts too).
"""

from __future__ import annotations

import threading

from ducc.errors import LimitExceeded
from ducc.model.limits import Limits


class Budget:
    """What one image's conversion may still write; shared by its layers."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.written = 0
        self._lock = threading.Lock()

    def charge(self, name: str, entries: int, size: int) -> None:
        """Account for the layer's ``entries``-th entry ``name`` of ``size`` bytes, before it is written."""
        if entries > self.limits.max_layer_entries:
            raise LimitExceeded(f"more than DUCC_MAX_LAYER_ENTRIES={self.limits.max_layer_entries} entries in one "
                                f"layer (at {name!r})")
        if size <= 0:
            return
        with self._lock:
            if self.written + size > self.limits.max_image_bytes:
                raise LimitExceeded(f"more than DUCC_MAX_IMAGE_BYTES={self.limits.max_image_bytes} uncompressed bytes "
                                    f"for the image ({self.written} written, {name!r} adds {size})")
            self.written += size
