"""Locks that survive crashes: Redis leases that expire unless their holder keeps renewing them.

A worker that dies stops renewing, and after ``seconds`` another may take the
lock. ``lease()`` renews from a background thread of its own; a holder that
already has a heartbeat (a running job) takes ``Lease`` objects and renews
them from that one thread (``ducc.service.running``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis
from redis.exceptions import LockError

from ducc.service import keys

log = logging.getLogger(__name__)


class Lease:
    """The lease ``name`` (key ``ducc:lock:<name>``), held for ``seconds`` after each renewal.

    ``still_held()`` tells its holder, without asking Redis, whether the lease may have passed to
    another: False once a renewal found it gone, or once ``seconds`` (less a margin for the write
    about to be made) have passed since the last renewal Redis confirmed (a Redis that stopped
    answering lets the key expire on its side while the holder hears nothing).
    """

    def __init__(self, client: redis.Redis, name: str, *, seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.seconds = seconds
        self._clock = clock
        self._lock = client.lock(keys.lock(name), timeout=seconds, blocking=True, thread_local=False)
        self._valid_until = float("-inf")  # by our clock; measured from before each command was sent
        self._lost = False

    def acquire(self, wait: float | None = None) -> None:
        """Take the lease; ``wait`` seconds at most (None: as long as it takes)."""
        if not self._lock.acquire(blocking_timeout=wait):
            raise TimeoutError(f"lock {self.name} is held by another worker")
        self._lost = False
        # When the waiting acquire took it is not known here: renewed at once, the lease runs from now.
        try:
            if not self.renew():
                raise TimeoutError(f"lock {self.name} was lost as soon as it was taken")
        except BaseException:
            self.release()
            raise

    def renew(self) -> bool:
        """Extend the lease by ``seconds``; False if it was lost (Redis errors are logged and retried later)."""
        asked = self._clock()
        try:
            self._lock.reacquire()
        except LockError:
            self._lost = True
            log.error("lost the lease on %s", self.name)
            return False
        except redis.RedisError as exc:  # Redis briefly away: try again at the next tick
            log.warning("could not renew the lease on %s: %s", self.name, exc)
            return True
        self._valid_until = asked + self.seconds
        return True

    def still_held(self) -> bool:
        """Whether no other holder can have the lease yet; see the class docstring."""
        margin = min(1.0, self.seconds / 4)
        return not self._lost and self._clock() < self._valid_until - margin

    def release(self) -> None:
        try:
            self._lock.release()
        except LockError:
            log.warning("lease on %s had already expired", self.name)
        except redis.RedisError as exc:  # it expires on its own
            log.warning("could not release the lease on %s: %s", self.name, exc)


@contextmanager
def lease(client: redis.Redis, name: str, *, seconds: float = 60.0, wait: float | None = None) -> Iterator[Callable[[], bool]]:
    """Hold the lease ``name`` while the block runs, renewed every ``seconds / 3`` by a thread; the block
    gets ``Lease.still_held``, to ask before each write it makes under the lease."""
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
        yield held.still_held
    finally:
        stop.set()
        renewer.join()
        held.release()


def try_lease(client: redis.Redis, name: str, seconds: float = 60.0) -> bool:
    """Take ``name`` for ``seconds`` if it is free (no renewal): for one-shot guards."""
    return bool(client.set(keys.lock(name), "1", nx=True, ex=int(seconds)))
