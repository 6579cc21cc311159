"""Locks that survive crashes: Redis leases that expire unless their holder keeps renewing them.

A worker that dies stops renewing, and after ``lease`` seconds another may
take the lock; a live holder renews it every ``lease / 3`` seconds from a
background thread, however long its work takes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis.exceptions import LockError

log = logging.getLogger(__name__)


@contextmanager
def lease(client: redis.Redis, name: str, *, seconds: float = 60.0, wait: float | None = None) -> Iterator[None]:
    """Hold the lease ``name``; ``wait`` seconds at most to get it (None: as long as it takes)."""
    lock = client.lock(f"ducc:lock:{name}", timeout=seconds, blocking=True, blocking_timeout=wait, thread_local=False)
    if not lock.acquire():
        raise TimeoutError(f"lock {name} is held by another worker")
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(seconds / 3):
            try:
                lock.reacquire()
            except LockError:
                log.error("lost the lease on %s", name)
                return
            except redis.RedisError as exc:  # Redis briefly away: try again at the next tick
                log.warning("could not renew the lease on %s: %s", name, exc)

    renewer = threading.Thread(target=renew, name=f"lease-{name}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        try:
            lock.release()
        except LockError:
            log.warning("lease on %s had already expired", name)


def try_lease(client: redis.Redis, name: str, seconds: float = 60.0) -> bool:
    """Take ``name`` for ``seconds`` if it is free (no renewal): for one-shot guards."""
    return bool(client.set(f"ducc:lock:{name}", "1", nx=True, ex=int(seconds)))
