"""The real podman (Debian's 4.3), on a private store of its own whose additional image store is ducc's,
and what the store's tests share: an image recipe with every kind of whiteout, converted into a
directory root, and the comparison of a container's root with the flat root.

Each ``Podman`` has its own ``storage.conf`` (``CONTAINERS_STORAGE_CONF``): ``graphroot`` and ``runroot``
under the test's directory, ``additionalimagestores`` the store ducc wrote, so nothing outside the test
is read or written.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ducc import layout
from ducc.convert import Converter
from ducc.publish.directory import DirectoryPublisher, DirectoryView
from ducc.record import FILES, Record
from tests.support.images import Dir, File, Hardlink, ImageSpec, Layer, Opaque, Symlink, Whiteout, push_image
from tests.support.trees import snapshot


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


BASE = Layer([
    Dir("etc"), File("etc/os-release", b"ID=base\n"), Dir("usr"), Dir("usr/bin"),
    File("usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o755), Hardlink("usr/bin/tool-again", "usr/bin/tool"),
    Symlink("usr/bin/sh-link", "/bin/sh"), File("old", b"deleted above"), Dir("opq"), File("opq/lower", b"hidden"),
    Dir("keep"), File("keep/lower", b"kept"), Dir("replaced"), File("replaced/lower", b"hidden too"),
    File("secret", b"s", 0o600),
])


def image(app: bytes) -> ImageSpec:
    top = Layer([
        Whiteout("old"), Opaque("opq"), File("opq/new", b"new"), File("keep/upper", b"added"),
        Whiteout("replaced"), Dir("replaced"), File("replaced/upper", b"replacement"),
        File("app", app, 0o755), Dir("srv", 0o750),
    ])
    return ImageSpec(layers=[BASE, top], cmd=["/app"], env=["PATH=/usr/bin", "FOO=bar"], labels={"from": "ducc"})


def record_of(root: Path, ref) -> Record:
    directory = root / layout.metadata_dir(ref)
    return Record.parse({name: (directory / name).read_bytes() for name in FILES if (directory / name).exists()})


def layers_in(root: Path):
    """Where the store reads each published layer of the directory repository at ``root``."""
    return DirectoryView(root).layer_source


def converted(client, root: Path, ref, spec: ImageSpec):
    built = push_image(client, ref, spec)
    assert Converter(client, DirectoryPublisher(root)).convert(ref).state == "published"
    return built


def flat_additions(flat: Path) -> frozenset[str]:
    """What ducc's flat root holds beyond the image: its Singularity files and mount points, as the flat
    root itself lists them (``.singularity.d/ducc.json``), that list, and the CVMFS catalog marker."""
    added = json.loads((flat / layout.FLAT_ADDITIONS).read_text())["added"]
    return frozenset({a.rstrip("/") for a in added} | {layout.FLAT_ADDITIONS, layout.CATALOG})


def entries(root: Path, skip: frozenset[str] = frozenset()) -> dict[str, tuple]:
    """``snapshot`` plus each entry's owner."""
    out = {}
    for rel, described in snapshot(root).items():
        if rel in skip:
            continue
        st = os.lstat(root / rel)
        out[rel] = (*described, st.st_uid, st.st_gid)
    return out
