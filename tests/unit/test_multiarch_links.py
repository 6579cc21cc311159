"""Multi-arch link planning (ducc.publish.links): pure, what is present in, links out; shared by both backends."""

import posixpath
from pathlib import PurePosixPath

import pytest

from ducc import layout
from ducc.model.digest import Digest
from ducc.model.manifest import DEFAULT_PLATFORM, Platform
from ducc.model.reference import Reference
from ducc.publish.links import PresentLinks, tag_links, tag_removal

REF = Reference.parse("ghcr.io/org/img:1")
ARM64 = Platform.parse("linux/arm64")
AMD64_FLAT = Digest.of(b"amd64 config")
ARM64_FLAT = Digest.of(b"arm64 config")


def lands(link: PurePosixPath, target: str, arch: str | None = None) -> str:
    """Where a relative link target leads from ``link`` (a variant expanded for ``arch``)."""
    return posixpath.normpath(posixpath.join(str(link.parent), layout.expand_variant(target, arch)))


def follow(links: dict[PurePosixPath, str], path: str, arch: str | None = None) -> str:
    """``path`` resolved through ``links`` (as a client would, a link at a time) until it is no link."""
    for _ in range(10):
        hit = next((p for p in links if path == str(p) or path.startswith(f"{p}/")), None)
        if hit is None:
            return path
        path = lands(hit, links[hit], arch) + path[len(str(hit)):]
    raise AssertionError(f"{path}: too many links")


def amd64_alone() -> tuple[dict[PurePosixPath, str], PresentLinks]:
    """The repository after the tag was published for amd64 only: one link at the public path."""
    [(public, target)] = tag_links(PresentLinks(), REF, DEFAULT_PLATFORM, AMD64_FLAT, variants=True)
    return {public: target}, PresentLinks(public_target=target)


@pytest.mark.parametrize("variants", [True, False], ids=["cvmfs", "directory"])
def test_a_tag_on_one_platform_gets_one_link_that_leads_to_its_flat_root(variants):
    [(link, target)] = tag_links(PresentLinks(), REF, DEFAULT_PLATFORM, AMD64_FLAT, variants=variants)
    assert link == layout.tag_link(REF)
    assert lands(link, target) == str(layout.flat_dir(AMD64_FLAT))


def test_without_variants_a_second_platform_gets_its_own_link_and_leaves_the_first_alone():
    links, present = amd64_alone()
    [(link, target)] = tag_links(present, REF, ARM64, ARM64_FLAT, variants=False)
    assert link == layout.tag_link(REF, ARM64) and link not in links
    assert lands(link, target) == str(layout.flat_dir(ARM64_FLAT))


def test_with_variants_a_second_platform_makes_the_public_path_a_variant_link_each_client_resolves():
    links, present = amd64_alone()
    planned = tag_links(present, REF, ARM64, ARM64_FLAT, variants=True)
    assert planned[-1][0] == layout.tag_link(REF)  # the public path last: never leads to a missing link
    links.update(planned)
    public = str(layout.tag_link(REF))
    flats = {None: AMD64_FLAT, "amd64": AMD64_FLAT, "x86_64": AMD64_FLAT, "arm64": ARM64_FLAT, "aarch64": ARM64_FLAT}
    for arch, flat in flats.items():
        assert follow(links, public, arch) == str(layout.flat_dir(flat)), arch


def test_with_variants_the_first_platform_published_second_still_leaves_amd64_the_default():
    [(arm_link, arm_target)] = tag_links(PresentLinks(), REF, ARM64, ARM64_FLAT, variants=True)
    links = {arm_link: arm_target}
    present = PresentLinks(platforms=(layout.platform_name(ARM64),), linked=frozenset({layout.platform_name(ARM64)}))
    links.update(tag_links(present, REF, DEFAULT_PLATFORM, AMD64_FLAT, variants=True))
    assert follow(links, str(layout.tag_link(REF))) == str(layout.flat_dir(AMD64_FLAT))
    assert follow(links, str(layout.tag_link(REF)), "aarch64") == str(layout.flat_dir(ARM64_FLAT))


VARIANT = layout.variant_link_target(REF)
ARM = layout.platform_name(ARM64)
REMOVALS = {
    "one platform, a plain link": (PresentLinks(public_target="x"), [layout.tag_link(REF, ARM64)]),
    "another platform still linked": (PresentLinks(VARIANT, (ARM, "amd64"), frozenset({ARM, "amd64"})),
                                      [layout.multiarch_link(REF, ARM64)]),
    "the last platform of the tag": (PresentLinks(VARIANT, (ARM, "amd64"), frozenset({ARM})),
                                     [layout.multiarch_link(REF, ARM64), layout.tag_link(REF)]),
}


@pytest.mark.parametrize(("present", "links"), list(REMOVALS.values()), ids=list(REMOVALS))
def test_unpublishing_removes_the_record_first_then_the_links_no_other_platform_needs(present, links):
    assert tag_removal(present, REF, ARM64) == [layout.metadata_dir(REF, ARM64) / layout.RECORD_MANIFEST, *links]
