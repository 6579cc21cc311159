"""Scratch directories for trees being built, safe against crashed writers; shared by the publishers.

A staging directory ``X`` under the staging root is in use while ``X.lock`` beside it is flock'ed
by a live process; its creator takes that lock *before* creating ``X``, so a sweeper never sees
an unlocked live one and never removes another run's work. ``publish.lock`` in the same root
serialises the writers of one host.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ducc.tree import remove_tree

log = logging.getLogger(__name__)

_WRITER_LOCK = "publish.lock"


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
            if entry.suffix == ".lock" or entry.name == _WRITER_LOCK or not entry.is_dir() or entry.is_symlink():
                continue
            lock_path = entry.with_name(entry.name + ".lock")
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live run owns it
                remove_tree(entry)
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
                remove_tree(path)
                lock_path.unlink(missing_ok=True)
            finally:
                os.close(fd)

    @contextmanager
    def writer(self) -> Iterator[None]:
        """Exclusive among this host's writers (an flock); crash debris is swept while it is held."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / _WRITER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.sweep()
            yield
        finally:
            os.close(fd)
