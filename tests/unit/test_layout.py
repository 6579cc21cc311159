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
