"""Admission policies (``ducc.admission``) judge an image from its manifest and config alone: table-driven
over real images built by the image factory, no registry, no files."""

from __future__ import annotations

import pickle

import pytest

from ducc.admission import MaxDeclaredBytes, MaxLayers, Policy, admit
from ducc.errors import ImageRefused
from ducc.model.image import Image
from ducc.model.manifest import DEFAULT_PLATFORM, ImageConfig, Manifest, parse_manifest
from ducc.model.reference import Reference
from ducc.settings import Settings
from tests.support.images import File, ImageSpec, Layer, build

REF = Reference.parse("registry.example.org/team/app:1")


def image(*sizes: int, repeat_base: bool = False) -> Image:
    """An image whose layers hold one file of each of ``sizes`` bytes (their blobs a little more)."""
    layers = [Layer([File(f"f{i}", bytes(i % 251 for i in range(size)))]) for i, size in enumerate(sizes)]
    if repeat_base:
        layers.append(layers[0])
    built = build(ImageSpec(layers=layers))
    manifest = parse_manifest(built.manifest, built.manifest_media_type)
    assert isinstance(manifest, Manifest)
    return Image(REF, DEFAULT_PLATFORM, manifest.digest, manifest, ImageConfig.parse(built.config))


def test_declared_bytes_count_a_layer_listed_twice_once():
    twice = image(1000, 2000, repeat_base=True)
    sizes = {d.digest: d.size for d in twice.manifest.layers}
    assert len(twice.manifest.layers) == 3 and len(sizes) == 2
    assert twice.declared_bytes == sum(sizes.values())


@pytest.mark.parametrize(("policy", "sizes", "refusal"), [
    (MaxLayers(2), (10, 10), None),
    (MaxLayers(2), (10, 10, 10), "refused by DUCC_MAX_LAYERS=2: its manifest lists 3 layers"),
    (MaxDeclaredBytes(1 << 20), (10, 10), None),
    (MaxDeclaredBytes(100), (10, 10), "refused by DUCC_MAX_COMPRESSED_BYTES=100: its layers are {declared} "
                                      "compressed bytes"),
], ids=["layers-within", "layers-over", "bytes-within", "bytes-over"])
def test_a_policy_admits_an_image_within_its_limit_and_refuses_one_over_it_naming_itself(
    policy: Policy, sizes: tuple[int, ...], refusal: str | None
):
    judged = image(*sizes)
    if refusal is None:
        policy.admit(judged)
        return
    with pytest.raises(ImageRefused) as caught:
        policy.admit(judged)
    assert str(caught.value) == f"{REF}: " + refusal.format(declared=judged.declared_bytes)
    assert not caught.value.temporary and caught.value.policy.startswith("DUCC_MAX_")


def test_the_first_refusing_policy_stops_the_rest_and_the_refusal_survives_pickling():
    seen: list[str] = []

    class Watch:
        def admit(self, image: Image) -> None:
            seen.append(str(image.reference))

    with pytest.raises(ImageRefused) as caught:
        admit([Watch(), MaxLayers(1), Watch()], image(10, 10))
    assert seen == [str(REF)]
    again = pickle.loads(pickle.dumps(caught.value))  # a worker's error crosses process boundaries
    assert (str(again), again.policy, again.why) == (str(caught.value), "DUCC_MAX_LAYERS=1",
                                                     "its manifest lists 2 layers")


def test_settings_read_the_admission_limits_and_leave_them_off_by_default():
    assert (Settings.from_env({}).limits.max_layers, Settings.from_env({}).limits.max_compressed_bytes) == (None, None)
    chosen = Settings.from_env({"DUCC_MAX_LAYERS": "40", "DUCC_MAX_COMPRESSED_BYTES": "1000000"})
    assert (chosen.limits.max_layers, chosen.limits.max_compressed_bytes) == (40, 1_000_000)
    with pytest.raises(ValueError, match="DUCC_MAX_LAYERS must be at least 1, not 0"):
        Settings.from_env({"DUCC_MAX_LAYERS": "0"})
