"""A thin image's registry refusing the push, each behaviour one test, observed at every layer that reports
it: the push itself (``push_thin_image``: the error raised), ``ducc convert --thin`` (its exit status and
stderr) and a service job (``ducc worker`` on a real Redis: the job's state and error). Real registries
(plain, htpasswd Basic, Bearer token) with the fault proxy in front; skopeo checks what was pushed."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from ducc import layout
from ducc.errors import AuthenticationError, RegistryError, RegistryUnavailable
from ducc.model.reference import Reference
from ducc.model.request import ConversionRequest
from ducc.registry.auth import RegistryKeychain
from ducc.registry.client import RegistryClient
from ducc.registry.push import push_thin_image
from ducc.service.jobs import JobStore
from tests.integration.test_cli import ducc
from tests.integration.test_service import queue_for, service, wait_finished  # noqa: F401  (a fixture)
from tests.integration.test_thin_convert import skopeo, thin_line
from tests.integration.test_thin_push import FAST, converted
from tests.support.images import File, ImageSpec, Layer, push_image
from tests.support.proxy import via

REPO = "unpacked.example.org"
SOURCE = ImageSpec(layers=[Layer([File("etc/os-release", b"ID=thin-refused\n")]), Layer([File("app", b"v1")])],
                   env=["PATH=/usr/bin:/bin"], cmd=["/app"])
LAYERS = ["push", "convert", "job"]


@dataclass(frozen=True)
class Refused:
    """What one layer told about a push that did not happen; None where the layer does not tell it."""

    text: str  # the error, stderr or job error the user reads
    shown: str  # everything the layer showed (stdout too, the job's whole record): no password may be in it
    error: RegistryError | None = None  # the push raised it
    temporary: bool | None = None  # the push's error, or the job, says whether it is worth retrying
    attempts: int | None = None  # the job's


@dataclass
class Attempt:
    """One thin push of ``source`` to ``target``, through one layer; ``env`` carries the output credentials."""

    request: pytest.FixtureRequest
    client: RegistryClient
    source: Reference
    target: Reference
    env: dict[str, str]

    def through(self, layer: str) -> Refused:
        return {"push": self.push, "convert": self.convert, "job": self.job}[layer]()

    def push(self) -> Refused:
        _, thin = converted(self.client, self.source, SOURCE)
        user, password = self.env.get("DUCC_OUTPUT_REGISTRY_USER"), self.env.get("DUCC_OUTPUT_REGISTRY_PASSWORD")
        pusher = RegistryClient(keychain=RegistryKeychain(self.target.registry, user, password), retry=FAST) \
            if user and password else self.client
        with pytest.raises(RegistryError) as error:
            push_thin_image(pusher, self.target, thin)
        return Refused(str(error.value), str(error.value), error.value, error.value.temporary)

    def convert(self) -> Refused:
        push_image(self.client, self.source, SOURCE)
        root = self.request.getfixturevalue("root")
        done = ducc("convert", str(self.source), "--thin", str(self.target), root=root, env=self.env)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "published, thin image not pushed:" in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert published(root, self.source)  # the flat root stays published
        info = json.loads(ducc("inspect", str(self.source), root=root).stdout)
        assert info["thin_reference"] is None and info["thin_digest"] is None
        return Refused(done.stderr, done.stdout + done.stderr)

    def job(self) -> Refused:
        push_image(self.client, self.source, SOURCE)
        root, redis_server = self.request.getfixturevalue("root"), self.request.getfixturevalue("redis_server")
        self.request.getfixturevalue("service")(**self.env, DUCC_JOB_RETRY_BASE="1", DUCC_JOB_MAX_ATTEMPTS="2")
        job_id = queue_for(redis_server, root).submit(ConversionRequest(self.source, thin=self.target), "test").job_id
        (job,) = wait_finished(JobStore(redis_server.client()), [job_id], timeout=180)
        assert job.state == "failed", job.error
        assert job.error.startswith(f"published, thin image not pushed: thin image {self.target}"), job.error
        assert published(root, self.source)  # the flat root stays published
        return Refused(job.error, json.dumps(job.to_json()), temporary=job.temporary, attempts=job.attempts)


def published(root, ref: Reference) -> bool:
    return (root / layout.tag_link(ref) / "etc" / "os-release").read_bytes() == b"ID=thin-refused\n"


@pytest.fixture
def attempt(client, unique_ref, tmp_path, request) -> Callable[[Reference, dict[str, str]], Attempt]:
    """An ``Attempt`` for a fresh source image in the session registry, pushing its thin image to ``target``."""

    def make(target: Reference, env: dict[str, str]) -> Attempt:
        full = {"DUCC_THIN_CVMFS_REPO": REPO, "DOCKER_CONFIG": str(tmp_path), "DUCC_RETRY_ATTEMPTS": "1", **env}
        return Attempt(request, client, unique_ref(), target, full)

    return make


def wrong_password(attempt, auth_registry, token_registry, kind: str, layer: str) -> tuple[Attempt, str]:
    """An attempt to push to the ``kind`` registry with a wrong password; also the right one."""
    host, good = (auth_registry.host, "s3cr3t-pw") if kind == "basic" else (token_registry[0].host, "t0ken-pw")
    target = Reference(host, f"thin/wrong-pw-{kind}-{layer}", "v1")
    return attempt(target, {"DUCC_OUTPUT_REGISTRY_USER": "ducc", "DUCC_OUTPUT_REGISTRY_PASSWORD": "not-the-pw"}), good


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("kind", ["basic", "token"])
def test_a_wrong_password_fails_the_thin_push_for_good_naming_the_target_and_no_secret(
    attempt, auth_registry, token_registry, kind, layer
):
    tried, good = wrong_password(attempt, auth_registry, token_registry, kind, layer)
    refused = tried.through(layer)
    assert str(tried.target) in refused.text and "401" in refused.text, refused.text
    assert "not-the-pw" not in refused.shown and good not in refused.shown
    assert refused.error is None or isinstance(refused.error, AuthenticationError)
    assert refused.temporary in (False, None) and refused.attempts in (1, None)  # never retried
    right = RegistryClient(keychain=RegistryKeychain(tried.target.registry, "ducc", good), retry=FAST)
    assert right.manifest_digest(tried.target) is None


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_after_a_wrong_password_the_right_one_pushes_only_the_thin_image(
    attempt, auth_registry, token_registry, root, tmp_path, kind
):
    tried, good = wrong_password(attempt, auth_registry, token_registry, kind, "later")
    tried.convert()
    secret = tmp_path / "output-password"
    secret.write_text(good + "\n")
    fixed = {**tried.env, "DUCC_OUTPUT_REGISTRY_PASSWORD": "", "DUCC_OUTPUT_REGISTRY_PASSWORD_FILE": str(secret)}
    later = ducc("convert", str(tried.source), "--thin", str(tried.target), root=root, env=fixed)
    assert later.returncode == 0, later.stderr
    assert later.stdout.startswith("unchanged\t")  # the image was current: only the thin image went up
    pinned = thin_line(later.stdout)
    seen = skopeo("inspect", "--tls-verify=false", "--creds", f"ducc:{good}", f"docker://{tried.target}")
    assert seen["Digest"] == str(pinned.digest) and "CVMFS_IMAGE=true" in seen["Env"]


FAULTS = [  # id, proxy rule, what the user is told, the push's error, whether the upload session is given up
    ("upload-refused-403", dict(action="status", path="/blobs/uploads/", method=None, status=403, times=-1), "403",
     AuthenticationError, False),
    ("blob-put-500", dict(action="status", path="/blobs/uploads/", method="PUT", status=500, times=-1), "500",
     RegistryUnavailable, True),
    ("manifest-put-503", dict(action="status", path="/manifests/", method="PUT", status=503, times=-1), "503",
     RegistryUnavailable, False),
]


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("rule,reason,kind,abandoned", [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_a_registry_refusing_or_failing_the_push_leaves_a_clear_reason_and_no_tag(
    attempt, proxy, registry, rule, reason, kind, abandoned, layer
):
    """Refused (403: for good) or failing (5xx: worth retrying, the job retries it and fails at its last
    attempt). A blob upload given up is cancelled (``DELETE`` of its session, as the distribution spec
    asks); no manifest is written after a failed blob."""
    target = via(proxy, Reference(registry.host, f"thin/refused-{reason}-{layer}", "v1"))
    rule = dict(rule)  # the table's rule is shared by every layer
    path = rule.pop("path")
    proxy.add(rule.pop("action"), path, **rule)
    tried = attempt(target, {})
    refused = tried.through(layer)
    assert str(target) in refused.text and reason in refused.text, refused.text
    assert refused.temporary in (kind.temporary, None)
    assert refused.error is None or type(refused.error) is kind, refused.error
    assert bool(proxy.requests("DELETE", "/blobs/uploads/")) is abandoned
    if "/blobs/" in path:
        assert not proxy.requests("PUT", "/manifests/")
    assert tried.client.manifest_digest(Reference(registry.host, target.repository, target.tag)) is None
