"""Every path inside a repository (DESIGN §4), relative to its root. Pure: nothing here touches disk.

::

    <registry>/<repository>:<tag>        relative symlink → .flat/xx/<config-digest>
    .flat/xx/<config-digest>/            complete root filesystem
    .layers/xx/<layer-digest>/layerfs/   one unpacked layer (keyed by its compressed digest)
    .metadata/<registry>/<repository>:<tag>/manifest.json   written last
    .multiarch/<arch>[:<variant>]/...    the same, for platforms other than linux/amd64

Digest-only references are published as ``<repository>@sha256:<hex>``.
"""

from __future__ import annotations

import posixpath
from pathlib import PurePosixPath

from ducc.model.digest import Digest
from ducc.model.manifest import DEFAULT_PLATFORM, Platform
from ducc.model.reference import Reference

LAYERS = PurePosixPath(".layers")
FLAT = PurePosixPath(".flat")
METADATA = PurePosixPath(".metadata")
MULTIARCH = PurePosixPath(".multiarch")
CATALOG = ".cvmfscatalog"
RECORD_MANIFEST = "manifest.json"  # its presence means "this tag is converted"
RECORD_DETAILS = "ducc.json"
RECORD_CONFIG = "config.json"
STAGING = PurePosixPath(".ducc-staging")
TRASH = PurePosixPath(".ducc-trash")  # what garbage collection removed, until it is deleted (directory roots)
GC_STATE = ".ducc-gc.json"  # when garbage collection first saw each unreferenced tree (directory roots)
REPOSITORY_NAME = ".ducc-repository"  # a directory root's name, stored in it on first use
LAYERFS = "layerfs"
FLAT_ADDITIONS = ".singularity.d/ducc.json"  # inside a flat root: what ducc added to the image


def is_public(top: str) -> bool:
    """Whether a top-level name of the repository holds public image paths: a registry's
    directory, never one of ducc's dot-entries (``.multiarch`` holds its own, see ``platform_roots``)."""
    return not top.startswith(".")


def layer_dir(digest: Digest) -> PurePosixPath:
    return LAYERS / digest.prefix / digest.hex


def layerfs(digest: Digest) -> PurePosixPath:
    return layer_dir(digest) / LAYERFS


def flat_dir(config_digest: Digest) -> PurePosixPath:
    return FLAT / config_digest.prefix / config_digest.hex


def platform_prefix(platform: Platform) -> PurePosixPath:
    """Empty for the default platform, ``.multiarch/<arch>[:<variant>]`` otherwise."""
    if platform.matches(DEFAULT_PLATFORM) and platform.variant is None:
        return PurePosixPath()
    name = platform.architecture + (f":{platform.variant}" if platform.variant else "")
    if platform.os != "linux":
        name = f"{platform.os}-{name}"
    return MULTIARCH / name


def image_name(ref: Reference) -> str:
    """``<repository>:<tag>``, or ``<repository>@sha256:<hex>`` for a digest-only reference."""
    if ref.tag is not None:
        return f"{ref.repository}:{ref.tag}"
    return f"{ref.repository}@{ref.digest}"


def tag_link(ref: Reference, platform: Platform = DEFAULT_PLATFORM) -> PurePosixPath:
    return platform_prefix(platform) / ref.registry / image_name(ref)


def metadata_dir(ref: Reference, platform: Platform = DEFAULT_PLATFORM) -> PurePosixPath:
    return platform_prefix(platform) / METADATA / ref.registry / image_name(ref)


def metadata_for_link(link: PurePosixPath) -> PurePosixPath:
    """The ``.metadata`` directory of the image published at ``link`` (a ``tag_link``): the inverse
    of ``tag_link`` to ``metadata_dir`` without parsing the reference back."""
    parts = link.parts
    prefix = parts[:2] if parts[:1] == (MULTIARCH.name,) else ()
    return PurePosixPath(*prefix) / METADATA / PurePosixPath(*parts[len(prefix):])


def tree_digest(relative: PurePosixPath, top: PurePosixPath) -> Digest | None:
    """The digest naming ``relative`` if it is ``<top>/xx/<hex>`` (a layer or flat root directory), else None."""
    parts = relative.parts
    if len(parts) != 3 or PurePosixPath(parts[0]) != top or parts[2][:2] != parts[1]:
        return None
    return digest_of_hex(parts[2])


def digest_of_hex(name: str) -> Digest | None:
    """The digest whose hex is ``name`` (sha256 or sha512, by length), or None if it is not one."""
    algorithm = {64: "sha256", 128: "sha512"}.get(len(name))
    if algorithm is None:
        return None
    try:
        return Digest(algorithm, name)
    except ValueError:
        return None


def link_target(ref: Reference, platform: Platform, config_digest: Digest) -> str:
    """What the tag symlink holds: the flat root, relative to the link's directory."""
    return posixpath.relpath(str(flat_dir(config_digest)), str(tag_link(ref, platform).parent))
