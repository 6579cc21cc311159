import pytest

from ducc import layout
from ducc.model.digest import Digest
from ducc.model.manifest import Platform
from ducc.model.reference import Reference

CONFIG = Digest.parse("sha256:" + "5f" * 32)


def test_public_paths_follow_unpacked_cern_ch():
    ref = Reference.parse("ubuntu:24.04")
    assert str(layout.tag_link(ref)) == "registry.hub.docker.com/library/ubuntu:24.04"
    assert str(layout.metadata_dir(ref)) == ".metadata/registry.hub.docker.com/library/ubuntu:24.04"
    assert str(layout.flat_dir(CONFIG)) == ".flat/5f/" + "5f" * 32
    assert str(layout.layerfs(CONFIG)) == ".layers/5f/" + "5f" * 32 + "/layerfs"


def test_tag_links_are_relative_and_lead_to_the_flat_root():
    ref = Reference.parse("127.0.0.1:5000/a/b/c:1")
    target = layout.link_target(ref, Platform("linux", "amd64"), CONFIG)
    assert target == "../../../.flat/5f/" + "5f" * 32


def test_digest_only_references_are_published_by_digest():
    ref = Reference.parse("ghcr.io/org/img@sha256:" + "ab" * 32)
    assert str(layout.tag_link(ref)) == "ghcr.io/org/img@sha256:" + "ab" * 32


def test_other_platforms_live_under_multiarch():
    ref = Reference.parse("ghcr.io/org/img:1")
    assert str(layout.tag_link(ref, Platform.parse("linux/arm64"))) == ".multiarch/arm64/ghcr.io/org/img:1"
    assert str(layout.tag_link(ref, Platform.parse("linux/arm/v7"))) == ".multiarch/arm:v7/ghcr.io/org/img:1"
    target = layout.link_target(ref, Platform.parse("linux/arm64"), CONFIG)
    assert target == "../../../../.flat/5f/" + "5f" * 32


def test_a_variant_link_climbs_to_the_root_and_names_the_client_architecture():
    ref = Reference.parse("127.0.0.1:5000/a/b/c:1")
    target = layout.variant_link_target(ref)
    assert target == "../../../.multiarch/$(CVMFS_ARCH:-amd64)/127.0.0.1:5000/a/b/c:1"
    assert layout.is_variant(target) and not layout.is_variant(layout.link_target(ref, Platform.parse("linux/amd64"), CONFIG))
    assert layout.expand_variant(target) == "../../../.multiarch/amd64/127.0.0.1:5000/a/b/c:1"
    assert layout.expand_variant(target, "aarch64") == "../../../.multiarch/aarch64/127.0.0.1:5000/a/b/c:1"


def test_every_platform_of_a_multi_platform_tag_has_its_link_under_multiarch():
    ref = Reference.parse("ghcr.io/org/img:1")
    assert str(layout.multiarch_link(ref, Platform.parse("linux/amd64"))) == ".multiarch/amd64/ghcr.io/org/img:1"
    assert layout.multiarch_link(ref, Platform.parse("linux/arm64")) == layout.tag_link(ref, Platform.parse("linux/arm64"))
    moved = layout.moved_link_target(layout.tag_link(ref), layout.link_target(ref, Platform.parse("linux/amd64"), CONFIG),
                                     layout.multiarch_link(ref, Platform.parse("linux/amd64")))
    assert moved == layout.multiarch_link_target(ref, Platform.parse("linux/amd64"), CONFIG) == "../../../../.flat/5f/" + "5f" * 32


@pytest.mark.parametrize(("present", "expected"), [
    ({"amd64"}, {"x86_64": "amd64", "x86-64": "amd64"}),
    ({"amd64", "arm64"}, {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64"}),
    ({"arm64:v8"}, {"aarch64": "arm64:v8", "arm64": "arm64:v8"}),
    ({"arm:v7", "386", "ppc64le"}, {"armv7l": "arm:v7", "armhf": "arm:v7", "i686": "386", "i386": "386"}),
], ids=["amd64", "amd64+arm64", "arm64-v8-only", "others"])
def test_client_architecture_names_are_aliased_to_the_platforms_present(present, expected):
    assert layout.arch_aliases(present) == expected


def test_the_record_of_a_public_path_is_found_without_parsing_the_reference():
    for ref, platform in [(Reference.parse("ubuntu:24.04"), Platform.parse("linux/amd64")),
                          (Reference.parse("ghcr.io/org/img:1"), Platform.parse("linux/arm/v7")),
                          (Reference.parse("ghcr.io/org/img@sha256:" + "ab" * 32), Platform.parse("linux/arm64"))]:
        assert layout.metadata_for_link(layout.tag_link(ref, platform)) == layout.metadata_dir(ref, platform)


def test_only_sharded_trees_named_by_a_digest_have_one():
    from pathlib import PurePosixPath

    assert layout.tree_digest(layout.flat_dir(CONFIG), layout.FLAT) == CONFIG
    assert layout.tree_digest(layout.layer_dir(CONFIG), layout.LAYERS) == CONFIG
    assert layout.tree_digest(layout.flat_dir(CONFIG), layout.LAYERS) is None
    for odd in [".flat/5f", ".flat/ab/" + "5f" * 32, ".flat/5f/" + "5f" * 31, ".flat/5f/" + "5F" * 32,
                ".flat/5f/" + "5f" * 32 + "/usr", "registry/x:1", ".flat/.cvmfscatalog"]:
        assert layout.tree_digest(PurePosixPath(odd), layout.FLAT) is None, odd


def test_the_default_platforms_link_moved_under_a_variant_link_keeps_its_record():
    ref = Reference.parse("ghcr.io/org/img:1")
    moved = layout.multiarch_link(ref, Platform.parse("linux/amd64"))
    assert layout.metadata_for_link(moved) == layout.metadata_dir(ref, Platform.parse("linux/amd64"))
    assert layout.metadata_for_link(layout.multiarch_link(ref, Platform.parse("linux/arm64"))) == \
        layout.metadata_dir(ref, Platform.parse("linux/arm64"))
