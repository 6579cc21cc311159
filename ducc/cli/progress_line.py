"""The progress a command shows on a terminal: stage lines as logs, plus one live line of per-layer bytes."""

from __future__ import annotations

import logging
import sys
import threading
import time

from ducc.model.digest import Digest
from ducc.model.reference import Reference
from ducc.progress import LogProgress


class TerminalProgress(LogProgress):
    """Stage lines as logs, plus one live line of per-layer bytes on a terminal.

    The live line is written without a newline; every log line of the process takes it off the
    terminal first (``attach``), so no log line is ever glued onto it. It comes back at the next update.
    """

    def __init__(self, stream=sys.stderr) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.stream = stream
        self.layers: dict[Digest, tuple[int, int | None]] = {}
        self.lock = threading.RLock()
        self.last = 0.0
        self.shown = False  # the live line is on the terminal

    def attach(self) -> None:
        """Make the log handlers that write to this terminal clear the live line before each record."""
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self.stream:
                handler.setStream(_ClearingStream(self))

    def clear(self) -> None:
        with self.lock:
            if self.shown:
                self.stream.write("\r\033[K")
                self.shown = False

    def stage(self, ref: Reference, stage: str, detail: str = "") -> None:
        with self.lock:
            self.clear()
            if stage not in ("fetching",):
                self.layers.clear()
        super().stage(ref, stage, detail)

    def layer(self, digest: Digest, done: int, total: int | None) -> None:
        with self.lock:
            self.layers[digest] = (done, total)
            now = time.monotonic()
            if now - self.last < 0.2 and done != total:
                return
            self.last = now
            parts = []
            for d, (got, size) in self.layers.items():
                if size and got >= size:
                    continue
                parts.append(f"{d.short[:8]} {got / 1e6:.1f}/{(size or 0) / 1e6:.1f} MB")
            self.stream.write("\r\033[K" + ("  " + " | ".join(parts[:4]) if parts else ""))
            self.stream.flush()
            self.shown = bool(parts)


class _ClearingStream:
    """The terminal as a log handler sees it: the live progress line is cleared before each write."""

    def __init__(self, progress: TerminalProgress) -> None:
        self.progress = progress

    def write(self, text: str) -> int:
        with self.progress.lock:
            self.progress.clear()
            return int(self.progress.stream.write(text))

    def flush(self) -> None:
        self.progress.stream.flush()


def progress_for(quiet: bool) -> LogProgress:
    """The live line on a terminal (unless ``-q``), plain log lines otherwise."""
    if sys.stderr.isatty() and not quiet:
        terminal = TerminalProgress()
        terminal.attach()
        return terminal
    return LogProgress()
