"""Scratch directories for trees being built, safe against crashed writers; shared by the publishers.

A staging directory ``X`` under the staging root is in use while ``X.lock`` beside it is flock'ed
by a live process; its creator takes that lock *before* creating ``X``, so a sweeper never sees
an unlocked live one and never removes another run's work. ``publish.lock`` in the same root
serialises the writers of one host.

Reservations: a conversion declares, in its staging directory (``X/.ducc-reserved``), the layers
and flat root it is going to reuse or publish, before it looks whether they exist. Garbage
collection keeps whatever live staging directories reserve. ``reserve.lock`` makes the two
exclusive: a reservation is written under it shared, and a sweep holds it exclusively from the
moment it reads the reservations until its removals are done. So a reservation is either seen
by the sweep, or made after it, when the conversion finds the removed trees gone and builds them
again; there is no moment in between.

``Staging`` is the ``Reservations`` of both backends (``ducc.publish``): garbage collection holds
``frozen`` from inside its transaction until that transaction, and so its removals, have ended.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ducc.errors import InvalidDigest
from ducc.model.digest import Digest
from ducc.tree import discard_tree

log = logging.getLogger(__name__)

_WRITER_LOCK = "publish.lock"
_RESERVATIONS_LOCK = "reserve.lock"
RESERVED = ".ducc-reserved"  # inside a staging directory: the digests its conversion reserved


class Staging:
    """The staging root ``root`` (created on first use)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def sweep(self) -> int:
        """Remove staging directories left by crashed runs; returns how many."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for entry in self.root.iterdir():
            if entry.suffix == ".lock" or not entry.is_dir() or entry.is_symlink():
                continue
            lock_path = entry.with_name(entry.name + ".lock")
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live run owns it
                if not discard_tree(entry, "debris of an interrupted run"):
                    continue  # left aside, logged: this writer goes on
                lock_path.unlink(missing_ok=True)
                removed += 1
            finally:
                os.close(fd)
        if removed:
            log.info("removed %d staging directories left by interrupted runs", removed)
        return removed

    @contextmanager
    def directory(self) -> Iterator[Path]:
        """A new private directory, removed on exit; debris of crashed runs is swept first."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweep()
        path = self.root / f"{os.getpid()}-{secrets.token_hex(6)}"
        lock_path = path.with_name(path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            path.mkdir(mode=0o755)
            yield path
        finally:
            try:
                if discard_tree(path, "staging directory"):
                    lock_path.unlink(missing_ok=True)
            finally:
                os.close(fd)

    @contextmanager
    def writer(self) -> Iterator[int]:
        """Exclusive among this host's writers (an flock, whose descriptor it yields: a command started
        meanwhile may keep the lock for as long as it runs); crash debris is swept while it is held."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / _WRITER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.sweep()
            yield fd
        finally:
            os.close(fd)

    # -- reservations ---------------------------------------------------------------------------

    def reserve(self, stage: Path, digests: Iterable[Digest]) -> None:
        """Add ``digests`` to what the live staging directory ``stage`` reserves. Waits while a sweep
        holds the reservations (``frozen``)."""
        if stage.parent != self.root:
            raise ValueError(f"{stage} is not a staging directory of {self.root}")
        fd = os.open(self.root / _RESERVATIONS_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            path = stage / RESERVED
            wanted = sorted(set(_read_reserved(path)) | set(digests))
            tmp = path.with_name(f"{RESERVED}.{secrets.token_hex(4)}.tmp")
            tmp.write_text("".join(f"{d}\n" for d in wanted), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            os.close(fd)

    def reserved(self) -> frozenset[Digest]:
        """What live staging directories reserve now (a snapshot). Creates and removes nothing."""
        found: set[Digest] = set()
        if not self.root.is_dir():
            return frozenset()
        for entry in self.root.iterdir():
            if entry.suffix == ".lock" or not entry.is_dir() or entry.is_symlink():
                continue
            try:
                fd = os.open(entry.with_name(entry.name + ".lock"), os.O_RDONLY)
            except FileNotFoundError:
                continue  # its creator locks before creating it: without a lock file it is debris
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    found.update(_read_reserved(entry / RESERVED))  # held: a live run
            finally:
                os.close(fd)
        return frozenset(found)

    @contextmanager
    def frozen(self) -> Iterator[frozenset[Digest]]:
        """What live staging directories reserve; no reservation can be added until the block ends."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / _RESERVATIONS_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self.reserved()
        finally:
            os.close(fd)


def _read_reserved(path: Path) -> list[Digest]:
    try:
        lines = path.read_text(encoding="utf-8").split()
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for line in lines:
        try:
            out.append(Digest.parse(line))
        except InvalidDigest:
            log.warning("ignoring %r in %s: not a digest", line, path)
    return out
