"""A Redis that stops answering without closing its connections (a network partition, a stopped
process): a real redis-server frozen with SIGSTOP. Nothing of ducc may hang on it: the web app's
readiness answers 503 within seconds, and a lease holder learns it lost its lease before it writes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import requests

from tests.support.processes import free_port, wait_for_port
from tests.support.service import DuccProcess, RedisServer, service_env


@contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """``server`` stopped (SIGSTOP) while the block runs: its sockets stay open, nothing answers."""
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def test_healthz_answers_503_within_seconds_while_redis_is_frozen_and_200_once_it_thaws(redis_server, root,
                                                                                         tmp_path):
    port = free_port()
    env = service_env(root, redis_server.url, tmp_path / "state", DUCC_LISTEN=f"127.0.0.1:{port}")
    web = DuccProcess(["web", "--workers", "1"], env, tmp_path / "web.log").start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, timeout=30, process=web.process)
        assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
        with frozen(redis_server):
            started = time.monotonic()
            health = requests.get(f"{base}/healthz", timeout=25)  # a hang fails here with ReadTimeout
            took = time.monotonic() - started
            print(f"/healthz answered {health.status_code} after {took:.1f}s with Redis frozen")
            assert health.status_code == 503 and health.json()["down"] == ["redis"]
            assert took < 10
            assert requests.get(f"{base}/livez", timeout=5).status_code == 200
        deadline = time.monotonic() + 30
        while requests.get(f"{base}/healthz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the app did not notice that Redis answers again"
            time.sleep(0.2)
        assert "Traceback" not in web.log(), web.log()[-3000:]
    finally:
        web.stop()


def test_a_task_sent_while_redis_is_frozen_fails_instead_of_waiting_forever(redis_server, root, tmp_path):
    """What a worker's dispatcher and the first sync of ``ducc serve`` do: publish a Celery message. Kombu
    waits forever on a silent broker unless told otherwise."""
    import threading

    from ducc.settings import Settings
    from ducc.wiring import Services

    app = Services(Settings.from_env(service_env(root, redis_server.url, tmp_path / "state"))).celery()
    app.send_task("ducc.test-nothing")  # connected while Redis answers
    outcome: list[BaseException | None] = []

    def send() -> None:
        try:
            app.send_task("ducc.test-nothing")
            outcome.append(None)
        except Exception as exc:
            outcome.append(exc)

    with frozen(redis_server):
        started = time.monotonic()
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        sender.join(60)
        took = time.monotonic() - started
    print(f"send_task gave up after {took:.1f}s with Redis frozen: {outcome}")
    assert not sender.is_alive(), "send_task still waits on a frozen Redis after a minute"
    assert outcome and outcome[0] is not None and took < 45


def test_a_writer_whose_lease_lapsed_while_redis_was_frozen_stops_before_its_next_write(redis_server, root):
    """Two hosts share a directory root, serialised by the repository's Redis lease. The first holds it,
    Redis freezes for longer than the lease, the second takes it once Redis answers again: the first
    must not write anything more (a temporary failure: its retry takes the lease again)."""
    import pytest

    from ducc import layout
    from ducc.errors import LeaseLost
    from ducc.model.digest import Digest
    from ducc.model.reference import Reference
    from ducc.service import keys
    from ducc.service.locks import Lease
    from ducc.settings import Settings
    from ducc.wiring import Services

    seconds = 3
    settings = Settings.from_env(service_env(root, redis_server.url, root.parent / "state",
                                             DUCC_REPOSITORY="shared-export", DUCC_JOB_LEASE=str(seconds)))
    first = Services(settings, shared_locks=True).publisher  # as a worker builds it
    digest = Digest.of(b"a layer the first writer unpacked")
    with first.reservations.directory() as stage:
        (stage / digest.hex / "layerfs").mkdir(parents=True)
        (stage / digest.hex / "layerfs" / "file").write_bytes(b"content")
        with first.transaction() as txn:
            with frozen(redis_server):
                time.sleep(seconds + 2)  # a real wait: Redis expires the lease's key by its own clock
            second = Lease(redis_server.client(), keys.publish_lease("shared-export"), seconds=30)
            second.acquire(wait=10)  # the other host writes from now on
            try:
                with pytest.raises(LeaseLost) as lost:
                    txn.add_layer(digest, stage / digest.hex)
                assert lost.value.temporary and "shared-export" in str(lost.value)
                with pytest.raises(LeaseLost):
                    txn.point_tag(Reference.parse("example.org/team/app:1"), layout_platform(), digest)
            finally:
                second.release()
    assert not (root / layout.layer_dir(digest)).exists()
    assert not (root / "example.org").exists()


def layout_platform():
    from ducc.model.manifest import DEFAULT_PLATFORM

    return DEFAULT_PLATFORM


def test_a_lease_counts_as_held_only_until_its_last_confirmed_renewal_expires_or_it_is_taken(redis_server):
    """``Lease.still_held`` asks no Redis: it reads an injected clock against the last renewal Redis
    confirmed, and what the last renewal found."""
    from ducc.service import keys
    from ducc.service.locks import Lease

    now = [1000.0]
    client = redis_server.client()
    held = Lease(client, "repo-a", seconds=10, clock=lambda: now[0])
    held.acquire(wait=1)
    assert held.still_held()
    now[0] += 8.5
    assert held.still_held()
    now[0] += 1  # within the margin a write needs before the key may expire: no longer ours
    assert not held.still_held()
    assert held.renew() and held.still_held()  # Redis confirmed it: ten more seconds
    client.set(keys.lock("repo-a"), "another holder's token")  # it lapsed and another host took it
    assert not held.renew() and not held.still_held()
    now[0] -= 100
    assert not held.still_held(), "a lease found lost stays lost"


def test_a_cvmfs_writer_whose_lease_lapsed_while_redis_was_frozen_publishes_nothing(redis_server, cvmfs, tmp_path):
    """On the real cvmfs_server: the writer holds the repository's Redis lease, Redis freezes for longer
    than the lease and another host takes it. The first writer's layer would be ingested when its
    transaction ends; it stops there instead (LeaseLost, temporary): no new revision, no transaction
    left open, no layer."""
    import pytest

    from ducc import layout
    from ducc.errors import LeaseLost
    from ducc.model.digest import Digest
    from ducc.service import keys
    from ducc.service.locks import Lease
    from ducc.settings import Settings
    from ducc.wiring import Services

    seconds = 3
    settings = Settings.from_env(cvmfs.ducc_env(tmp_path / "state", DUCC_CVMFS_REPO=cvmfs.repository,
                                                DUCC_REDIS_URL=redis_server.url, DUCC_JOB_LEASE=str(seconds)))
    first = Services(settings, shared_locks=True).publisher  # as a worker on the publisher builds it
    revision = cvmfs.revision()
    digest = Digest.of(b"a layer the first writer unpacked")
    second = Lease(redis_server.client(), keys.publish_lease(first.lease_name), seconds=30)
    with first.reservations.directory() as stage:
        (stage / digest.hex / "layerfs").mkdir(parents=True)
        (stage / digest.hex / "layerfs" / "file").write_bytes(b"content")
        with pytest.raises(LeaseLost) as lost, first.transaction() as txn:
            with frozen(redis_server):
                time.sleep(seconds + 2)  # a real wait: Redis expires the lease's key by its own clock
            second.acquire(wait=10)  # the other host publishes from now on
            txn.add_layer(digest, stage / digest.hex)
    second.release()
    assert lost.value.temporary and cvmfs.repository in str(lost.value)
    assert cvmfs.revision() == revision
    assert not cvmfs.in_transaction()
    assert not (cvmfs.mount / layout.layer_dir(digest)).exists()
