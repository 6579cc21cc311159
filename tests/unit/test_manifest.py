import json
from pathlib import Path

import pytest

from ducc.errors import InvalidManifest, NoMatchingPlatform
from ducc.model.manifest import ImageConfig, Index, Manifest, Platform, parse_manifest

PAYLOADS = Path(__file__).resolve().parents[3] / "shared" / "reference" / "payloads"
HEX = "c" * 64


def _payload(name: str) -> bytes:
    path = PAYLOADS / name
    if not path.exists():
        pytest.skip(f"reference payload {path} not present on this machine")
    return path.read_bytes()


def test_the_spec_example_manifest_parses():
    manifest = parse_manifest(_payload("oci-manifest.json"))
    assert isinstance(manifest, Manifest)
    assert manifest.config.digest.hex.startswith("b5b2b2c5")
    assert [layer.size for layer in manifest.layers] == [32654]


def test_the_spec_example_index_selects_amd64_by_default():
    index = parse_manifest(_payload("oci-index.json"))
    assert isinstance(index, Index)
    assert index.select(Platform("linux", "amd64")).digest.hex.startswith("5b0bcabd")
    assert index.select(Platform.parse("linux/ppc64le")).digest.hex.startswith("e692418e")
    with pytest.raises(NoMatchingPlatform, match="ppc64le"):
        index.select(Platform.parse("linux/arm64"))


def test_the_spec_example_config_gives_env_entrypoint_and_diff_ids():
    config = ImageConfig.parse(_payload("oci-config.json"))
    assert config.entrypoint == ("/bin/my-app-binary",)
    assert config.cmd == ("--foreground", "--config", "/etc/my-app.d/default.cfg")
    assert config.user == "alice" and config.working_dir == "/home/alice"
    assert len(config.diff_ids) == 2


def test_duccs_go_struct_records_are_read_case_insensitively():
    record = json.dumps({
        "SchemaVersion": 2, "MediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "Config": {"MediaType": "application/vnd.docker.container.image.v1+json", "Size": 10, "Digest": f"sha256:{HEX}"},
        "Layers": [{"MediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "Size": 5, "Digest": f"sha256:{HEX}"}],
    }).encode()
    manifest = parse_manifest(record)
    assert isinstance(manifest, Manifest) and manifest.config.digest.hex == HEX and len(manifest.layers) == 1


def test_attestation_entries_never_match_a_platform():
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{HEX}", "size": 1,
         "platform": {"os": "unknown", "architecture": "unknown"}},
    ]}).encode()
    with pytest.raises(NoMatchingPlatform):
        parse_manifest(index).select(Platform("linux", "amd64"))  # type: ignore[union-attr]


@pytest.mark.parametrize("raw", [b"{", b"[]", b'{"schemaVersion": 1}', b'{"schemaVersion": 2, "mediaType": "text/plain"}',
                                 b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}'],
                         ids=["truncated", "not-object", "schema1", "unknown-type", "no-config"])
def test_broken_manifests_are_refused(raw):
    with pytest.raises(InvalidManifest):
        parse_manifest(raw)


def test_arm64_variant_v8_is_implied():
    assert Platform("linux", "arm64").matches(Platform.parse("linux/arm64/v8"))
    assert Platform("linux", "arm", "v7").matches(Platform.parse("linux/arm"))
    assert not Platform("linux", "arm", "v6").matches(Platform.parse("linux/arm/v7"))
