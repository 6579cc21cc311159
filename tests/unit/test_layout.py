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
