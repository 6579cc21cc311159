"""Every OCI layer rule, applied by ducc and by umoci to the same image in a real registry:
the flat roots must agree entry by entry (type, permission bits, content hash, link target,
hardlink groups). ducc makes everything readable by all; umoci's modes are compared after the
same documented transformation. Device nodes and FIFOs are skipped by ducc (an unprivileged
writer cannot publish them) and left out of the comparison, which the test checks separately."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ducc import layout
from tests.support.images import (
    Device,
    Dir,
    Fifo,
    File,
    Hardlink,
    ImageSpec,
    Layer,
    Opaque,
    Symlink,
    Whiteout,
    push_image,
)
from tests.support.trees import hardlink_groups, snapshot, umoci_rootfs

BASE = Layer([
    Dir("etc"), File("etc/os-release", b"ID=ducc-test\n"), File("etc/shadow", b"secret\n", 0o600),
    Dir("var"), Dir("var/lib"), File("var/lib/a", b"a"), File("var/lib/b", b"b"),
    Dir("usr"), Dir("usr/lib"), File("usr/lib/libx.so", b"\x7fELF" + b"x" * 5000, 0o755),
    Symlink("lib", "usr/lib"), Dir("opt"), Dir("opt/tree"), File("opt/tree/leaf", b"leaf"),
    File("swap-me", b"file that becomes a dir"), Dir("dir-to-file"), File("dir-to-file/inner", b"i"),
    Dir("private", 0o700), File("private/key", b"k", 0o400),
])

RULES = {
    "whiteout_removes_a_lower_file": [BASE, Layer([Dir("etc"), Whiteout("etc/os-release")])],
    "whiteout_removes_a_lower_directory_tree": [BASE, Layer([Whiteout("opt/tree")])],
    "opaque_directory_hides_only_lower_children_then_readds": [
        BASE, Layer([Dir("var/lib"), Opaque("var/lib"), File("var/lib/c", b"new c"), File("var/lib/a", b"new a")])],
    "opaque_marker_applies_first_wherever_it_stands_in_the_tar": [
        BASE, Layer([Dir("var/lib"), File("var/lib/c", b"c"), Opaque("var/lib")])],
    "file_replaced_by_directory": [BASE, Layer([Dir("swap-me"), File("swap-me/now-a-dir", b"d")])],
    "directory_replaced_by_file": [BASE, Layer([Whiteout("dir-to-file"), File("dir-to-file", b"now a file")])],
    "symlink_replaced_by_real_directory": [BASE, Layer([Whiteout("lib"), Dir("lib"), File("lib/own", b"o")])],
    "hardlinks_within_a_layer_share_an_inode": [
        Layer([Dir("bin"), File("bin/tool", b"#!/bin/sh\n", 0o755), Hardlink("bin/tool-alias", "bin/tool"),
               Hardlink("bin/tool-alias2", "bin/tool")])],
    "hardlink_to_a_file_of_a_lower_layer": [BASE, Layer([Dir("etc"), Hardlink("etc/os-release-link", "etc/os-release")])],
    "hardlink_to_a_lower_file_replaced_in_between": [
        BASE, Layer([Dir("var/lib"), File("var/lib/a", b"replaced a")]), Layer([Hardlink("a-link", "var/lib/a")])],
    "symlinks_are_kept_verbatim_absolute_relative_and_dangling": [
        Layer([Symlink("abs", "/etc/passwd"), Symlink("rel", "../x/y"), Symlink("dangling", "nowhere"),
               Dir("d"), Symlink("d/up", "..")])],
    "zstd_layer": [BASE, Layer([File("zstd-file", b"z" * 10000)], compression="zstd")],
    "uncompressed_layer": [BASE, Layer([File("plain-file", b"p" * 10000)], compression="none")],
    "special_modes_setuid_setgid_sticky_and_restrictive": [
        Layer([Dir("tmp", 0o1777), File("suid", b"s", 0o4755), File("sgid", b"g", 0o2755), File("ro", b"r", 0o400),
               Dir("locked", 0o500), File("locked/inside", b"i", 0o600), File("exec-only", b"x", 0o711)])],
    "implicit_parent_directories": [Layer([File("deep/ly/nested/file", b"n")])],
    "same_path_twice_in_one_layer_the_later_wins": [Layer([File("twice", b"first"), File("twice", b"second", 0o600)])],
    "whiteout_then_readd_in_a_later_layer": [BASE, Layer([Whiteout("opt/tree")]), Layer([Dir("opt/tree"), File("opt/tree/new", b"n")])],
    "whiteout_of_a_missing_path_is_harmless": [BASE, Layer([Whiteout("never/existed"), Whiteout("nothing")])],
    "lower_directory_mode_changed_by_upper_entry": [BASE, Layer([Dir("opt", 0o750)])],
}


# What ducc adds to every flat root, as docs/design.md §6 (and the catalog marker of §4) names it: a fixed list, so the
# oracle is never told by the code under test what to ignore. An addition is ignored only where the image itself
# (as umoci unpacks it) does not have that path; where it does, the two trees must agree on it.
ADDITIONS = frozenset({
    layout.CATALOG, ".singularity.d", "singularity", "environment", ".run", ".exec", ".shell", ".test",
    "cvmfs", "dev", "proc", "sys", "tmp", "var", "var/tmp", "home", "root", "etc", "etc/hosts", "etc/resolv.conf",
})


def _is_addition(path: str) -> bool:
    return path in ADDITIONS or path.startswith(".singularity.d/")


def _convert_and_compare(spec: ImageSpec, converter, client, unique_ref, tmp_path: Path, special: set[str] = frozenset()):
    ref = unique_ref("rule")
    push_image(client, ref, spec)
    result = converter.convert(ref)
    assert result.state == "published"
    ours = converter.publisher.root / layout.tag_link(ref)
    zstd = any(layer.compression == "zstd" for layer in spec.layers)
    theirs = umoci_rootfs(ref.registry, ref.repository, ref.tag, tmp_path / "umoci", recompress=zstd)
    expected = {k: v for k, v in snapshot(theirs, normalise_modes=True).items() if k not in special}
    actual = {k: v for k, v in snapshot(ours.resolve()).items() if not (_is_addition(k) and k not in expected)}
    assert actual == expected
    assert hardlink_groups(ours.resolve(), skip=frozenset({".singularity.d"})) == hardlink_groups(theirs)
    return ref, result


@pytest.mark.parametrize("layers", list(RULES.values()), ids=list(RULES))
def test_flat_root_matches_umoci(layers, converter, client, unique_ref, tmp_path):
    _convert_and_compare(ImageSpec(layers=layers), converter, client, unique_ref, tmp_path)


def test_docker_schema2_media_types_match_umoci(converter, client, unique_ref, tmp_path):
    spec = ImageSpec(layers=RULES["whiteout_removes_a_lower_file"], docker=True)
    _convert_and_compare(spec, converter, client, unique_ref, tmp_path)


def test_fifos_and_device_nodes_are_skipped_and_reported(converter, client, unique_ref, tmp_path):
    spec = ImageSpec(layers=[Layer([File("keep", b"k"), Fifo("pipe"), Device("null", 1, 3)])])
    ref, result = _convert_and_compare(spec, converter, client, unique_ref, tmp_path, special={"pipe", "null"})
    assert sorted(result.skipped_entries) == ["null", "pipe"]


def test_layer_directories_keep_whiteout_markers_but_flat_roots_never_do(converter, client, unique_ref):
    ref = unique_ref()
    built = push_image(client, ref, ImageSpec(layers=[BASE, Layer([Dir("var/lib"), Opaque("var/lib"), Whiteout("etc/os-release")])]))
    converter.convert(ref)
    top = converter.publisher.root / layout.layerfs(built.layer_digests[1])
    assert (top / "var/lib/.wh..wh..opq").exists() and (top / "etc/.wh.os-release").exists()
    flat = converter.publisher.root / layout.flat_dir(built.config_digest)
    assert not [p for p in flat.rglob(".wh.*")]


def test_flat_files_are_hardlinks_of_the_layer_files(converter, client, unique_ref):
    ref = unique_ref()
    built = push_image(client, ref, ImageSpec(layers=[BASE]))
    converter.convert(ref)
    root = converter.publisher.root
    layer_file = root / layout.layerfs(built.layer_digests[0]) / "usr/lib/libx.so"
    flat_file = root / layout.flat_dir(built.config_digest) / "usr/lib/libx.so"
    assert os.path.samefile(layer_file, flat_file)
