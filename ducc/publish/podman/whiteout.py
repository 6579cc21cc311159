"""Whiteouts in overlay's form, decided per directory from its names. Pure (docs/podman.md).

A published layer (``layerfs``) keeps the layer's whiteouts as empty marker files (``.wh.<name>``,
``.wh..wh..opq``: see ``ducc.unpack.policy``). The overlay driver that mounts the store's layers wants
them as overlayfs does:

- ``.wh.<name>`` becomes a character device ``<name>`` with device number 0/0;
- ``.wh..wh..opq`` becomes the attribute ``trusted.overlay.opaque=y`` on its directory;
- a whiteout of a name the same layer also brings is no device (the entry itself hides the lower one);
  when that entry is a directory it becomes opaque, since the layer replaced the lower directory
  rather than adding to it (OCI image spec, whiteouts).

The markers themselves are never copied.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from ducc.unpack.policy import OPAQUE, WHITEOUT_PREFIX

OPAQUE_XATTR = "trusted.overlay.opaque"
OPAQUE_VALUE = b"y"


@dataclass(frozen=True)
class DirectoryPlan:
    """What one directory of a layer becomes in the store.

    ``opaque``: the directory gets the opaque attribute; ``devices``: the 0/0 character devices to create
    in it; ``opaque_children``: subdirectories to make opaque; ``markers``: names not to copy.
    """

    opaque: bool
    devices: tuple[str, ...]
    opaque_children: frozenset[str]
    markers: frozenset[str]


def is_marker(name: str) -> bool:
    return name.startswith(WHITEOUT_PREFIX)


def plan_directory(names: Iterable[str], directories: Collection[str]) -> DirectoryPlan:
    """The plan of a directory holding ``names``, of which ``directories`` are directories."""
    present = set(names)
    markers = frozenset(n for n in present if is_marker(n))
    devices: list[str] = []
    opaque_children: set[str] = set()
    for marker in sorted(markers):
        if marker == OPAQUE:
            continue
        target = marker[len(WHITEOUT_PREFIX):]
        if target not in present:
            devices.append(target)
        elif target in directories:
            opaque_children.add(target)
    return DirectoryPlan(OPAQUE in present, tuple(devices), frozenset(opaque_children), markers)
