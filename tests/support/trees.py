"""Trees on disk described entry by entry (type, permission bits, content hash, link target),
so two roots built by different tools can be compared path by path."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from collections import defaultdict
from pathlib import Path

from ducc.unpack.policy import readable_mode


def snapshot(root: Path, *, normalise_modes: bool = False, skip: frozenset[str] = frozenset()) -> dict[str, tuple]:
    """``{relative path: (type, mode, sha256-or-target)}`` for everything under ``root``."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if rel in skip or rel.split("/")[0] in skip:
                continue
            st = os.lstat(full)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", None, os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", readable_mode(mode, True) if normalise_modes else mode, None)
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(Path(full).read_bytes()).hexdigest()
                out[rel] = ("file", readable_mode(mode, False) if normalise_modes else mode, digest)
            else:
                out[rel] = ("special", mode, None)
    return out


def hardlink_groups(root: Path, skip: frozenset[str] = frozenset()) -> set[frozenset[str]]:
    """Sets of paths under ``root`` that are the same regular file (two or more names)."""
    by_inode: dict[tuple[int, int], set[str]] = defaultdict(set)
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if rel.split("/")[0] in skip:
                continue
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                by_inode[(st.st_dev, st.st_ino)].add(rel)
    return {frozenset(paths) for paths in by_inode.values() if len(paths) > 1}


def umoci_rootfs(registry_host: str, repository: str, tag: str, work: Path, *, recompress: bool = False) -> Path:
    """Pull with skopeo and unpack with umoci: the independent oracle for a flat root."""
    for tool in ("skopeo", "umoci"):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} is not installed: run ./bootstrap.sh")
    layout = work / "oci"
    bundle = work / "bundle"
    work.mkdir(parents=True, exist_ok=True)
    # umoci 0.4 reads no zstd: for such images skopeo recompresses the layers to gzip on the way.
    extra = ["--dest-compress", "--dest-compress-format", "gzip"] if recompress else []
    _run(["skopeo", "copy", "-q", "--src-tls-verify=false", *extra,
          f"docker://{registry_host}/{repository}:{tag}", f"oci:{layout}:img"])
    _run(["umoci", "unpack"] + ([] if os.geteuid() == 0 else ["--rootless"]) + ["--image", f"{layout}:img", str(bundle)])
    return bundle / "rootfs"


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
