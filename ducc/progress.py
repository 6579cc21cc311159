"""Progress of a conversion, reported to whoever watches (a terminal, logs, the job status)."""

from __future__ import annotations

import logging
from typing import Protocol

from ducc.model.digest import Digest
from ducc.model.reference import Reference


class Progress(Protocol):
    def stage(self, ref: Reference, stage: str, detail: str = "") -> None:
        """Entering a stage: resolving, fetching, unpacking, flattening, publishing, published, unchanged."""

    def layer(self, digest: Digest, done: int, total: int | None) -> None:
        """Bytes of one layer's blob received so far. Also called about once a second while a download
        waits for bytes (from the registry client's watchdog thread): whatever it raises (a job's
        cancel) ends that download with it."""


class LogProgress:
    """Concise log lines: one per stage, none per chunk."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("ducc.convert")

    def stage(self, ref: Reference, stage: str, detail: str = "") -> None:
        self.log.info("%s: %s%s", ref, stage, f" ({detail})" if detail else "")

    def layer(self, digest: Digest, done: int, total: int | None) -> None:
        pass
