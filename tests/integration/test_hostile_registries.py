"""Registries that send too much, too slowly or forever, and ones that ask for credentials where they
must not go: small fake registries over ``http.server`` on loopback (``tests.support.hostile``), since a
real registry cannot be made to misbehave like this, and the real ``ducc`` command, measured (peak memory
of the process, time). Every failure is one line and exit status 1 (130 for Ctrl-C)."""

from __future__ import annotations

import json
import os
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

import pytest

from ducc.cache import BlobCache
from ducc.errors import AuthenticationError, DigestMismatch, JobCancelled, RegistryError, RegistryUnavailable
from ducc.model.digest import Digest
from ducc.registry.auth import Credentials, StaticKeychain
from ducc.registry.client import RegistryClient, RetryPolicy
from ducc.registry.transfer import TransferLimits
from ducc.registry.transport import Transport
from ducc.service.jobs import JobStore
from tests.integration.test_service import wait_finished
from tests.support.hostile import HostileRegistry, ducc_env, endless, run_measured, send, trickle
from tests.support.images import File, ImageSpec, Layer, build, push_image
from tests.support.service import DuccProcess, ducc_cli, service_env

MiB = 1 << 20
BASELINE_RSS = 150 * MiB  # ducc converting a small image peaks near 50 MiB; a body held whole is hundreds


@pytest.fixture
def hostile():
    started: list[HostileRegistry] = []

    def make(spec: ImageSpec | None = None) -> HostileRegistry:
        registry = HostileRegistry(build(spec or ImageSpec(layers=[Layer([File("hello", b"hello\n")])])))
        started.append(registry)
        return registry

    yield make
    for registry in started:
        registry.stop()


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """Half a MiB of gzip that inflates to 512 MiB of zeros."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b"\0" * MiB
    return b"".join([deflate.compress(zeros) for _ in range(512)] + [deflate.flush()])


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# -- too much --------------------------------------------------------------------------------------


def too_much(registry: HostileRegistry, kind: str, gzip_bomb: bytes) -> None:
    """Make ``registry`` answer with far too much, as ``kind`` says."""
    if kind == "manifest without Content-Length":
        registry.on("/manifests/", endless(b"{" * 65536, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}))
    elif kind == "gzip-encoded manifest":
        registry.on("/manifests/", lambda h: send(h, 200, gzip_bomb, {"Content-Encoding": "gzip",
                                                                      "Content-Type": "application/json"}))
    elif kind == "gzip-encoded error body":
        registry.on("/manifests/", lambda h: send(h, 404, gzip_bomb, {"Content-Encoding": "gzip"}))
    elif kind == "error body without Content-Length":
        registry.on("/manifests/", endless(b"x" * 65536, status=404))
    else:  # a token: the realm is the registry itself, on loopback (allowed)
        realm = f"http://127.0.0.1:{registry.server.server_address[1]}/token"
        registry.on(r"^/v2/team", lambda h: send(h, 401, b"{}", {"WWW-Authenticate": f'Bearer realm="{realm}"'}))
        registry.on(r"^/token", lambda h: send(h, 200, gzip_bomb, {"Content-Encoding": "gzip"}))


BIG = [("manifest without Content-Length", "manifest {host}/team/app:1: the answer is larger than 4194304 bytes"),
       ("gzip-encoded manifest", "manifest {host}/team/app:1: the answer is larger than 4194304 bytes (gzip-encoded)"),
       ("gzip-encoded error body", "manifest of {host}/team/app:1: not found"),
       ("error body without Content-Length", "manifest of {host}/team/app:1: not found"),
       ("gzip-encoded token", "{host}/team/app:1: token for {host}: the answer is larger than 1048576 bytes (gzip-encoded)")]


@pytest.mark.parametrize(("kind", "said"), BIG, ids=[b[0] for b in BIG])
def test_a_registry_that_sends_too_much_is_read_only_up_to_the_limit(kind, said, hostile, gzip_bomb, root):
    registry = hostile()
    too_much(registry, kind, gzip_bomb)
    done = run_measured(["convert", str(registry.ref)], ducc_env(root), timeout=60)
    assert done.returncode == 1, done.stderr
    assert one_line(done.stderr) == "ducc: " + said.format(host=registry.host)
    assert done.peak_rss < BASELINE_RSS, f"{kind}: peak RSS {done.peak_rss >> 20} MiB"
    assert done.seconds < 20  # bounded: an endless or gzip-bombed answer is not read through


def test_a_blob_that_never_ends_is_refused_at_its_declared_size_and_leaves_no_part_file(hostile, tmp_path):
    registry = hostile()
    (layer,) = registry.image.layer_digests
    declared = len(registry.image.blobs[layer])
    answer = endless()
    registry.on(f"/blobs/{layer}", answer)
    client = RegistryClient(retry=RetryPolicy(attempts=1))
    delivered = bytearray()
    with pytest.raises(DigestMismatch) as error, client.open_blob(registry.ref, layer, declared) as stream:
        while chunk := stream.read(1 << 16):
            delivered += chunk
    assert len(delivered) <= declared  # the byte after the declared size is refused, nothing past it handed on
    assert str(error.value).endswith(f": expected {declared} bytes, got more than {declared} bytes")

    cache = tmp_path / "cache"
    done = run_measured(["convert", str(registry.ref)], ducc_env(tmp_path / "root", DUCC_CACHE_DIR=str(cache)))
    assert done.returncode == 1
    assert one_line(done.stderr) == (f"ducc: {registry.ref}: blob {layer} of {registry.ref.name}: "
                                     f"expected {declared} bytes, got more than {declared} bytes")
    assert done.seconds < 10 and done.peak_rss < BASELINE_RSS
    assert [p.name for p in cache.rglob("*") if p.is_file()] == []  # no .part, no entry


def test_cache_pruning_removes_part_files_of_dead_writers_before_any_entry(tmp_path):
    cache = BlobCache(tmp_path, max_bytes=3000, stale_after=600)
    dead = tmp_path / "sha256" / "ab" / ".abandoned.part"
    dead.parent.mkdir(parents=True)
    dead.write_bytes(b"x" * 5000)
    os.utime(dead, (time.time() - 3600, time.time() - 3600))
    live = tmp_path / "sha256" / "cd" / ".downloading.part"
    live.parent.mkdir(parents=True)
    live.write_bytes(b"y" * 1000)
    blob = b"fresh blob" * 100
    writer = cache.writer(Digest.of(blob))
    writer.write(blob)
    writer.commit()
    assert not dead.exists() and live.exists()
    assert cache.get(Digest.of(blob), len(blob)) is not None  # the fresh blob was not pushed out


# -- too slowly ------------------------------------------------------------------------------------

FAST_CUT = {"DUCC_MIN_TRANSFER_TIME": "2", "DUCC_MIN_TRANSFER_RATE": "1000000", "DUCC_RETRY_ATTEMPTS": "3"}


def slow_headers(h: BaseHTTPRequestHandler) -> None:
    """Response headers at one byte a second: the headers never complete within the deadline."""
    for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: " + b"p" * 100:
        h.wfile.write(bytes([byte]))
        h.wfile.flush()
        time.sleep(1)


SLOW = ["blob", "blob without Content-Length", "manifest", "response headers"]


@pytest.mark.parametrize("what", SLOW, ids=SLOW)
def test_a_registry_trickling_one_byte_a_second_is_cut_off_at_the_deadline(what, hostile, root):
    registry = hostile()
    (layer,) = registry.image.layer_digests
    if what.startswith("blob"):
        registry.on(f"/blobs/{layer}", trickle(registry.image.blobs[layer], length=what == "blob"))
    elif what == "manifest":
        registry.on("/manifests/", trickle(registry.image.manifest, headers={
            "Content-Type": registry.image.manifest_media_type}))
    else:
        registry.on("/manifests/", slow_headers)
    done = run_measured(["convert", str(registry.ref)], ducc_env(root, **FAST_CUT), timeout=60)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "too slow: " in line and "DUCC_MIN_TRANSFER_RATE=1000000" in line, line
    assert done.seconds < 8, f"cut off after {done.seconds:.1f}s"
    wanted = f"/blobs/{layer}" if what.startswith("blob") else "/manifests/"
    assert len(registry.requests(wanted, "GET" if what != "response headers" else None)) == 1  # not tried again


def test_a_slow_registry_above_the_minimum_rate_is_not_cut_off(hostile, root):
    registry = hostile()
    (layer,) = registry.image.layer_digests
    blob = registry.image.blobs[layer]
    registry.on(f"/blobs/{layer}", trickle(blob, per_second=len(blob) / 2))  # the whole blob in about 2 s
    done = run_measured(["convert", str(registry.ref)], ducc_env(root, DUCC_MIN_TRANSFER_TIME="1",
                                                                 DUCC_MIN_TRANSFER_RATE="16"))
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("command", ["convert", "sync"])
def test_ctrl_c_ends_a_conversion_stuck_on_trickling_blobs_within_seconds(command, hostile, root, tmp_path):
    registry = hostile(ImageSpec(layers=[Layer([File("a", os.urandom(2000))]), Layer([File("b", os.urandom(2000))])]))
    for layer in registry.image.layer_digests:
        registry.on(f"/blobs/{layer}", trickle(registry.image.blobs[layer]))
    wishlist = tmp_path / "wishlist.yaml"
    wishlist.write_text(f"version: 1\nuser: u\ncvmfs_repo: unpacked.example.org\ninput:\n  - 'https://{registry.ref}'\n")
    downloading: list[float] = []

    def a_while_into_the_downloads() -> bool:  # the decompressors' threads are blocked reading by then
        if not downloading and all(registry.requests(f"/blobs/{d}") for d in registry.image.layer_digests):
            downloading.append(time.monotonic())
        return bool(downloading) and time.monotonic() - downloading[0] > 1.5

    # default deadlines: 60 s plus the size at 16 KiB/s; both layers download at once, in worker threads
    done = run_measured([command, str(registry.ref) if command == "convert" else str(wishlist)],
                        ducc_env(root), timeout=60, interrupt_after=a_while_into_the_downloads)
    assert done.returncode == 130, done.stderr
    assert one_line(done.stderr) == "ducc: interrupted; nothing half-published (staging is cleaned on the next run)"
    assert done.seconds < 3, f"acted on after {done.seconds:.1f}s"


def test_a_cancel_stops_a_download_while_the_registry_sends_nothing(hostile):
    registry = hostile()
    (layer,) = registry.image.layer_digests
    silent_at: list[float] = []  # when the registry had sent the headers and went quiet: the job is cancelled then
    registry.on(f"/blobs/{layer}", stalled(len(registry.image.blobs[layer]), then=lambda: silent_at.append(time.monotonic())))

    def heartbeat() -> None:  # the job's cancel check, called by the transfer's watchdog about every second
        if silent_at:
            raise JobCancelled("cli (someone@host)", "fetching")

    client = RegistryClient(retry=RetryPolicy(attempts=1))
    with pytest.raises(JobCancelled), client.open_blob(registry.ref, layer, len(registry.image.blobs[layer]),
                                                          heartbeat=heartbeat) as stream:
        stream.read(1000)
    assert silent_at and time.monotonic() - silent_at[0] < 4  # the next heartbeat stopped it, not the 30 s silence


def stalled(length: int, then: Callable[[], object] = lambda: None) -> Callable[[BaseHTTPRequestHandler], None]:
    """Headers of a ``length``-byte body, ``then()``, then silence for longer than any test waits."""
    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(length))
        h.end_headers()
        h.wfile.flush()
        then()
        time.sleep(30)  # the fault itself: a registry that goes quiet mid-body
    return answer


def test_a_worker_stops_a_cancelled_download_that_receives_nothing_within_seconds(hostile, redis_server, root,
                                                                                  tmp_path):
    registry = hostile()
    (layer,) = registry.image.layer_digests
    registry.on(f"/blobs/{layer}", stalled(len(registry.image.blobs[layer])))
    env = service_env(root, redis_server.url, tmp_path / "state")
    worker = DuccProcess(["worker", "--name", "hostile@%h"], env, tmp_path / "worker.log").start()
    try:
        worker.wait_for_log("ready.")
        job_id = ducc_cli("submit", str(registry.ref), env=env).stdout.split()[-1]
        deadline = time.monotonic() + 60
        while not registry.requests(f"/blobs/{layer}"):
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.05)
        asked = time.monotonic()
        cancel = ducc_cli("cancel", job_id, env=env)
        assert cancel.returncode == 0, cancel.stderr + worker.log()[-3000:]
        (job,) = wait_finished(JobStore(redis_server.client()), [job_id], timeout=30)
        took = time.monotonic() - asked
        assert job.state == "cancelled" and "while fetching" in job.error, job.error
        assert took < 6, f"stopped {took:.1f}s after the cancel"
    finally:
        worker.stop()


# -- forever ---------------------------------------------------------------------------------------


def endless_tags(h: BaseHTTPRequestHandler) -> None:
    """Every page links to one more: the chain never ends."""
    page = int(h.path.rpartition("page=")[2] or 0) if "page=" in h.path else 0
    send(h, 200, f'{{"name": "team/app", "tags": ["t{page}"]}}'.encode(),
         {"Content-Type": "application/json", "Link": f'</v2/team/app/tags/list?n=1000&page={page + 1}>; rel="next"'})


def test_an_endless_tag_list_is_bounded_and_said_in_one_line(hostile, tmp_path):
    registry = hostile()
    registry.on("/tags/list", endless_tags)
    wishlist = tmp_path / "wishlist.yaml"
    wishlist.write_text(f"version: 1\nuser: u\ncvmfs_repo: unpacked.example.org\n"
                        f"input:\n  - 'https://{registry.host}/team/app:t*'\n")
    done = run_measured(["check-wishlist", str(wishlist)], ducc_env(tmp_path / "root", DUCC_MAX_TAG_PAGES="50"))
    assert done.returncode == 1
    assert one_line(done.stderr).endswith(
        f"tags of {registry.host}/team/app: more than 50 pages (DUCC_MAX_TAG_PAGES); the registry's Link chain does not end"), done.stderr
    assert len(registry.requests("/tags/list")) == 50
    assert done.seconds < 15

    registry.routes.clear()
    registry.on("/tags/list", lambda h: send(h, 200, json.dumps({"tags": [f"t{i}" for i in range(200)]})
                                             .encode(), {"Content-Type": "application/json"}))
    client = RegistryClient(max_tags=100)
    with pytest.raises(RegistryError, match=r"more than 100 tags \(DUCC_MAX_TAGS\)"):
        client.list_tags(registry.ref)


def test_a_redirect_loop_is_a_permanent_error_and_is_not_retried(hostile, root):
    registry = hostile()

    def loop(h: BaseHTTPRequestHandler) -> None:
        send(h, 307, b"", {"Location": h.path})
    registry.on("/manifests/", loop)
    client = RegistryClient(retry=RetryPolicy(attempts=5, base_delay=0.01))
    with pytest.raises(RegistryError) as error:
        client.resolve(registry.ref)
    assert not error.value.temporary and "more than 10 redirects (a redirect loop)" in str(error.value)
    assert len(registry.requests("/manifests/")) == 11
    done = run_measured(["convert", str(registry.ref)], ducc_env(root))
    assert done.returncode == 1 and "redirect loop" in one_line(done.stderr)


# -- credentials -----------------------------------------------------------------------------------


REALMS = [
    ("plain HTTP on another host", "http://localhost:{port}/token", "credentials go to a token service over HTTPS only"),
    ("link-local (a cloud's metadata service)", "http://169.254.169.254/token", "link-local"),
    ("link-local over HTTPS", "https://169.254.169.254/token", "link-local"),
    ("unspecified", "https://0.0.0.0/token", "unspecified"),
    ("multicast", "https://[ff02::1]/token", "multicast"),
]


@pytest.mark.parametrize(("name", "realm", "why"), REALMS, ids=[r[0] for r in REALMS])
def test_credentials_never_go_to_a_token_realm_they_could_leak_at(name, realm, why, hostile, caplog):
    registry = hostile()
    realm = realm.format(port=registry.server.server_address[1])
    registry.on(r"^/v2/team", lambda h: send(h, 401, b"{}", {"WWW-Authenticate": f'Bearer realm="{realm}",service="r"'}))
    registry.on(r"^/token", lambda h: send(h, 200, b'{"token": "t"}'))
    client = RegistryClient(keychain=StaticKeychain({registry.host: Credentials("ducc", "pa55word")}),
                            retry=RetryPolicy(attempts=1))
    started = time.monotonic()
    with pytest.raises(AuthenticationError) as error:
        client.resolve(registry.ref)
    message = str(error.value)
    assert message.startswith(f"manifest of {registry.ref}: token realm {realm} refused: ") and why in message
    assert "\n" not in message and "pa55word" not in message + caplog.text
    assert registry.requests("/token") == [] and time.monotonic() - started < 5


def test_a_plain_http_realm_of_an_https_registry_gets_no_credentials():
    transport = Transport()
    assert transport.realm_refusal("http://192.0.2.7/token", "registry.example.org", with_credentials=True) == \
        "credentials go to a token service over HTTPS only"
    assert transport.realm_refusal("http://registry.example.org:5001/token", "registry.example.org",
                                   with_credentials=True) is not None  # the same host, but the registry is HTTPS
    assert transport.realm_refusal("https://192.0.2.7/token", "registry.example.org", with_credentials=True) is None
    assert transport.realm_refusal("http://192.0.2.7/token", "registry.example.org", with_credentials=False) is None
    insecure = Transport(insecure=["registry.lan:5000"])
    assert insecure.realm_refusal("http://registry.lan:5001/token", "registry.lan:5000", with_credentials=True) is None


# -- a corrupt cache -------------------------------------------------------------------------------


def test_a_corrupt_cached_blob_is_evicted_and_fetched_again(client, unique_ref, tmp_path, proxy):
    ref = unique_ref()
    built = push_image(client, ref, ImageSpec(layers=[Layer([File("data", os.urandom(5000))])]))
    cache = tmp_path / "cache"
    first = run_measured(["convert", str(ref)], ducc_env(tmp_path / "one", DUCC_CACHE_DIR=str(cache)))
    assert first.returncode == 0, first.stderr
    (entry,) = [p for p in cache.rglob("*") if p.is_file() and p.name == built.layer_digests[0].hex]
    entry.write_bytes(b"\0" + entry.read_bytes()[1:])  # a disk error flips a byte
    again = run_measured(["convert", str(ref)], ducc_env(tmp_path / "two", DUCC_CACHE_DIR=str(cache),
                                                         DUCC_LOG_LEVEL="INFO"))
    assert again.returncode == 0, again.stderr
    assert f"blob cache: entry {built.layer_digests[0]} is corrupt" in again.stderr
    assert Digest.of(entry.read_bytes()) == built.layer_digests[0]  # the fresh copy replaced it

    # the registry itself serving wrong bytes is a permanent failure, cache or not
    proxy.add("corrupt", f"/blobs/{built.layer_digests[0]}", times=-1)
    wrong = run_measured(["convert", f"{proxy.host}/{ref.repository}:{ref.tag}"],
                         ducc_env(tmp_path / "three", DUCC_CACHE_DIR=str(tmp_path / "other-cache")))
    assert wrong.returncode == 1 and "expected " in one_line(wrong.stderr)


def test_transfer_limits_give_every_transfer_the_minimum_time_plus_its_size_at_the_rate():
    limits = TransferLimits(min_rate=1000, min_time=60)
    assert limits.allowance(0) == 60 and limits.allowance(168) == pytest.approx(60.168)
    assert limits.allowance(10_000_000) == 10_060


@pytest.mark.parametrize("name", ["DUCC_MIN_TRANSFER_RATE", "DUCC_MIN_TRANSFER_TIME", "DUCC_MAX_TAG_PAGES",
                                  "DUCC_MAX_TAGS"])
def test_a_transfer_or_tag_bound_that_is_not_a_positive_number_is_a_usage_error(name, root):
    done = run_measured(["convert", "127.0.0.1:1/team/app:1"], ducc_env(root, **{name: "0"}))
    assert done.returncode == 2 and one_line(done.stderr) == f"ducc: {name} must be at least 1, not 0"


def test_a_forked_worker_process_enforces_deadlines_too(hostile):
    """Celery's prefork pool forks after the parent may have used its client: the child's watchdog runs."""
    registry = hostile()
    (layer,) = registry.image.layer_digests
    size = len(registry.image.blobs[layer])
    registry.on(f"/blobs/{layer}", stalled(size))
    client = RegistryClient(retry=RetryPolicy(attempts=1), limits=TransferLimits(min_rate=1_000_000, min_time=1))
    client.resolve(registry.ref)  # the parent's watchdog thread has run
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the stalled download was cut off as too slow
        code = 1
        try:
            with client.open_blob(registry.ref, layer, size) as stream:
                stream.read(size)
        except RegistryUnavailable as exc:
            code = 0 if "too slow" in str(exc) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and time.monotonic() - started < 6


def test_a_cancel_ends_the_wait_for_a_retry_at_once(hostile):
    registry = hostile()
    (layer,) = registry.image.layer_digests
    registry.on(f"/blobs/{layer}", lambda h: send(h, 503, b"{}", {"Retry-After": "100"}))
    cancelled = threading.Event()

    def heartbeat() -> None:
        if cancelled.is_set():
            raise JobCancelled("api (127.0.0.1)", "fetching")

    client = RegistryClient(retry=RetryPolicy(attempts=3))
    threading.Timer(1.0, cancelled.set).start()
    started = time.monotonic()
    with pytest.raises(JobCancelled), client.open_blob(registry.ref, layer, 10, heartbeat=heartbeat):
        pass
    assert time.monotonic() - started < 4 and len(registry.requests(f"/blobs/{layer}")) == 1
