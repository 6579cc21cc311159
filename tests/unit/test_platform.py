"""The platform grammar (OCI image index ``platform``): every real value is accepted, nothing that could
name another directory or break a line is, wherever a platform comes from."""

import json

import pytest

from ducc import layout
from ducc.errors import InvalidManifest, InvalidPlatform
from ducc.model.manifest import Platform, parse_manifest
from ducc.model.request import ConversionRequest

HEX = "c" * 64

REAL = ["linux/amd64", "linux/arm64", "linux/arm64/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5", "linux/386",
        "linux/ppc64le", "linux/s390x", "linux/riscv64", "linux/mips64le", "linux/loong64", "linux/amd64/v3",
        "windows/amd64", "windows/arm64", "freebsd/amd64", "wasip1/wasm", "unknown/unknown"]


@pytest.mark.parametrize("text", REAL, ids=REAL)
def test_every_real_platform_is_accepted_and_keeps_its_spelling(text):
    assert str(Platform.parse(text)) == text


def test_a_platform_written_in_capitals_is_read_in_lowercase_as_containerd_does():
    assert Platform.parse("Linux/AMD64") == Platform("linux", "amd64")


HOSTILE = [
    ("linux/..", "architecture '..'"),
    ("linux/.", "architecture '.'"),
    ("../amd64", "os '..'"),
    ("linux/arm64/..", "variant '..'"),
    ("linux/.hidden", "architecture '.hidden'"),
    ("linux/am\x00d64", r"architecture 'am\x00d64'"),
    ("linux/amd64\x1b[2J", r"architecture 'amd64\x1b[2j'"),
    ("linux/am\u0085d64", r"architecture 'am\x85d64'"),
    ("linux/a md64", "architecture 'a md64'"),
    ("linux/a\tmd64", r"architecture 'a\tmd64'"),
    ("linux/" + "a" * 33, "architecture 'aaaa"),
    ("li-nux/amd64", "os 'li-nux'"),  # <os>-<arch> names a .multiarch directory: an os has no '-'
    ("linux/amd64/v8/x", "is not os/arch[/variant]"),
    ("linux//v8", "is not os/arch[/variant]"),
    ("linux", "is not os/arch[/variant]"),
]


@pytest.mark.parametrize("text,message", HOSTILE, ids=[h[0].encode("unicode_escape").decode() for h in HOSTILE])
def test_a_platform_outside_the_grammar_is_refused_with_its_value_escaped(text, message):
    with pytest.raises(InvalidPlatform) as refused:
        Platform.parse(text)
    line = str(refused.value)
    assert message in line and line.isprintable(), line
    assert len(line) < 200


def test_the_constructor_refuses_what_parse_would_so_no_entry_point_can_skip_it():
    with pytest.raises(InvalidPlatform, match="architecture '..'"):
        Platform("linux", "..")
    with pytest.raises(InvalidPlatform):
        Platform("linux", "AMD64")  # only parse and from_json lowercase
    with pytest.raises(InvalidPlatform):
        Platform("linux", "amd64", "")
    with pytest.raises(ValueError):  # a queued request that carries one never reaches a worker's paths
        ConversionRequest.from_json({"image": "reg.example.org/a/b:1", "platform": "linux/.."})


def test_no_valid_platform_leaves_the_multiarch_directory():
    for text in REAL:
        prefix = layout.platform_prefix(Platform.parse(text))
        assert prefix.parts in ((), (".multiarch", layout.platform_name(Platform.parse(text))))
        assert all(part not in (".", "..") and "/" not in part for part in prefix.parts)


def _index(*platforms: object) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{HEX}", "size": 1,
         "platform": platform} for platform in platforms]}).encode()


@pytest.mark.parametrize("platform", [
    {"os": "linux", "architecture": ".."},
    {"os": "linux", "architecture": "amd64", "variant": ".."},
    {"os": "linux", "architecture": "am\u0000d64"},
    {"os": "linux", "architecture": ["amd64"]},
    {"os": "linux", "architecture": 64},
], ids=["dotdot-arch", "dotdot-variant", "nul", "list", "number"])
def test_an_index_with_a_hostile_platform_entry_is_invalid_as_a_whole(platform):
    with pytest.raises(InvalidManifest, match="index entry 1: platform"):
        parse_manifest(_index({"os": "linux", "architecture": "amd64"}, platform))


def test_an_index_entry_without_os_and_architecture_is_kept_but_never_selected():
    index = parse_manifest(_index({"os": "linux", "architecture": "amd64"}, {}))
    assert [d.platform for d in index.manifests] == [Platform("linux", "amd64"), None]  # type: ignore[union-attr]


def test_index_entries_in_capitals_match_as_lowercase():
    index = parse_manifest(_index({"os": "Linux", "architecture": "AMD64"}))
    assert index.select(Platform("linux", "amd64")).digest.hex == HEX  # type: ignore[union-attr]
