"""Writing ducc's layout under a root: records, tag links and their removal, each file replaced atomically.

Both backends write through these: the directory backend into its root, the CVMFS backend into the
union mount of its open transaction. What to write for several platforms of one tag is planned by
``ducc.publish.links``; here only the mechanics (symlink + rename, ``manifest.json`` last).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from ducc import layout
from ducc.errors import PublishError
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.record import Record
from ducc.tree import remove_tree


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with a file (mode 0644) holding ``data``: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_links(root: Path, links: Iterable[tuple[PurePosixPath, str]]) -> None:
    """Write the planned links (``ducc.publish.links``) under ``root``, in their order."""
    for relative, target in links:
        write_link(root / relative, target)


def write_link(link: Path, target: str) -> None:
    """Make ``link`` a symlink to ``target`` (symlink + rename: never missing, never torn); PublishError if
    something other than a symlink is there."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and os.readlink(link) == target:
        return
    if os.path.lexists(link) and not link.is_symlink():
        raise PublishError(f"{link} exists and is not a symlink; refusing to replace it")
    tmp = link.with_name(f".{link.name}.{secrets.token_hex(4)}.tmp")
    os.symlink(target, tmp)
    os.replace(tmp, link)


def remove_tag_files(root: Path, ref: Reference, platform: Platform,
                     discard: Callable[[Path, str], bool] | None = None, link_path: PurePosixPath | None = None) -> bool:
    """Unpublish ``ref`` under ``root``: the record first (its directory at once, so ``manifest.json``
    goes with it), then the tag link (``link_path``, default ``tag_link``); parent directories left
    empty go too. ``discard(path, name)`` moves a record directory away atomically (default: delete
    it, ``manifest.json`` first). Returns whether anything was there."""
    link = root / (link_path or layout.tag_link(ref, platform))
    metadata = root / layout.metadata_dir(ref, platform)
    found = False
    if metadata.is_dir():
        if discard is not None:
            found = discard(metadata, f"record-{secrets.token_hex(6)}")
        else:
            (metadata / layout.RECORD_MANIFEST).unlink(missing_ok=True)
            remove_tree(metadata)
            found = True
    if link.is_symlink():
        link.unlink()
        found = True
    elif link.exists():
        raise PublishError(f"{link} exists and is not a symlink; refusing to remove it")
    _prune_empty(link.parent, root)
    _prune_empty(metadata.parent, root / layout.platform_prefix(platform) / layout.METADATA)
    return found


def _prune_empty(directory: Path, stop: Path) -> None:
    """Remove ``directory`` and its parents while they are empty, up to (not including) ``stop``."""
    while directory != stop and stop in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def write_record_files(root: Path, ref: Reference, platform: Platform, record: Record) -> None:
    """Write the record's ``.metadata`` files under ``root``, each atomically, ``manifest.json`` last."""
    directory = root / layout.metadata_dir(ref, platform)
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in record.files().items():
        write_atomic(directory / name, data)


