import pytest

from ducc.errors import InvalidDigest, InvalidReference
from ducc.model.digest import Digest
from ducc.model.reference import Reference

HEX = "a" * 64

PARSES = [
    ("ubuntu", "registry.hub.docker.com", "library/ubuntu", "latest", None),
    ("ubuntu:24.04", "registry.hub.docker.com", "library/ubuntu", "24.04", None),
    (f"library/ubuntu@sha256:{HEX}", "registry.hub.docker.com", "library/ubuntu", None, f"sha256:{HEX}"),
    ("ghcr.io/org/img:tag", "ghcr.io", "org/img", "tag", None),
    ("127.0.0.1:5000/team/img:tag", "127.0.0.1:5000", "team/img", "tag", None),
    ("https://registry.hub.docker.com/library/ubuntu:latest", "registry.hub.docker.com", "library/ubuntu", "latest", None),
    ("docker.io/ubuntu", "registry.hub.docker.com", "library/ubuntu", "latest", None),
    ("index.docker.io/atlas/athena:22.0", "registry.hub.docker.com", "atlas/athena", "22.0", None),
    ("localhost/img", "localhost", "img", "latest", None),
    ("localhost:5000/a/b/c:1", "localhost:5000", "a/b/c", "1", None),
    (f"reg.example.org:443/x/y:1@sha256:{HEX}", "reg.example.org:443", "x/y", "1", f"sha256:{HEX}"),
    ("user/repo", "registry.hub.docker.com", "user/repo", "latest", None),
    ("abc/d.e-f__g", "registry.hub.docker.com", "abc/d.e-f__g", "latest", None),
]


@pytest.mark.parametrize("text,registry,repository,tag,digest", PARSES, ids=[p[0][:40] for p in PARSES])
def test_every_accepted_form_parses_to_its_parts(text, registry, repository, tag, digest):
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag) == (registry, repository, tag)
    assert (str(ref.digest) if ref.digest else None) == digest


REJECTS = ["", "UPPER/case", "a//b", "img:bad tag", "img@sha256:short", "img@md5:" + "a" * 32, "-lead", "reg.io/", "img:" + "x" * 129]


@pytest.mark.parametrize("text", REJECTS, ids=REJECTS)
def test_malformed_references_are_refused_with_a_reason(text):
    with pytest.raises(InvalidReference):
        Reference.parse(text)


def test_docker_hub_uses_its_api_host_but_keeps_its_public_name():
    ref = Reference.parse("ubuntu:24.04")
    assert ref.api_host == "registry-1.docker.io"
    assert str(ref) == "registry.hub.docker.com/library/ubuntu:24.04"


def test_reference_prints_back_to_a_parseable_form():
    for text, *_ in PARSES:
        ref = Reference.parse(text)
        again = Reference.parse(str(ref))
        assert (again.registry, again.repository, again.tag, again.digest) == (ref.registry, ref.repository, ref.tag, ref.digest)


def test_digest_is_validated_and_sharded_by_two_hex_characters():
    digest = Digest.parse("sha256:" + "ab" * 32)
    assert digest.prefix == "ab" and digest.hex == "ab" * 32 and str(digest) == "sha256:" + "ab" * 32
    with pytest.raises(InvalidDigest):
        Digest.parse("sha256:" + "AB" * 32)
    with pytest.raises(InvalidDigest):
        Digest.parse("ab" * 32)
