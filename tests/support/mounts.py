"""Real filesystems with real limits for tests: a tmpfs mounted under the test's directory."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(mount: Path, options: str, what: str = "a tmpfs") -> Iterator[Path]:
    """A tmpfs mounted at ``mount`` (created) with ``options`` (``size=2m``, ``ro,size=1m``...), unmounted
    on exit. Only root can mount one: elsewhere, or where mounting fails, the test is skipped saying why."""
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip(f"mounting {what} needs root; this machine runs the tests unprivileged")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
