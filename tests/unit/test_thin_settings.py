"""Thin-image settings, request and record fields: what the worker needs to push, and what it remembers."""

from __future__ import annotations

import json

from ducc.errors import RegistryUnavailable, ThinImageNotPushed
from ducc.model.digest import Digest
from ducc.model.manifest import ImageConfig, Manifest, Platform, parse_manifest
from ducc.model.reference import Reference
from ducc.model.request import ConversionRequest, ConversionResult
from ducc.record import Record
from ducc.settings import Settings
from tests.support.images import File, ImageSpec, Layer, build

THIN = Reference.parse("registry.example.org/thin/app:1")


def test_output_registry_credentials_come_from_the_environment_and_never_show_in_the_settings_repr():
    settings = Settings.from_env({"DUCC_OUTPUT_REGISTRY_USER": "pusher", "DUCC_OUTPUT_REGISTRY_PASSWORD": "pw-123"})
    assert settings.thin.registry_user == "pusher" and settings.thin.registry_password == "pw-123"
    assert "pw-123" not in repr(settings)


def test_the_output_password_is_read_from_a_file_or_from_duccs_own_variable(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    assert Settings.from_env({"DUCC_OUTPUT_REGISTRY_PASSWORD_FILE": str(secret)}).thin.registry_password == "from-file"
    assert Settings.from_env({"DUCC_OUTPUT_REGISTRY_PASS": "ducc-name"}).thin.registry_password == "ducc-name"
    unset = Settings.from_env({})
    assert unset.thin.registry_user is None and unset.thin.registry_password is None


def test_a_request_keeps_its_thin_target_and_user_through_the_queue_and_they_do_not_split_coalescing():
    request = ConversionRequest(Reference.parse("ubuntu:24.04"), thin=THIN, thin_user="cvmfsunpacker")
    again = ConversionRequest.from_json(json.loads(json.dumps(request.to_json())))
    assert again == request
    assert request.key == ConversionRequest(Reference.parse("ubuntu:24.04")).key


def test_a_result_pins_its_thin_reference_to_the_digest_it_serves():
    digest = Digest.of(b"thin manifest")
    result = ConversionResult(ConversionRequest(Reference.parse("ubuntu:24.04"), thin=THIN), "published", "p",
                              thin_digest=digest, thin_pushed=True)
    assert str(result.thin) == f"{THIN}@{digest}"
    assert ConversionResult.from_json(json.loads(json.dumps(result.to_json()))) == result
    assert ConversionResult(ConversionRequest(Reference.parse("ubuntu:24.04")), "published", "p").thin is None


def test_a_record_with_its_thin_image_writes_both_into_ducc_json_and_reads_them_back():
    built = build(ImageSpec(layers=[Layer([File("x", b"x")])]))
    manifest = parse_manifest(built.manifest)
    assert isinstance(manifest, Manifest)
    record = Record.create(Reference.parse("ubuntu:24.04"), Platform("linux", "amd64"), manifest.digest, manifest,
                           ImageConfig.parse(built.config), converted_at="now", converted_by="test")
    assert record.thin_reference is None and record.thin_digest is None
    digest = Digest.of(b"thin manifest")
    files = record.with_thin(THIN, digest).files()
    details = json.loads(files["ducc.json"])
    assert details["thin_reference"] == str(THIN) and details["thin_digest"] == str(digest)
    again = Record.parse(files)
    assert again.thin_reference == str(THIN) and again.thin_digest == digest
    assert again.layers == record.layers  # nothing else changed


def test_a_thin_push_failure_says_the_image_is_published_and_keeps_whether_a_retry_may_help():
    temporary = ThinImageNotPushed.because(RegistryUnavailable("thin image x: 503", status=503))
    assert str(temporary) == "published, thin image not pushed: thin image x: 503" and temporary.temporary
    assert not ThinImageNotPushed("bad name").temporary
