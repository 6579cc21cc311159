"""Layers built to escape the root: each is refused with a clear error, nothing is written outside
the root, and nothing of the image becomes visible."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from ducc import layout
from ducc.errors import UnsafeLayer
from tests.support.images import Dir, File, Hardlink, ImageSpec, Layer, Raw, Symlink, push_image

HOSTILE = {
    "dotdot_in_a_name": [Layer([Raw("../escaped", content=b"x")])],
    "nested_dotdot": [Layer([Dir("a"), Raw("a/../../escaped", content=b"x")])],
    "absolute_name": [Layer([Raw("/tmp/ducc-escaped", content=b"x")])],
    "write_through_a_symlink_in_the_same_layer": [Layer([Symlink("evil", "OUTSIDE"), Raw("evil/planted", content=b"x")])],
    "write_through_a_symlink_to_a_relative_escape": [Layer([Symlink("evil", "../../../.."), Raw("evil/planted", content=b"x")])],
    "hardlink_through_a_symlink": [Layer([Symlink("evil", "OUTSIDE"), Hardlink("stolen", "evil/secret")])],
    "hardlink_out_of_the_root": [Layer([Raw("stolen", type=tarfile.LNKTYPE, linkname="../../secret")])],
    "hardlink_with_an_absolute_target": [Layer([Raw("stolen", type=tarfile.LNKTYPE, linkname="/etc/hostname")])],
    "hardlink_to_a_file_no_layer_has": [Layer([File("a", b"a")]), Layer([Hardlink("b", "does/not/exist")])],
}


@pytest.mark.parametrize("layers", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_layer_is_refused_and_writes_nothing_outside(layers, converter, client, unique_ref, tmp_path: Path):
    outside = tmp_path / "OUTSIDE"
    outside.mkdir()
    (outside / "secret").write_text("do not touch")
    root = converter.publisher.root
    # Relative symlink targets in the recipes resolve against the root's parent chain: point them at OUTSIDE.
    layers = [
        Layer([Symlink(e.path, str(outside)) if isinstance(e, Symlink) and e.target == "OUTSIDE" else e for e in layer.entries],
              layer.compression)
        for layer in layers
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=layers))
    with pytest.raises(UnsafeLayer) as error:
        converter.convert(ref)
    assert str(error.value)  # says which entry
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_text() == "do not touch"
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not Path("/tmp/ducc-escaped").exists()
    assert not (root / layout.tag_link(ref)).exists()
    assert not (root / layout.metadata_dir(ref)).exists()
    assert not (root / ".flat").exists()
    staging = root / layout.STAGING
    assert not [p for p in staging.iterdir() if p.is_dir()] if staging.exists() else True


def test_symlinks_pointing_anywhere_are_kept_but_never_followed(converter, client, unique_ref, tmp_path: Path):
    outside = tmp_path / "OUTSIDE"
    outside.mkdir()
    ref = unique_ref()
    push_image(client, ref, ImageSpec(layers=[
        Layer([Symlink("etc", str(outside))]),
        Layer([Dir("etc"), File("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")]),
    ]))
    converter.convert(ref)
    flat = (converter.publisher.root / layout.tag_link(ref)).resolve()
    assert (flat / "etc").is_dir() and not (flat / "etc").is_symlink()
    assert list(outside.iterdir()) == []


def test_a_hostile_layer_stops_its_siblings_and_none_of_them_is_published(client, unique_ref, proxy, root):
    from ducc.convert import Converter
    from ducc.publish.directory import DirectoryPublisher
    from tests.integration.test_convert import Watermark
    from tests.support.proxy import via

    ref = unique_ref()
    big = os.urandom(4 << 20)  # incompressible: 4 MiB at 64 KiB per 0.1 s takes six seconds to arrive
    built = push_image(client, ref, ImageSpec(layers=[Layer([File("base", b"base")]), Layer([File("big", big)]),
                                                      Layer([Raw("../escaped", content=b"x")])]))
    base, slow, hostile = built.layer_digests
    proxy.add("slow", f"/blobs/{slow}", keep_bytes=64 << 10)
    watermark = Watermark()
    converter = Converter(client, DirectoryPublisher(root), progress=watermark, parallel_layers=3)
    with pytest.raises(UnsafeLayer):
        converter.convert(via(proxy, ref))
    size = len(built.blobs[slow])
    print(f"read {watermark.read.get(slow, 0)} of {size} bytes of the sibling when the hostile layer was refused")
    assert watermark.read.get(slow, 0) < size / 2
    assert not (root / layout.layer_dir(base)).exists(), "a sibling of a refused layer was published"
    assert not (root / layout.layer_dir(slow)).exists()
    assert not (root / layout.layer_dir(hostile)).exists()
    staging = root / layout.STAGING
    assert not [p for p in staging.iterdir() if p.is_dir()] if staging.exists() else True
