"""The podman store's pure part: whiteout plans, big-data file names, layer chains and index operations.
(That the ids and file names are podman's own is checked against the real podman in
tests/integration/test_podman_store.py.)"""

from __future__ import annotations

import base64
import json

import pytest

from ducc.model.digest import Digest
from ducc.model.manifest import ImageConfig, Manifest, parse_manifest
from ducc.publish.podman.metadata import (
    Indexes,
    big_data_file,
    entry_of,
    layer_ids,
    link_name,
    lower,
    timestamp,
    union,
)
from ducc.publish.podman.whiteout import plan_directory
from ducc.record import Record


@pytest.mark.parametrize(("names", "directories", "opaque", "devices", "opaque_children"), [
    (["a", "b"], [], False, (), set()),
    ([".wh.gone", "kept"], [], False, ("gone",), set()),
    ([".wh..wh..opq", "new"], [], True, (), set()),
    ([".wh.x", "x"], [], False, (), set()),  # the file itself hides the lower one
    ([".wh.d", "d"], ["d"], False, (), {"d"}),  # a directory that replaces the lower one
    ([".wh..wh..opq", ".wh.a", ".wh.b"], [], True, ("a", "b"), set()),
], ids=["no-whiteouts", "whiteout", "opaque", "whiteout-and-file", "whiteout-and-directory", "opaque-and-whiteouts"])
def test_a_directory_plan_turns_markers_into_overlay_whiteouts(names, directories, opaque, devices, opaque_children):
    plan = plan_directory(names, directories)
    assert (plan.opaque, plan.devices, set(plan.opaque_children)) == (opaque, devices, opaque_children)
    assert plan.markers == {n for n in names if n.startswith(".wh.")}


@pytest.mark.parametrize("key", ["manifest", "config.v1", "sha256:" + "a" * 64, "manifest-sha256:" + "b" * 64,
                                 "Manifest", "signature-1"], ids=str.lower)
def test_big_data_file_names_are_the_key_when_plain_else_its_base64(key):
    name = big_data_file(key)
    plain = all(c == "." or c.isdigit() or ("a" <= c <= "z") for c in key)
    assert name == key if plain else base64.b64decode(name[1:]).decode() == key and name[0] == "="


def test_layer_ids_start_at_the_base_diff_id_and_depend_on_every_layer_below():
    diffs = [Digest.of(bytes([i])) for i in range(3)]
    ids = layer_ids(diffs)
    assert ids[0] == diffs[0].hex
    assert len(set(ids)) == 3
    assert layer_ids(diffs[:2]) == ids[:2]  # an image on the same base shares its ids
    assert layer_ids([diffs[1], diffs[2]])[1] != ids[2]  # the same diff on another parent is another layer


def test_link_names_look_like_the_overlay_drivers_and_are_stable():
    name = link_name("f" * 64)
    assert len(name) == 26 and name.isalnum() and name.upper() == name
    assert link_name("f" * 64) == name != link_name("e" * 64)
    assert lower(["a" * 64, "b" * 64]) == f"l/{link_name('a' * 64)}:l/{link_name('b' * 64)}"


def test_times_are_rfc3339_utc():
    assert timestamp("2026-01-01T01:00:00+01:00") == "2026-01-01T00:00:00.000000Z"
    assert timestamp(None).startswith("1970-01-01T00:00:00")


def record(layers: list[bytes], created: str = "2026-01-01T00:00:00Z", *, config: bool = True) -> Record:
    diff_ids = [str(Digest.of(b"diff" + data)) for data in layers]
    raw_config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = parse_manifest(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(Digest.of(raw_config)),
                   "size": len(raw_config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": str(Digest.of(data)),
                    "size": len(data)} for data in layers],
    }).encode())
    assert isinstance(manifest, Manifest)
    details = {"converted_at": created}
    return Record(manifest, Digest.of(raw_config), None, details, raw_config if config else None)


def test_an_entry_holds_the_chain_the_top_layer_and_the_big_data():
    rec = record([b"base", b"top"])
    entry = entry_of("r.example/a:1", rec)
    config = ImageConfig.parse(rec.config or b"")
    assert [layer.id for layer in entry.layers] == list(layer_ids(config.diff_ids))
    assert entry.layers[1].parent == entry.layers[0].id and entry.layers[0].parent is None
    assert entry.image.layer == entry.layers[-1].id and entry.image.id == rec.config_digest.hex
    assert entry.files["manifest"] == rec.manifest.raw == entry.files[f"manifest-{rec.manifest.digest}"]
    assert entry.files[str(rec.config_digest)] == rec.config
    assert {b.key: b.digest for b in entry.image.big_data} == {k: Digest.of(v) for k, v in entry.files.items()}


def test_a_record_without_config_cannot_enter_the_store():
    with pytest.raises(ValueError, match="no image config"):
        entry_of("r.example/a:1", record([b"base"], config=False))


def test_a_name_moves_to_the_new_image_and_the_old_image_goes_with_its_own_layers():
    old, new = entry_of("r/a:1", record([b"base", b"old"])), entry_of("r/a:1", record([b"base", b"new"]))
    first = Indexes().with_entry(old)
    second = first.with_entry(new)
    assert list(second.images) == [new.image.id]
    assert set(second.layers) == {layer.id for layer in new.layers}
    middle = union(first, second)  # what layers.json holds while images.json changes
    assert set(middle.layers) == set(first.layers) | set(second.layers) and middle.images == second.images


def test_shared_layers_stay_while_an_image_uses_them():
    a, b = entry_of("r/a:1", record([b"base", b"a"])), entry_of("r/b:1", record([b"base", b"b"]))
    both = Indexes().with_entry(a).with_entry(b)
    assert len(both.layers) == 3
    only_b = both.without(["r/a:1"])
    assert set(only_b.layers) == {layer.id for layer in b.layers}
    assert both.keeping({"r/b:1"}) == only_b
    assert only_b.without(["r/b:1"]) == Indexes()


def test_the_same_image_under_two_names_is_one_entry_with_both():
    rec = record([b"base"])
    both = Indexes().with_entry(entry_of("r/a:1", rec)).with_entry(entry_of("r/a:2", rec))
    (image,) = both.images.values()
    assert image.names == ("r/a:1", "r/a:2")
    assert both.without(["r/a:1"]).images[image.id].names == ("r/a:2",)


def test_indexes_survive_their_json():
    indexes = Indexes().with_entry(entry_of("r/a:1", record([b"base", b"top"])))
    again = Indexes.parse(indexes.layers_json(), indexes.images_json())
    assert again == indexes
    assert Indexes.parse(None, b"") == Indexes()
    with pytest.raises(ValueError):
        Indexes.parse(b"{}", None)
