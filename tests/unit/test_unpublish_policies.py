"""The pure parts of the unpublish policies and the scheduled gc: requests through the queue, which tags
left a wishlist, and beat's schedule."""

from __future__ import annotations

import json

import pytest

from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.model.request import ConversionRequest, UnpublishRequest, parse_request
from ducc.record import Record
from ducc.settings import Settings
from ducc.sync import removed_wishes
from ducc.wishlist import wishlist_origin
from tests.support.images import File, ImageSpec, Layer, build

AMD64, ARM64 = Platform.parse("linux/amd64"), Platform.parse("linux/arm64")
APP = Reference.parse("registry.example.org/team/app:1")


def test_an_unpublish_request_survives_the_queue_and_never_coalesces_with_a_conversion():
    request = UnpublishRequest(APP, ARM64, confirm=False, reason="left the wishlist")
    again = parse_request(json.loads(json.dumps(request.to_json())))
    assert again == request
    assert request.key != ConversionRequest(APP, ARM64).key
    assert parse_request(ConversionRequest(APP, origin="wishlist /etc/w.yaml").to_json()) == ConversionRequest(
        APP, origin="wishlist /etc/w.yaml")
    with pytest.raises(ValueError):
        parse_request({"action": "gc"})


def record(ref: Reference, platform: Platform, origin: str | None) -> Record:
    from ducc.model.manifest import ImageConfig, Manifest, parse_manifest

    built = build(ImageSpec(layers=[Layer([File("a", str(ref).encode())])]))
    manifest = parse_manifest(built.manifest)
    assert isinstance(manifest, Manifest)
    return Record.create(ref, platform, manifest.digest, manifest, ImageConfig.parse(built.config),
                         converted_at="2026-01-01T00:00:00+00:00", converted_by="test",
                         extra={"requested_by": origin} if origin else None)


def test_only_tags_this_wishlist_published_and_no_longer_asks_for_are_removed():
    ours = wishlist_origin("/etc/ducc/wishlist.yaml")
    kept, gone, gone_arm = APP.with_tag("1"), APP.with_tag("2"), APP.with_tag("3")
    published = [
        ("a", record(kept, AMD64, ours)),
        ("b", record(gone, AMD64, ours)),
        ("c", record(gone_arm, ARM64, ours)),
        ("c-again", record(gone_arm, ARM64, ours)),  # a second path to the same image: named once
        ("d", record(APP.with_tag("api"), AMD64, None)),  # converted on request, not by the wishlist
        ("e", record(APP.with_tag("other"), AMD64, wishlist_origin("/srv/another.yaml"))),
        ("f", None),  # a link without a record
    ]
    removed = removed_wishes(published, ours, [(kept, AMD64), (gone_arm, AMD64)])
    assert removed == [(gone, AMD64), (gone_arm, ARM64)]
    assert removed_wishes(published, ours, [(kept, AMD64), (gone, AMD64), (gone_arm, ARM64)]) == []


def test_beat_runs_gc_on_its_own_schedule():
    from ducc.service.broker import create_celery
    from ducc.service.queue import GC_TASK

    app = create_celery(Settings.from_env({"DUCC_GC_SCHEDULE": "15 5 * * 6"}), "redis://127.0.0.1:1/0")
    entry = app.conf.beat_schedule["garbage-collection"]
    assert entry["task"] == GC_TASK
    assert entry["schedule"].minute == {15} and entry["schedule"].hour == {5} and entry["schedule"].day_of_week == {6}
    with pytest.raises(ValueError, match="DUCC_GC_SCHEDULE"):
        create_celery(Settings.from_env({"DUCC_GC_SCHEDULE": "weekly"}), "redis://127.0.0.1:1/0")
