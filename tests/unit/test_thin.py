"""Thin images: DUCC's thin.json, the config and manifest around it, reproducibility, and naming."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest

from ducc.errors import WishlistError
from ducc.model import mediatypes
from ducc.model.digest import Digest
from ducc.model.manifest import ImageConfig, Manifest, parse_manifest
from ducc.model.reference import Reference
from ducc.thin import DEFAULT_OUTPUT_FORMAT, ThinImage, build_thin_image, thin_reference

LAYERS = [Digest("sha256", c * 64) for c in "abc"]
SOURCE = Reference.parse("https://registry.hub.docker.com/library/ubuntu:24.04")
PINNED = "sha256:b055b968aa8e3d667ee0997a0fcd2882bfba47cae2ce2a344ec3fdbdee1763e3"


def source_manifest(layers: list[Digest] = LAYERS) -> Manifest:
    raw = json.dumps({
        "schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST,
        "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": "sha256:" + "f" * 64, "size": 10},
        "layers": [{"mediaType": mediatypes.OCI_LAYER_GZIP, "digest": str(d), "size": 1} for d in layers],
    }).encode()
    manifest = parse_manifest(raw)
    assert isinstance(manifest, Manifest)
    return manifest


def source_config(**changes: object) -> ImageConfig:
    conf: dict[str, object] = {
        "Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"], "Entrypoint": ["/entry"], "Cmd": ["bash", "-l"],
        "WorkingDir": "/work", "User": "1000:1000", "Labels": {"org.example": "yes"},
    }
    conf.update(changes)
    return ImageConfig.parse(json.dumps({
        "architecture": "amd64", "os": "linux", "config": conf,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "d" * 64] * 3},
        "created": "2026-01-01T00:00:00Z",
    }).encode())


def build() -> ThinImage:
    return build_thin_image(SOURCE, source_manifest(), source_config(), "unpacked.cern.ch")


def layer_files(thin: ThinImage) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(thin.blobs[thin.layer_digest]))) as tar:
        return {m.name: (m, tar.extractfile(m).read()) for m in tar.getmembers()}  # type: ignore[union-attr]


def test_building_twice_gives_the_same_bytes_and_digest():
    first, second = build(), build()
    assert first.manifest == second.manifest and first.manifest_digest == second.manifest_digest
    assert dict(first.blobs) == dict(second.blobs)


def test_the_digest_is_pinned_so_a_library_upgrade_cannot_silently_move_every_thin_tag():
    # If this changes on purpose, every thin image is re-pushed once: say so in the commit.
    assert build().thin_json.startswith(b'{\n  "version": "1.0",\n  "origin": "https://registry.hub.docker.com/')
    assert str(build().manifest_digest) == PINNED



def test_thin_json_lists_the_source_layers_base_first_with_their_cvmfs_urls():
    document = json.loads(build().thin_json)
    assert list(document) == ["version", "origin", "layers"]  # DUCC's field order
    assert document["version"] == "1.0"
    assert document["origin"] == "https://registry.hub.docker.com/library/ubuntu:24.04"
    assert document["layers"] == [
        {"digest": d.hex, "url": f"cvmfs://unpacked.cern.ch/.layers/{d.hex[:2]}/{d.hex}/layerfs"} for d in LAYERS
    ]


def test_a_repository_subdirectory_is_part_of_the_layer_urls():
    thin = build_thin_image(SOURCE, source_manifest(), source_config(), "/unpacked.cern.ch/sub/")
    url = json.loads(thin.thin_json)["layers"][0]["url"]
    assert url == f"cvmfs://unpacked.cern.ch/sub/.layers/aa/{'a' * 64}/layerfs"


@pytest.mark.parametrize("repo", ["", "cvmfs://x.cern.ch", "x.cern.ch/../y", "a b"], ids=["empty", "url", "dotdot", "space"])
def test_a_malformed_repository_name_is_refused(repo):
    with pytest.raises(ValueError, match="CVMFS repository"):
        build_thin_image(SOURCE, source_manifest(), source_config(), repo)


def test_the_origin_names_a_digest_pinned_source_with_tag_and_digest():
    source = Reference.parse(f"quay.io/org/img:1@sha256:{'e' * 64}")
    document = json.loads(build_thin_image(source, source_manifest(), source_config(), "r.cern.ch").thin_json)
    assert document["origin"] == f"https://quay.io/org/img:1@sha256:{'e' * 64}"


def test_the_layer_holds_exactly_thin_json_owned_by_root_with_fixed_metadata():
    thin = build()
    files = layer_files(thin)
    assert list(files) == ["thin.json"]
    info, content = files["thin.json"]
    assert content == thin.thin_json
    assert (info.mode, info.uid, info.gid, info.uname, info.gname, info.mtime) == (0o644, 0, 0, "", "", 0)
    assert info.isreg()


def test_the_gzip_stream_has_no_timestamp_and_no_file_name():
    blob = build().blobs[build().layer_digest]
    assert blob[:2] == b"\x1f\x8b" and blob[3] == 0  # FLG: no FNAME, no FCOMMENT
    assert blob[4:8] == b"\0\0\0\0"  # MTIME


def test_config_has_cvmfs_image_first_then_the_source_environment_and_command():
    thin = build()
    config = json.loads(thin.blobs[thin.config_digest])
    assert config["config"]["Env"] == ["CVMFS_IMAGE=true", "PATH=/usr/bin:/bin", "LANG=C.UTF-8"]
    assert config["config"]["Entrypoint"] == ["/entry"] and config["config"]["Cmd"] == ["bash", "-l"]
    assert config["config"]["WorkingDir"] == "/work" and config["config"]["User"] == "1000:1000"
    assert config["config"]["Labels"] == {"org.example": "yes"}
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    assert config["rootfs"] == {"type": "layers", "diff_ids": [str(thin.diff_id)]}


def test_a_source_cvmfs_image_variable_is_replaced_not_duplicated():
    thin = build_thin_image(SOURCE, source_manifest(), source_config(Env=["CVMFS_IMAGE=false", "A=1"]), "r.cern.ch")
    assert json.loads(thin.blobs[thin.config_digest])["config"]["Env"] == ["CVMFS_IMAGE=true", "A=1"]


def test_absent_entrypoint_and_cmd_stay_absent():
    thin = build_thin_image(SOURCE, source_manifest(), source_config(Entrypoint=None, Cmd=None), "r.cern.ch")
    assert not {"Entrypoint", "Cmd"} & set(json.loads(thin.blobs[thin.config_digest])["config"])


def test_the_manifest_is_docker_schema_2_and_its_digests_and_sizes_match_the_blobs():
    thin = build()
    manifest = json.loads(thin.manifest)
    assert thin.media_type == manifest["mediaType"] == mediatypes.DOCKER_MANIFEST
    assert manifest["config"] == {"mediaType": mediatypes.DOCKER_CONFIG, "size": len(thin.blobs[thin.config_digest]),
                                  "digest": str(thin.config_digest)}
    [layer] = manifest["layers"]
    assert layer["mediaType"] == mediatypes.DOCKER_LAYER_GZIP
    assert layer["size"] == len(thin.blobs[thin.layer_digest]) and layer["digest"] == str(thin.layer_digest)
    assert all(Digest.of(blob) == digest for digest, blob in thin.blobs.items())
    assert list(thin.blobs) == [thin.layer_digest, thin.config_digest]
    assert thin.diff_id == Digest.of(gzip.decompress(thin.blobs[thin.layer_digest]))
    assert thin.manifest_digest == Digest.of(thin.manifest)
    assert isinstance(parse_manifest(thin.manifest), Manifest)


def test_a_different_repository_or_source_tag_gives_a_different_thin_image():
    base = build()
    assert build_thin_image(SOURCE, source_manifest(), source_config(), "other.cern.ch").manifest_digest != base.manifest_digest
    moved = SOURCE.with_tag("25.04")
    assert build_thin_image(moved, source_manifest(), source_config(), "unpacked.cern.ch").manifest_digest != base.manifest_digest


HUB = Reference.parse("https://registry.hub.docker.com/library/ubuntu:24.04")
LOCAL = Reference.parse("127.0.0.1:5000/team/img:v1")
PINNED_SRC = Reference.parse(f"ghcr.io/org/img:2@sha256:{'e' * 64}")


@pytest.mark.parametrize(
    ("output_format", "source", "expected"),
    [
        (DEFAULT_OUTPUT_FORMAT, HUB, "registry.hub.docker.com/library/ubuntu_thin:24.04"),
        ("", HUB, "registry.hub.docker.com/library/ubuntu_thin:24.04"),
        ("$(scheme)://registry.example.org/thin/$(image)", HUB, "registry.example.org/thin/library/ubuntu:24.04"),
        ("r.example.org/$(registry)/$(repository):$(tag)", HUB, "r.example.org/registry.hub.docker.com/library/ubuntu:24.04"),
        ("127.0.0.1:6000/thin/$(repository)", LOCAL, "127.0.0.1:6000/thin/team/img:latest"),
        ("ghcr.io/thin/$(repository)$(reference)", LOCAL, "ghcr.io/thin/team/img:v1"),
        ("ghcr.io/thin/$(image)", PINNED_SRC, "ghcr.io/thin/org/img:2"),
        ("ghcr.io/thin/$(repository):$(tag)-$(tag)", PINNED_SRC, "ghcr.io/thin/org/img:2-2"),
    ],
    ids=["default", "empty-means-default", "image", "registry-as-path", "no-tag-means-latest",
         "reference-of-a-tag", "image-prefers-the-tag", "variable-twice"],
)
def test_thin_reference_expands_duccs_variables(output_format, source, expected):
    assert str(thin_reference(output_format, source)) == expected


def test_the_scheme_variable_is_the_sources_or_https():
    assert thin_reference("$(scheme)://r.example.org/$(repository):x", HUB).scheme == "https"
    assert thin_reference("$(scheme)://r.example.org/$(repository):x", Reference.parse("http://127.0.0.1:5000/a:1")).scheme == "http"


@pytest.mark.parametrize(
    ("output_format", "source", "message"),
    [
        ("r.example.org/$(repo):$(tag)", HUB, r"unknown variable \$\(repo\)"),
        ("r.example.org/$():$(tag)", HUB, r"unknown variable \$\(\)"),
        (DEFAULT_OUTPUT_FORMAT, Reference.parse(f"ghcr.io/org/img@sha256:{'e' * 64}"), "invalid tag"),
        ("ghcr.io/thin/$(repository)$(reference)", PINNED_SRC, "cannot carry a digest"),
        ("Not A Name/$(tag)", HUB, "gives"),
        ("r.example.org/$(registry)/$(repository):$(tag)", LOCAL, "must be lowercase path components"),
    ],
    ids=["unknown-variable", "empty-variable", "digest-only-source-has-no-tag", "digest-in-name", "unparseable", "registry-port-in-path"],
)
def test_thin_reference_refuses_what_cannot_name_a_pushed_tag(output_format, source, message):
    with pytest.raises(WishlistError, match=message) as error:
        thin_reference(output_format, source)
    assert isinstance(error.value, ValueError)
