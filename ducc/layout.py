"""Every path inside a repository (docs/design.md §4), relative to its root. Pure: nothing here touches disk.

::

    <registry>/<repository>:<tag>        relative symlink → .flat/xx/<config-digest>
    .flat/xx/<config-digest>/            complete root filesystem
    .layers/xx/<layer-digest>/layerfs/   one unpacked layer (keyed by its compressed digest)
    .metadata/<registry>/<repository>:<tag>/manifest.json   written last
    .multiarch/<arch>[:<variant>]/...    the same, for platforms other than linux/amd64

Digest-only references are published as ``<repository>@sha256:<hex>``.

In a CVMFS repository a tag published for several platforms has every platform's link under
``.multiarch/<arch>[:<variant>]/`` (linux/amd64 included), and its public path is a CVMFS variant
symlink, ``../…/.multiarch/$(CVMFS_ARCH:-amd64)/<registry>/<repository>:<tag>``, which each client
expands with its own ``CVMFS_ARCH`` (``uname -m``: ``x86_64``, ``aarch64``…). Alias links such as
``.multiarch/x86_64 → amd64`` join those names to the platforms' (``ARCH_ALIASES``).
"""

from __future__ import annotations

import posixpath
import re
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


def platform_name(platform: Platform) -> str:
    """The platform's directory under ``.multiarch``: ``<arch>[:<variant>]``, ``<os>-`` first if not linux."""
    name = platform.architecture + (f":{platform.variant}" if platform.variant else "")
    return name if platform.os == "linux" else f"{platform.os}-{name}"


def is_default(platform: Platform) -> bool:
    return platform.matches(DEFAULT_PLATFORM) and platform.variant is None


def platform_prefix(platform: Platform) -> PurePosixPath:
    """Empty for the default platform, ``.multiarch/<arch>[:<variant>]`` otherwise."""
    return PurePosixPath() if is_default(platform) else MULTIARCH / platform_name(platform)


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
    # The default platform's own link moves to .multiarch/amd64/ when a variant link takes its public
    # path (CVMFS, several platforms); its record stays where it was.
    record_prefix = () if prefix[1:] == (VARIANT_DEFAULT,) else prefix
    return PurePosixPath(*record_prefix) / METADATA / PurePosixPath(*parts[len(prefix):])


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


# -- CVMFS variant symlinks: one public path for several platforms --------------------------------

VARIANT_DEFAULT = platform_name(DEFAULT_PLATFORM)  # what a client without CVMFS_ARCH gets
_VARIANT = re.compile(r"\$\((CVMFS_ARCH)(?::-([^)]*))?\)")

# What a CVMFS client sets CVMFS_ARCH to (``uname -m``, and names operators set by hand) → the
# ``.multiarch`` directories that serve it, preferred first (arm64 without a variant is v8).
ARCH_ALIASES: dict[str, tuple[str, ...]] = {
    "x86_64": ("amd64",),
    "x86-64": ("amd64",),
    "aarch64": ("arm64", "arm64:v8"),
    "arm64": ("arm64:v8",),
    "armv7l": ("arm:v7", "arm"),
    "armhf": ("arm:v7", "arm"),
    "armv6l": ("arm:v6",),
    "armel": ("arm:v6",),
    "i686": ("386",),
    "i386": ("386",),
}


def multiarch_link(ref: Reference, platform: Platform) -> PurePosixPath:
    """A platform's own tag link when the tag is published for several (the default platform too)."""
    return MULTIARCH / platform_name(platform) / ref.registry / image_name(ref)


def multiarch_link_target(ref: Reference, platform: Platform, config_digest: Digest) -> str:
    return posixpath.relpath(str(flat_dir(config_digest)), str(multiarch_link(ref, platform).parent))


def moved_link_target(link: PurePosixPath, target: str, moved_to: PurePosixPath) -> str:
    """The target that leads ``moved_to`` where the relative ``target`` of ``link`` led."""
    destination = posixpath.normpath(posixpath.join(str(link.parent), target))
    return posixpath.relpath(destination, str(moved_to.parent))


def variant_link_target(ref: Reference) -> str:
    """``../…/.multiarch/$(CVMFS_ARCH:-amd64)/<registry>/<repository>:<tag>`` from the public path's directory."""
    public = tag_link(ref)
    up = "../" * len(public.parent.parts)
    return f"{up}{MULTIARCH}/$(CVMFS_ARCH:-{VARIANT_DEFAULT})/{public}"


def is_variant(target: str) -> bool:
    """Whether a link target holds variables a CVMFS client expands (``$(CVMFS_ARCH:-amd64)``)."""
    return _VARIANT.search(target) is not None


def expand_variant(target: str, arch: str | None = None) -> str:
    """``target`` as a client with ``CVMFS_ARCH=arch`` reads it (None: unset, the default in the link)."""
    return _VARIANT.sub(lambda m: arch if arch is not None else (m.group(2) or ""), target)


def arch_aliases(platforms: set[str]) -> dict[str, str]:
    """The alias links ``.multiarch/<alias> → <platform>`` for the platform directories present; an alias
    that is itself a platform's directory stays that directory."""
    aliases = {}
    for alias, candidates in ARCH_ALIASES.items():
        if alias in platforms:
            continue
        chosen = next((c for c in candidates if c in platforms), None)
        if chosen is not None:
            aliases[alias] = chosen
    return aliases


def alias_link(alias: str) -> PurePosixPath:
    return MULTIARCH / alias
