"""The garbage-collection state as one file, replaced atomically: the ``GcStateStore`` of both backends.

A directory root keeps it inside the root (``<root>/.ducc-gc.json``), so every host sharing the root
shares it; its writes are fenced by the repository's lease (``fence``). A CVMFS publisher keeps it on
its own disk (``DUCC_STATE_DIR/gc/<repo>[@subdir].json``): writing it into the repository would cost a
revision per run, and a publisher's own record can only be later than the truth, which delays
deletion, never hastens it (docs/publishing.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ducc.publish.writer import write_atomic


class GcStateFile:
    """The state at ``path`` (its directory made on first write). ``fence(change)`` is called before
    every write; it raises (``LeaseLost``) once the writer may no longer change the repository."""

    def __init__(self, path: Path, fence: Callable[[str], None] | None = None) -> None:
        self.path = path
        self._fence = fence

    def read_gc_state(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def write_gc_state(self, data: bytes) -> None:
        if self._fence is not None:
            self._fence("writing the garbage-collection state")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, data)
