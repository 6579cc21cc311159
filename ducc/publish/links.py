"""Multi-arch link planning, pure: what is present → the links to write or the paths to remove.

Shared by both backends (docs/publishing.md, "several platforms of one tag"). A backend without variant
links (``variants=False``: the directory backend, whose readers are not CVMFS clients) gets one link per
platform at ``layout.tag_link(ref, platform)``. A CVMFS backend (``variants=True``) gets, once a tag is
published for a second platform, every platform's link under ``.multiarch/<platform>/`` (the default
platform's moves there), the variant link ``.multiarch/$(CVMFS_ARCH:-amd64)/…`` at the public path, and
``.multiarch/<uname -m>`` aliases (``x86_64 → amd64``) that lead clients' architecture names there.

The reading (``ducc.publish.reader.MountedTree.present_links``) and the writing stay with the backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from ducc import layout
from ducc.model.digest import Digest
from ducc.model.manifest import DEFAULT_PLATFORM, Platform
from ducc.model.reference import Reference


@dataclass(frozen=True)
class PresentLinks:
    """What a repository holds of one tag's links.

    ``public_target``: the target of the tag's public path (``layout.tag_link(ref)``), None if no link;
    ``platforms``: the platform directories under ``.multiarch`` (aliases, which are links, left out);
    ``linked``: those of ``platforms`` that have their own link for this tag."""

    public_target: str | None = None
    platforms: tuple[str, ...] = ()
    linked: frozenset[str] = frozenset()


def tag_links(present: PresentLinks, ref: Reference, platform: Platform, config_digest: Digest, *,
              variants: bool) -> list[tuple[PurePosixPath, str]]:
    """The links (path, target) that make ``ref`` on ``platform`` lead to its flat root, the public path last."""
    single = [(layout.tag_link(ref, platform), layout.link_target(ref, platform, config_digest))]
    if not variants:
        return single
    name = layout.platform_name(platform)
    public = layout.tag_link(ref)
    public_target = present.public_target
    default_single = public_target is not None and not layout.is_variant(public_target)
    others = [p for p in present.platforms if p != name and p in present.linked]
    if default_single and not layout.is_default(platform):
        others.append(layout.VARIANT_DEFAULT)
    if not others:
        return single
    links = [(layout.multiarch_link(ref, platform), layout.multiarch_link_target(ref, platform, config_digest))]
    if default_single and not layout.is_default(platform):
        assert public_target is not None
        moved = layout.multiarch_link(ref, DEFAULT_PLATFORM)
        links.append((moved, layout.moved_link_target(public, public_target, moved)))
    for alias, target in sorted(layout.arch_aliases({name, *others, *present.platforms}).items()):
        links.append((layout.alias_link(alias), target))
    links.append((public, layout.variant_link_target(ref)))
    return links


def tag_removal(present: PresentLinks, ref: Reference, platform: Platform) -> list[PurePosixPath]:
    """The paths that unpublishing ``ref`` on ``platform`` removes: its record's ``manifest.json`` first,
    then its own link, and the variant link once no other platform of the tag is left (the aliases'
    targets are left alone: they serve other tags). Without a variant link at the public path (every
    directory root) this is the pair (record, ``layout.tag_link(ref, platform)``)."""
    record = layout.metadata_dir(ref, platform) / layout.RECORD_MANIFEST
    if not layout.is_variant(present.public_target or ""):
        return [record, layout.tag_link(ref, platform)]
    name = layout.platform_name(platform)
    others = [p for p in present.platforms if p != name and p in present.linked]
    return [record, layout.multiarch_link(ref, platform), *([] if others else [layout.tag_link(ref)])]
