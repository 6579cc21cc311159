"""Thin images pushed to real registries (plain, htpasswd Basic, Bearer token), checked by skopeo
and umoci, with faults injected by the proxy in front of the registry."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ducc.errors import RegistryError, RegistryUnavailable
from ducc.model.manifest import ImageConfig, Manifest
from ducc.model.reference import Reference
from ducc.registry.auth import RegistryKeychain
from ducc.registry.client import RegistryClient, RetryPolicy
from ducc.registry.push import push_thin_image
from ducc.thin import DEFAULT_OUTPUT_FORMAT, ThinImage, build_thin_image, thin_reference
from tests.support.images import BuiltImage, File, ImageSpec, Layer, push_image
from tests.support.proxy import FaultProxy, via
from tests.support.trees import umoci_rootfs

REPO = "unpacked.cern.ch"
SOURCE = ImageSpec(
    layers=[Layer([File("etc/os-release", b"ID=base\n")]), Layer([File("app", os.urandom(2000))])],
    env=["PATH=/usr/bin:/bin", "LANG=C.UTF-8"], cmd=["/app", "--serve"], entrypoint=["/entry"],
)
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)




def converted(client: RegistryClient, source: Reference, spec: ImageSpec = SOURCE) -> tuple[BuiltImage, ThinImage]:
    """Push a source image and build its thin image from what the registry serves."""
    built = push_image(client, source, spec)
    return built, build_thin_image(source, *source_parts(client, source), REPO)


def past(proxy: FaultProxy, ref: Reference, registry) -> Reference:
    """The same reference straight at the registry: the proxy forwards one of several Accept headers,
    and skopeo sends several (the registry would then serve it a schema 1 conversion)."""
    assert ref.registry == proxy.host
    return Reference(registry.host, ref.repository, ref.tag, ref.digest)


def source_parts(client: RegistryClient, source: Reference) -> tuple[Manifest, ImageConfig]:
    manifest = client.get_manifest(source)
    assert isinstance(manifest, Manifest)
    return manifest, ImageConfig.parse(client.get_blob(source, manifest.config.digest))


def skopeo_inspect(ref: Reference, *extra: str) -> dict:
    done = subprocess.run(["skopeo", "inspect", "--tls-verify=false", *extra, f"docker://{ref}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_skopeo_sees_cvmfs_image_and_the_source_environment_and_command(client, unique_ref):
    source = unique_ref()
    _, thin = converted(client, source)
    target = thin_reference(DEFAULT_OUTPUT_FORMAT, source)
    pushed = push_thin_image(client, target, thin)
    assert pushed.changed and pushed.digest == thin.manifest_digest
    assert str(pushed) == f"{target}@{thin.manifest_digest}"
    seen = skopeo_inspect(target)
    assert seen["Digest"] == str(thin.manifest_digest)
    assert seen["Env"] == ["CVMFS_IMAGE=true", "PATH=/usr/bin:/bin", "LANG=C.UTF-8"]
    assert seen["Layers"] == [str(thin.layer_digest)]
    config = json.loads(subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--config", f"docker://{target}"],
        capture_output=True, text=True, check=True).stdout)
    assert config["config"]["Cmd"] == ["/app", "--serve"] and config["config"]["Entrypoint"] == ["/entry"]


def test_umoci_unpacks_a_root_holding_only_thin_json_listing_the_source_layers_in_order(client, unique_ref, tmp_path):
    source = unique_ref()
    built, thin = converted(client, source)
    target = thin_reference("$(scheme)://$(registry)/thin/$(image)", source)
    push_thin_image(client, target, thin)
    rootfs = umoci_rootfs(target.registry, target.repository, str(target.tag), tmp_path / "umoci")
    assert sorted(p.name for p in rootfs.iterdir()) == ["thin.json"]
    document = json.loads((rootfs / "thin.json").read_bytes())
    assert document["origin"] == f"https://{source}"
    assert document["layers"] == [
        {"digest": d.hex, "url": f"cvmfs://{REPO}/.layers/{d.hex[:2]}/{d.hex}/layerfs"} for d in built.layer_digests
    ]


def test_pushing_again_is_one_manifest_head_and_the_same_digest(client, unique_ref, proxy):
    source = unique_ref()
    _, thin = converted(client, source)
    target = via(proxy, thin_reference(DEFAULT_OUTPUT_FORMAT, source))
    first = push_thin_image(client, target, thin)
    assert set(first.uploaded) == set(thin.blobs)
    before = len(proxy.seen)
    again = push_thin_image(client, target, thin)
    assert [(s.method, "/manifests/" in s.path) for s in proxy.seen[before:]] == [("HEAD", True)]
    assert not again.changed and again.digest == first.digest


def test_blobs_the_repository_has_are_not_uploaded_when_only_the_tag_is_new(client, unique_ref, proxy):
    source = unique_ref()
    _, thin = converted(client, source)
    target = via(proxy, thin_reference(DEFAULT_OUTPUT_FORMAT, source))
    push_thin_image(client, target, thin)
    before = len(proxy.seen)
    other = push_thin_image(client, target.with_tag("other"), thin)
    assert set(other.present) == set(thin.blobs) and not other.uploaded
    assert [s.method for s in proxy.seen[before:]] == ["HEAD", "HEAD", "HEAD", "PUT"]  # tag, 2 blobs, manifest


def test_a_blob_in_another_repository_of_the_same_registry_is_mounted_not_uploaded(client, unique_ref, proxy, registry):
    source = unique_ref()
    _, thin = converted(client, source)
    first = via(proxy, thin_reference(DEFAULT_OUTPUT_FORMAT, source))
    push_thin_image(client, first, thin)
    elsewhere = Reference(proxy.host, first.repository + "-copy", "v1")
    before = len(proxy.seen)
    pushed = push_thin_image(client, elsewhere, thin, mount_from=first)
    assert set(pushed.mounted) == set(thin.blobs) and not pushed.uploaded
    later = proxy.seen[before:]
    assert sum("mount=" in s.path for s in later if s.method == "POST") == 2
    assert not [s for s in later if s.method in ("PATCH",) or (s.method == "PUT" and "/blobs/" in s.path)]
    assert skopeo_inspect(past(proxy, elsewhere, registry))["Digest"] == str(thin.manifest_digest)


def test_a_declined_mount_uploads_through_the_session_the_registry_opened(client, unique_ref, proxy):
    source = unique_ref()
    _, thin = converted(client, source)
    target = via(proxy, thin_reference(DEFAULT_OUTPUT_FORMAT, source))
    nowhere = Reference(proxy.host, "nobody/has-these", "x")
    pushed = push_thin_image(client, target, thin, mount_from=nowhere)
    assert set(pushed.uploaded) == set(thin.blobs)
    assert len(proxy.requests("POST", "/blobs/uploads/")) == 2  # one per blob: the mount attempt was the session


def test_large_blobs_go_up_in_patch_chunks_following_relative_locations(unique_ref, proxy):
    chunky = RegistryClient(retry=FAST, upload_chunk_size=4096)
    source = unique_ref()
    _, thin = converted(chunky, source)
    target = via(proxy, thin_reference(DEFAULT_OUTPUT_FORMAT, source))
    proxy.add("relative_location", "/blobs/uploads/", method=None, times=-1)
    push_thin_image(chunky, target, thin)
    layer = len(thin.blobs[thin.layer_digest])
    assert len(proxy.requests("PATCH", "/blobs/uploads/")) == -(-layer // 4096)
    assert chunky.get_blob(target, thin.layer_digest, limit=1 << 20) == thin.blobs[thin.layer_digest]


def test_a_413_to_a_whole_blob_is_retried_in_chunks(client, unique_ref, proxy):
    source = unique_ref()
    _, thin = converted(client, source)
    target = via(proxy, thin_reference(DEFAULT_OUTPUT_FORMAT, source))
    proxy.add("status", "/blobs/uploads/", method="PUT", status=413)
    assert push_thin_image(client, target, thin).changed
    assert len(proxy.requests("PATCH", "/blobs/uploads/")) == 1  # the refused blob, in one chunk, then its digest PUT
    assert client.get_blob(target, thin.layer_digest, limit=1 << 20) == thin.blobs[thin.layer_digest]


def test_a_chunk_the_registry_took_but_whose_answer_was_lost_is_not_sent_twice_into_the_blob(unique_ref, proxy,
                                                                                           registry):
    chunky = RegistryClient(retry=FAST, upload_chunk_size=4096)
    source = unique_ref()
    _, thin = converted(chunky, source)
    target = via(proxy, thin_reference(DEFAULT_OUTPUT_FORMAT, source))
    proxy.add("swallow", "/blobs/uploads/", method="PATCH", status=502)
    push_thin_image(chunky, target, thin)
    assert chunky.get_blob(target, thin.layer_digest, limit=1 << 20) == thin.blobs[thin.layer_digest]
    assert skopeo_inspect(past(proxy, target, registry))["Digest"] == str(thin.manifest_digest)


def test_a_chunk_out_of_step_restarts_the_upload_once(unique_ref, proxy):
    chunky = RegistryClient(retry=FAST, upload_chunk_size=4096)
    source = unique_ref()
    _, thin = converted(chunky, source)
    target = via(proxy, thin_reference(DEFAULT_OUTPUT_FORMAT, source))
    proxy.add("status", "/blobs/uploads/", method="PATCH", status=416)
    assert push_thin_image(chunky, target, thin).changed
    assert chunky.get_blob(target, thin.layer_digest, limit=1 << 20) == thin.blobs[thin.layer_digest]
    proxy.add("status", "/blobs/uploads/", method="PATCH", status=416, times=2)
    with pytest.raises(RegistryError, match="416"):
        push_thin_image(chunky, target.with_tag("again"), build_thin_image(
            source.with_tag("other"), *source_parts(chunky, source), REPO))


def test_a_basic_auth_registry_takes_the_push_with_explicit_output_credentials(auth_registry, auth_client, tmp_path):
    source = Reference.parse(f"{auth_registry.host}/team/thin-source:1")
    _, thin = converted(auth_client, source)
    target = thin_reference(DEFAULT_OUTPUT_FORMAT, source)
    pusher = RegistryClient(keychain=RegistryKeychain(auth_registry.host, "ducc", "s3cr3t-pw"), retry=FAST)
    push_thin_image(pusher, target, thin)
    seen = skopeo_inspect(target, "--creds", "ducc:s3cr3t-pw")
    assert "CVMFS_IMAGE=true" in seen["Env"]


@pytest.fixture
def token_proxy(token_registry):
    reg, _ = token_registry
    p = FaultProxy(reg.host)
    yield p
    p.stop()


def test_a_token_registry_grants_push_and_the_second_push_reuses_the_token(token_registry, token_proxy):
    reg, tokens = token_registry
    pusher = RegistryClient(keychain=RegistryKeychain(token_proxy.host, "ducc", "t0ken-pw"), retry=FAST)
    source = Reference.parse(f"{token_proxy.host}/team/thin-token:1")
    _, thin = converted(pusher, source)
    target = thin_reference(DEFAULT_OUTPUT_FORMAT, source)
    push_thin_image(pusher, target, thin)
    copy = Reference(target.registry, target.repository + "-mounted", "1")
    mounted = push_thin_image(pusher, copy, thin, mount_from=target)  # the token must cover both repositories
    assert set(mounted.mounted) == set(thin.blobs)
    before, asked = len(token_proxy.seen), len(tokens.requests)
    again = push_thin_image(pusher, target, thin)
    assert not again.changed
    assert [s.method for s in token_proxy.seen[before:]] == ["HEAD"] and len(tokens.requests) == asked
    seen = skopeo_inspect(past(token_proxy, target, reg), "--creds", "ducc:t0ken-pw")
    assert seen["Digest"] == str(thin.manifest_digest)


def test_after_a_manifest_put_that_failed_for_good_pushing_again_sends_only_the_manifest(client, unique_ref, proxy,
                                                                                         registry):
    """What the failed push tells and leaves (no tag) is in test_thin_refusals.py; here, the retry later."""
    source = unique_ref()
    _, thin = converted(client, source)
    target = via(proxy, thin_reference(DEFAULT_OUTPUT_FORMAT, source))
    rule = proxy.add("status", "/manifests/", method="PUT", status=503, times=-1)
    with pytest.raises(RegistryUnavailable):
        push_thin_image(RegistryClient(retry=FAST), target, thin)
    rule.times = 0
    before = len(proxy.seen)
    later = push_thin_image(client, target, thin)
    assert set(later.present) == set(thin.blobs)  # the blobs went up the first time; only the manifest is new
    assert [s.method for s in proxy.seen[before:]] == ["HEAD", "HEAD", "HEAD", "PUT"]
    assert client.manifest_digest(Reference(registry.host, target.repository, target.tag)) == thin.manifest_digest


def test_a_transient_503_on_a_blob_put_is_retried_and_the_push_completes(client, unique_ref, proxy, registry):
    source = unique_ref()
    _, thin = converted(client, source)
    target = via(proxy, thin_reference(DEFAULT_OUTPUT_FORMAT, source))
    proxy.add("status", "/blobs/uploads/", method="PUT", status=503, headers={"Retry-After": "0"})
    assert push_thin_image(client, target, thin).changed
    assert skopeo_inspect(past(proxy, target, registry))["Digest"] == str(thin.manifest_digest)
