"""Only a clean 404 of the manifest means a tag is gone: a real registry, faults injected by the proxy in front
of it (tests/support/proxy.py), a real directory root."""

from __future__ import annotations

import pytest
import requests

from ducc import layout
from ducc.convert import Converter
from ducc.errors import DuccError
from ducc.model.manifest import DEFAULT_PLATFORM
from ducc.publish.directory import DirectoryPublisher
from ducc.registry.client import RegistryClient, RetryPolicy
from ducc.unpublish import unpublish_if_gone
from tests.support.images import File, ImageSpec, Layer, push_image
from tests.support.proxy import via

FAULTS = {
    "503": ({"action": "status", "status": 503}, True),
    "500": ({"action": "status", "status": 500}, True),
    "429": ({"action": "status", "status": 429, "headers": {"Retry-After": "0"}}, True),
    "timeout": ({"action": "stall", "seconds": 2.0}, True),
    "403": ({"action": "status", "status": 403}, False),
}


@pytest.fixture
def patient_client() -> RegistryClient:
    """Retries quickly, and gives up on an answer after half a second (the proxy stalls for two)."""
    return RegistryClient(retry=RetryPolicy(attempts=2, base_delay=0.05, max_delay=0.1), timeout=(5.0, 0.5))


def published_through(proxy, client, unique_ref, root):  # type: ignore[no-untyped-def]
    ref = via(proxy, unique_ref())
    built = push_image(client, ref, ImageSpec(layers=[Layer([File("a", b"still here")])]))
    publisher = DirectoryPublisher(root)
    Converter(client, publisher).convert(ref)
    return ref, built, publisher


@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
def test_a_registry_error_or_timeout_never_unpublishes(fault, proxy, client, patient_client, unique_ref, root):
    ref, _, publisher = published_through(proxy, client, unique_ref, root)
    rule, temporary = FAULTS[fault]
    options = {k: v for k, v in rule.items() if k != "action"}
    proxy.add(rule["action"], r"/manifests/", method="HEAD", times=-1, **options)
    with pytest.raises(DuccError) as error:
        unpublish_if_gone(patient_client, publisher, ref, DEFAULT_PLATFORM)
    assert error.value.temporary is temporary
    assert proxy.requests("HEAD", "/manifests/")
    assert publisher.read_record(ref, DEFAULT_PLATFORM) is not None
    assert (root / layout.tag_link(ref) / "a").read_bytes() == b"still here"


def test_a_tag_the_registry_still_serves_is_kept(proxy, client, unique_ref, root):
    ref, built, publisher = published_through(proxy, client, unique_ref, root)
    done = unpublish_if_gone(client, publisher, ref, DEFAULT_PLATFORM)
    assert done.outcome == "kept" and done.served == built.digest
    assert (root / layout.tag_link(ref)).is_symlink()


def test_a_clean_404_unpublishes_the_link_and_the_record(proxy, client, unique_ref, root, registry):
    ref, built, publisher = published_through(proxy, client, unique_ref, root)
    deleted = requests.delete(f"{registry.url}/v2/{ref.repository}/manifests/{built.digest}", timeout=10)
    assert deleted.status_code == 202
    done = unpublish_if_gone(client, publisher, ref, DEFAULT_PLATFORM)
    assert done.outcome == "unpublished"
    assert publisher.read_record(ref, DEFAULT_PLATFORM) is None
    assert not (root / layout.tag_link(ref)).is_symlink()
    assert publisher.has_flat(built.config_digest)  # the flat root waits for gc and its grace
    assert unpublish_if_gone(client, publisher, ref, DEFAULT_PLATFORM).outcome == "not published"
