"""The registry client against real registries: Basic auth, pagination, redirects, faults."""

from __future__ import annotations

import pytest

from ducc.errors import AuthenticationError, NotFound
from ducc.model.reference import Reference
from ducc.registry.client import RegistryClient, RetryPolicy
from tests.support.images import File, ImageSpec, Layer, push_image
from tests.support.proxy import FaultProxy, RecordingServer

SIMPLE = ImageSpec(layers=[Layer([File("hello", b"hello from a registry\n")])])


@pytest.fixture
def auth_proxy(auth_registry):
    proxy = FaultProxy(auth_registry.host)
    yield proxy
    proxy.stop()


def test_basic_auth_registry_needs_and_accepts_credentials(auth_registry, auth_client, converter_factory):
    ref = Reference.parse(f"{auth_registry.host}/team/private:1")
    push_image(auth_client, ref, SIMPLE)
    anonymous = RegistryClient(retry=RetryPolicy(attempts=1))
    with pytest.raises(AuthenticationError, match="credentials"):
        anonymous.resolve(ref)
    result = converter_factory(auth_client).convert(ref)
    assert result.state == "published"


@pytest.mark.parametrize("kind,told", [("basic", "401"), ("token", "token service")], ids=["basic", "token"])
def test_a_wrong_password_for_a_pull_is_an_authentication_error_that_names_no_secret(auth_registry, token_registry,
                                                                                     kind, told):
    """Basic auth (htpasswd) answers 401; in Bearer-token mode the token service refuses the credentials."""
    from ducc.registry.auth import Credentials, StaticKeychain

    host, good = (auth_registry.host, "s3cr3t-pw") if kind == "basic" else (token_registry[0].host, "t0ken-pw")
    client = RegistryClient(keychain=StaticKeychain({host: Credentials("ducc", "wrong-pw")}), retry=RetryPolicy(attempts=1))
    with pytest.raises(AuthenticationError) as error:
        client.resolve(Reference.parse(f"{host}/team/private:1"))
    assert told in str(error.value), str(error.value)
    assert "wrong-pw" not in str(error.value) and good not in str(error.value) and "s3cr3t" not in str(error.value)


def test_tag_listing_follows_link_pagination(client, unique_ref, registry):
    ref = unique_ref("t0")
    built = push_image(client, ref, SIMPLE)
    tags = [f"t{i}" for i in range(1, 7)]
    for tag in tags:
        client.push_manifest(ref.with_tag(tag), built.manifest, built.manifest_media_type)
    proxy = FaultProxy(registry.host)
    try:
        through = Reference(proxy.host, ref.repository, "t0")
        proxy.add("paginate", "/tags/list", times=-1, keep_bytes=2)
        assert sorted(client.list_tags(through)) == sorted(["t0", *tags])
        assert len(proxy.requests("GET", "/tags/list")) == 4  # 7 tags in pages of 2
    finally:
        proxy.stop()


def test_missing_manifest_is_not_found(client, unique_ref):
    with pytest.raises(NotFound):
        client.resolve(unique_ref("never-pushed"))


def test_503s_then_success_is_retried(client, unique_ref, registry, converter_factory):
    ref = unique_ref()
    push_image(client, ref, SIMPLE)
    proxy = FaultProxy(registry.host)
    try:
        proxy.add("status", "/manifests/", method=None, times=2, status=503)
        proxy.add("status", "/blobs/sha256", times=2, status=502)
        result = converter_factory(client).convert(Reference(proxy.host, ref.repository, ref.tag))
        assert result.state == "published"
        assert len(proxy.requests(None, "/manifests/")) >= 3
    finally:
        proxy.stop()


def test_429_retry_after_is_honoured(unique_ref, registry, client):
    ref = unique_ref()
    push_image(client, ref, SIMPLE)
    proxy = FaultProxy(registry.host)
    slept: list[float] = []
    patient = RegistryClient(retry=RetryPolicy(attempts=3, base_delay=0.01), sleep=slept.append)
    try:
        proxy.add("status", "/manifests/", method=None, times=1, status=429, headers={"Retry-After": "7"})
        patient.resolve(Reference(proxy.host, ref.repository, ref.tag))
        assert slept == [7.0]
    finally:
        proxy.stop()


def test_outage_longer_than_the_retries_is_a_temporary_error(unique_ref, registry, client):
    from ducc.errors import RegistryUnavailable

    ref = unique_ref()
    proxy = FaultProxy(registry.host)
    try:
        proxy.add("status", "/manifests/", method=None, times=-1, status=503)
        with pytest.raises(RegistryUnavailable) as error:
            client.resolve(Reference(proxy.host, ref.repository, ref.tag))
        assert error.value.temporary and "503" in str(error.value)
    finally:
        proxy.stop()


def test_blob_redirect_to_another_host_does_not_leak_authorization(auth_registry, auth_client, auth_proxy, converter_factory):
    ref = Reference.parse(f"{auth_registry.host}/team/redirected:1")
    push_image(auth_client, ref, ImageSpec(layers=[Layer([File("x", b"redirected layer")])]))
    storage = RecordingServer(auth_registry.host)
    import base64

    storage.upstream_auth = "Basic " + base64.b64encode(b"ducc:s3cr3t-pw").decode()
    try:
        # "localhost" is another host name than the proxy's 127.0.0.1: requests must drop Authorization.
        auth_proxy.add("redirect", r"/blobs/sha256:", times=-1,
                       location=lambda path: f"http://localhost:{storage.port}{path}")
        from ducc.registry.auth import Credentials, StaticKeychain

        client = RegistryClient(keychain=StaticKeychain({auth_proxy.host: Credentials("ducc", "s3cr3t-pw")}),
                                retry=RetryPolicy(attempts=2, base_delay=0.01))
        result = converter_factory(client).convert(Reference(auth_proxy.host, ref.repository, ref.tag))
        assert result.state == "published"
        assert storage.seen, "the blob was not fetched through the redirect"
        assert all("Authorization" not in headers for headers in storage.seen)
        assert any("Authorization" in s.headers for s in auth_proxy.requests("GET", "/manifests/"))
    finally:
        storage.stop()


def test_bearer_token_auth_with_credentials_pulls_and_pushes(token_registry, converter_factory, caplog):
    from ducc.registry.auth import Credentials, StaticKeychain

    registry, tokens = token_registry
    client = RegistryClient(keychain=StaticKeychain({registry.host: Credentials("ducc", "t0ken-pw")}),
                            retry=RetryPolicy(attempts=2, base_delay=0.01))
    ref = Reference.parse(f"{registry.host}/team/tokened:1")
    push_image(client, ref, SIMPLE)
    assert converter_factory(client).convert(ref).state == "published"
    assert tokens.requests and all(h.get("Authorization", "").startswith("Basic ") for h in tokens.requests)
    assert "t0ken-pw" not in caplog.text


def test_bearer_token_anonymous_pull_of_a_public_repository(token_registry, converter_factory):
    from ducc.registry.auth import Credentials, StaticKeychain

    registry, _ = token_registry
    pusher = RegistryClient(keychain=StaticKeychain({registry.host: Credentials("ducc", "t0ken-pw")}))
    public = Reference.parse(f"{registry.host}/public/open:1")
    private = Reference.parse(f"{registry.host}/team/closed:1")
    push_image(pusher, public, SIMPLE)
    push_image(pusher, private, SIMPLE)
    anonymous = RegistryClient(retry=RetryPolicy(attempts=1))
    assert converter_factory(anonymous).convert(public).state == "published"
    with pytest.raises(AuthenticationError):
        anonymous.resolve(private)


def test_plain_http_only_for_loopback_and_listed_registries():
    client = RegistryClient(insecure=["registry.lan:5000"])
    assert client.base_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert client.base_url("localhost:5000") == "http://localhost:5000"
    assert client.base_url("[::1]:5000") == "http://[::1]:5000"
    assert client.base_url("registry.lan:5000") == "http://registry.lan:5000"
    assert client.base_url("ghcr.io") == "https://ghcr.io"
    assert client.base_url("127.0.0.1.example.org") == "https://127.0.0.1.example.org"


def test_a_registry_that_cannot_be_reached_is_named_with_the_reason_and_the_attempts(unique_ref, proxy):
    """What a user reads instead of requests' ``HTTPConnectionPool(...): Max retries exceeded``."""
    from ducc.errors import RegistryUnavailable
    from tests.support.processes import free_port

    client = RegistryClient(retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02))
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(RegistryUnavailable) as refused:
        client.resolve(Reference.parse(f"{nobody}/team/app:1"))
    assert str(refused.value) == f"manifest of {nobody}/team/app:1: registry {nobody} unreachable: connection refused (3 attempts)"
    with pytest.raises(RegistryUnavailable) as unresolved:
        client.resolve(Reference.parse("registry.does-not-exist.invalid/team/app:1"))
    assert "registry registry.does-not-exist.invalid unreachable: name does not resolve (3 attempts)" in str(unresolved.value)
    proxy.add("status", "/v2/", method=None, times=-1, status=503)
    with pytest.raises(RegistryUnavailable) as overloaded:
        client.resolve(Reference(proxy.host, unique_ref().repository, "v1"))
    assert str(overloaded.value).endswith(f"registry {proxy.host} answered HTTP 503 (3 attempts)")
    assert overloaded.value.temporary and overloaded.value.status == 503


def test_a_blob_larger_than_any_bounded_answer_is_found_present_by_its_head(client, unique_ref):
    """A HEAD's Content-Length is the blob's size, not a body ducc reads: a blob of 2 MiB (more than a
    token or error answer may be) pushed a second time is found present with one HEAD, not refused."""
    import os

    from ducc.model.digest import Digest

    ref = unique_ref("big")
    data = os.urandom(2 << 20)
    digest = Digest.of(data)
    assert client.blob_exists(ref, digest) is False
    assert client.push_blob(ref, digest, data) != "present"
    assert client.blob_exists(ref, digest) is True
    assert client.push_blob(ref, digest, data) == "present"
