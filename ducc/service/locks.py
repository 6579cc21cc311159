"""Locks that survive crashes: Redis leases that expire unless their holder keeps renewing them.

A worker that dies stops renewing, and after ``seconds`` another may take the
lock. ``lease()`` renews from a background thread of its own; a holder that
already has a heartbeat (a running job) takes ``Lease`` objects and renews
them from that one thread (``ducc.service.running``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis.exceptions import LockError

from ducc.service import keys

log = logging.getLogger(__name__)


class Lease:
    """The lease ``name`` (key ``ducc:lock:<name>``), held for ``seconds`` after each renewal."""

    def __init__(self, client: redis.Redis, name: str, *, seconds: float = 60.0) -> None:
        self.name = name
        self.seconds = seconds
        self._lock = client.lock(keys.lock(name), timeout=seconds, blocking=True, thread_local=False)

    def acquire(self, wait: float | None = None) -> None:
        """Take the lease; ``wait`` seconds at most (None: as long as it takes)."""
        if not self._lock.acquire(blocking_timeout=wait):
            raise TimeoutError(f"lock {self.name} is held by another worker")

    def renew(self) -> bool:
        """Extend the lease by ``seconds``; False if it was lost (Redis errors are logged and retried later)."""
        try:
            self._lock.reacquire()
        except LockError:
            log.error("lost the lease on %s", self.name)
            return False
        except redis.RedisError as exc:  # Redis briefly away: try again at the next tick
            log.warning("could not renew the lease on %s: %s", self.name, exc)
        return True

    def release(self) -> None:
        try:
            self._lock.release()
        except LockError:
            log.warning("lease on %s had already expired", self.name)


@contextmanager
def lease(client: redis.Redis, name: str, *, seconds: float = 60.0, wait: float | None = None) -> Iterator[None]:
    """Hold the lease ``name`` while the block runs, renewed every ``seconds / 3`` by a thread."""
    held = Lease(client, name, seconds=seconds)
    held.acquire(wait)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(seconds / 3):
            if not held.renew():
                return

    renewer = threading.Thread(target=renew, name=f"lease-{name}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        held.release()


def try_lease(client: redis.Redis, name: str, seconds: float = 60.0) -> bool:
    """Take ``name`` for ``seconds`` if it is free (no renewal): for one-shot guards."""
    return bool(client.set(keys.lock(name), "1", nx=True, ex=int(seconds)))
