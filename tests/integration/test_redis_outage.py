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

    from ducc.services import Services
    from ducc.settings import Settings

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
