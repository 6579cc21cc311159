"""The real podman (Debian's 4.3), on a private store of its own whose additional image store is ducc's.

Each ``Podman`` has its own ``storage.conf`` (``CONTAINERS_STORAGE_CONF``): ``graphroot`` and ``runroot``
under the test's directory, ``additionalimagestores`` the store ducc wrote, so nothing outside the test
is read or written.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


class Podman:
    """The real podman, on a private store whose additional image store is ``store`` (if one is given)."""

    def __init__(self, work: Path, store: Path | None) -> None:
        self.work = work
        self.conf = work / "storage.conf"
        self.conf.write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{work / "graph"}"\n'
            f'runroot = "{work / "run"}"\n'
            + ("" if store is None else f'[storage.options]\nadditionalimagestores = [ "{store}" ]\n')
        )
        self.containers: list[str] = []

    def __call__(self, *args: str) -> str:
        done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "CONTAINERS_STORAGE_CONF": str(self.conf)})
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr}"
        return done.stdout

    def images(self) -> dict[str, str]:
        """``{name: manifest digest}`` as ``podman images --digests`` lists them."""
        rows = json.loads(self("images", "--digests", "--format", "json"))
        return {name: row["Digest"] for row in rows for name in row.get("Names") or ()}

    def root_of(self, name: str) -> Path:
        container = self("create", "--pull", "never", name).strip()
        self.containers.append(container)
        return Path(self("mount", container).strip())

    def close(self) -> None:
        for container in self.containers:
            subprocess.run(["podman", "rm", "-f", container], capture_output=True, timeout=120,
                           env={**os.environ, "CONTAINERS_STORAGE_CONF": str(self.conf)})
        self.containers.clear()
        # podman's overlay driver may leave its graph root's ``overlay`` bind-mounted on itself: only
        # mounts under this podman's own directory are undone.
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            point = line.split()[1].encode().decode("unicode_escape")
            if point.startswith(f"{self.work}/"):
                subprocess.run(["umount", "-l", point], capture_output=True, timeout=60)
