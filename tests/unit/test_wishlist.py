import time
import tracemalloc
from pathlib import Path

import pytest

from ducc.errors import WishlistError
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.wishlist import MAX_BYTES, load, read, thin_name

DUCC_V1 = """
version: 1
user: cvmfsunpacker
cvmfs_repo: unpacked.cern.ch
output_format: '$(scheme)://registry.example.org/thin/$(image)'
input:
  - 'https://registry.hub.docker.com/library/ubuntu:24.04'
  - 'https://registry.hub.docker.com/atlas/analysisbase:21.2.*'
"""


def test_a_ducc_v1_wishlist_loads_unchanged():
    wishlist = load(DUCC_V1)
    assert wishlist.cvmfs_repo == "unpacked.cern.ch" and wishlist.user == "cvmfsunpacker"
    ubuntu, atlas = wishlist.wishes
    assert not ubuntu.is_pattern and atlas.is_pattern
    assert ubuntu.expand([]) == [Reference.parse("ubuntu:24.04")]
    assert atlas.platforms == (Platform("linux", "amd64"),)


GLOBS = [
    ("21.2.*", ["21.2.1", "21.2.10", "21.20.1", "21.2", "x21.2.1"], ["21.2.1", "21.2.10"]),
    ("v?", ["v1", "v10", "v"], ["v1"]),
    ("[0-9]*", ["1.0", "latest", "9"], ["1.0", "9"]),
    ("1.0", ["1.0", "1x0"], ["1.0"]),
    ("a.b*", ["a.b", "aXb", "a.bc"], ["a.b", "a.bc"]),
]


@pytest.mark.parametrize("pattern,tags,expected", GLOBS, ids=[g[0] for g in GLOBS])
def test_tag_globs_match_the_whole_tag_with_shell_semantics(pattern, tags, expected):
    wish = load(f"version: 1\ninput: ['reg.example.org/a/b:{pattern}']").wishes[0]
    assert [r.tag for r in wish.expand(tags)] == sorted(expected)


def test_extensions_platforms_and_exclusions():
    text = """
version: 1
platforms: [linux/amd64, linux/arm64]
input:
  - image: reg.example.org/a/b:1.*
    exclude: ['*-rc*']
  - image: reg.example.org/a/c:2
    platforms: [linux/arm64]
"""
    b, c = load(text).wishes
    assert [r.tag for r in b.expand(["1.0", "1.1-rc1", "2.0"])] == ["1.0"]
    assert len(b.platforms) == 2 and c.platforms == (Platform("linux", "arm64"),)


BAD = [
    ("version: 2\ninput: [a]", "version"),
    ("version: 1\ninput: []", "non-empty"),
    ("version: 1\ninput: ['UPPER/x']", "input #1"),
    ("version: 1\ninput: ['a/b:bad tag']", "input #1"),
    ("version: 1\ninput: [{image: a, colour: red}]", "unknown keys"),
    ("version: 1\ninput: [a]\nextra: 1", "unknown wishlist keys"),
    (": :", "YAML"),
    ("version: 1\nplatforms: [linux]\ninput: [a]", "os/arch"),
    ("version: 1\noutput_format: 'reg.example.org/$(nope)'\ninput: [a]", "unknown variable"),
    ("version: 1\noutput_format: [x]\ninput: [a]", "output_format must be a string"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[b[1] for b in BAD])
def test_invalid_wishlists_say_what_is_wrong(text, message):
    with pytest.raises(WishlistError, match=message):
        load(text)


def test_thin_names_substitute_duccs_variables():
    ref = Reference.parse("registry.hub.docker.com/library/ubuntu:24.04")
    assert thin_name("$(scheme)://registry.example.org/thin/$(image)", ref) == "https://registry.example.org/thin/library/ubuntu:24.04"
    assert thin_name("$(scheme)://$(registry)/$(repository)_thin:$(tag)", ref) == "https://registry.hub.docker.com/library/ubuntu_thin:24.04"
    with pytest.raises(WishlistError):
        thin_name("$(nope)", ref)


def test_without_output_format_no_image_asks_for_a_thin_image():
    wishlist = load("version: 1\nuser: cvmfsunpacker\ninput: ['ubuntu:24.04']")
    assert wishlist.output_format is None
    request = wishlist.request(Reference.parse("ubuntu:24.04"), Platform("linux", "amd64"))
    assert request.thin is None and request.thin_user is None


def test_with_output_format_every_image_asks_for_its_thin_image_pushed_as_the_recipe_user():
    wishlist = load(DUCC_V1)
    ubuntu = Reference.parse("https://registry.hub.docker.com/library/ubuntu:24.04")
    atlas = Reference.parse("https://registry.hub.docker.com/atlas/analysisbase:21.2.1")
    requests = [wishlist.request(ref, Platform("linux", "amd64")) for ref in (ubuntu, atlas)]
    assert [str(r.thin) for r in requests] == [
        "registry.example.org/thin/library/ubuntu:24.04", "registry.example.org/thin/atlas/analysisbase:21.2.1",
    ]
    assert {r.thin_user for r in requests} == {"cvmfsunpacker"}
    assert all(r.reference == ref for r, ref in zip(requests, (ubuntu, atlas), strict=True))


def test_a_thin_name_a_digest_only_input_cannot_have_is_an_error_of_that_image():
    wishlist = load("version: 1\noutput_format: 'reg.example.org/thin/$(repository):$(tag)'\ninput: [a]")
    pinned = Reference.parse("a@sha256:" + "a" * 64)
    with pytest.raises(WishlistError, match="output_format"):
        wishlist.request(pinned, Platform("linux", "amd64"))


def _bomb(levels: int = 9) -> str:
    """The billion laughs in a wishlist: each level a list of nine of the one before; some 340 bytes that
    PyYAML would expand into 9**9 strings (gigabytes once anything walks or prints them)."""
    names = "abcdefghijklmnopqrstuvwxyz"
    parts = ["&a [x,x,x,x,x,x,x,x,x]"]
    for before, name in zip(names, names[1:levels], strict=False):
        parts.append(f"&{name} [" + ",".join([f"*{before}"] * 9) + "]")
    return f"version: 1\nuser: [{', '.join(parts)}, *{names[levels - 1]}]\ninput: ['reg.example.org/a/b:1']\n"


def test_an_alias_bomb_is_refused_before_anything_expands_in_milliseconds_and_kilobytes():
    text = _bomb()
    assert len(text) < 500
    tracemalloc.start()
    started = time.process_time()
    try:
        with pytest.raises(WishlistError, match=r"line 2: YAML anchors and aliases \(&name, \*name\) are not allowed"):
            load(text)
        spent, (_, peak) = time.process_time() - started, tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert spent < 1.0 and peak < 1 << 20, (spent, peak)


@pytest.mark.parametrize("text", [
    "version: 1\ninput: [&one 'reg.example.org/a/b:1']\n",
    "version: 1\nplatforms: &p [linux/amd64]\ninput: [{image: 'reg.example.org/a/b:1', platforms: *p}]\n",
    "version: 1\ninput:\n  - reg.example.org/a/b:1\nlater: &x 1\n",
], ids=["anchor-alone", "anchor-and-alias", "anchor-on-an-unknown-key"])
def test_any_anchor_or_alias_is_refused_with_its_line(text):
    with pytest.raises(WishlistError, match=r"line \d: YAML anchors and aliases"):
        load(text)


@pytest.mark.parametrize("depth", [9, 100_000], ids=["just-too-deep", "deeper-than-python-recursion"])
def test_nesting_deeper_than_a_wishlist_needs_is_refused_in_one_line(depth):
    with pytest.raises(WishlistError) as refused:
        load("version: 1\ninput: " + "[" * depth + "]" * depth + "\n")
    assert "nest" in str(refused.value) and "\n" not in str(refused.value)


def test_the_deepest_wishlist_ducc_reads_still_loads():
    wishlist = load("version: 1\ninput:\n  - image: reg.example.org/a/b:1\n    platforms: [linux/arm64]\n")
    assert wishlist.wishes[0].platforms == (Platform("linux", "arm64"),)


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    huge = tmp_path / "wishlist.yaml"
    with open(huge, "wb") as file:  # sparse: its size is all there is to it
        file.truncate(MAX_BYTES + 1)
    started = time.monotonic()
    with pytest.raises(WishlistError, match=rf"wishlist {huge} is larger than a wishlist may be \(8.0 MiB\): 8.0 MiB"):
        read(huge)
    assert time.monotonic() - started < 0.5
    exact = tmp_path / "exact.yaml"  # the limit itself is allowed (a long comment: quick to parse)
    head = "version: 1\ninput: [reg.example.org/a/b:1]\n# "
    exact.write_text(head + "x" * (MAX_BYTES - len(head) - 1) + "\n")
    assert exact.stat().st_size == MAX_BYTES and len(read(exact).wishes) == 1


def test_a_stream_that_never_ends_is_cut_at_the_size_limit():
    with pytest.raises(WishlistError, match=r"larger than a wishlist may be \(8.0 MiB\): 8.0 MiB or more"):
        read(Path("/dev/zero"))


@pytest.mark.parametrize("content,message", [
    (b"version: 1\ninput: ['caf\xe9']\n", "not UTF-8 text"),
    (None, "No such file or directory"),
], ids=["latin-1", "missing"])
def test_an_unreadable_wishlist_file_is_named_with_the_reason(tmp_path, content, message):
    path = tmp_path / "wishlist.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WishlistError, match=f"cannot read wishlist {path}: {message}"):
        read(path)

def test_a_wishlists_thin_requests_carry_its_cvmfs_repo_through_the_queue():
    from ducc.model.request import ConversionRequest

    wishlist = load(DUCC_V1)
    request = wishlist.request(Reference.parse("ubuntu:24.04"), Platform("linux", "amd64"))
    assert request.thin_repo == "unpacked.cern.ch" and request.thin_user == "cvmfsunpacker"
    assert ConversionRequest.from_json(request.to_json()) == request
    plain = load("version: 1\ncvmfs_repo: unpacked.cern.ch\ninput: ['ubuntu:24.04']\n")
    assert plain.request(Reference.parse("ubuntu:24.04"), Platform("linux", "amd64")).thin_repo is None
