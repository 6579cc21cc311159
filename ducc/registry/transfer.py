"""Deadlines for registry transfers, and the watchdog that enforces them.

A socket read timeout restarts with every byte, so a registry that trickles one
byte a second is never cut off by it. Every transfer (one request, with its
redirects and its body; a blob download with its resumptions) therefore gets a
deadline that grows with its size: ``min_time`` plus its bytes at ``min_rate``.

Promises:

- One watchdog thread per client looks at every open transfer a few times a
  second. A transfer past its deadline, or whose ``heartbeat`` raised (a
  cancelled job), or every transfer once ``abort()`` was called (Ctrl-C), is
  stopped: its socket is shut down, so the thread blocked reading it wakes up
  at once, whatever the registry sends or does not send.
- The reader then raises the transfer's error (``check()``), never takes the
  shut-down socket's end of stream for the end of the body.
- A transfer finished by its owner, or a connection it released (read to the
  end: urllib3 puts it back into the pool at once), is never touched again: the
  connection may already serve another request.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests
import urllib3

from ducc.errors import RegistryUnavailable
from ducc.model.limits import DEFAULT_MIN_TRANSFER_RATE, DEFAULT_MIN_TRANSFER_TIME

log = logging.getLogger(__name__)

TICK = 0.2  # seconds between the watchdog's looks: how late a deadline or an abort may act
HEARTBEAT = 1.0  # seconds between calls of a transfer's heartbeat


class TransferInterrupted(KeyboardInterrupt, Exception):
    """The process is being interrupted (Ctrl-C): a ``KeyboardInterrupt`` raised by a reader, which is
    an ``Exception`` too so that library threads that hand their source's errors on to their consumer
    (isal's threaded gzip reader catches ``Exception``) pass it on instead of printing it."""

    def __init__(self) -> None:
        super().__init__("interrupted")


@dataclass(frozen=True)
class TransferLimits:
    """How slow a transfer may be: every transfer may take ``min_time`` seconds, plus its bytes at
    ``min_rate`` bytes/s (``DUCC_MIN_TRANSFER_TIME``, ``DUCC_MIN_TRANSFER_RATE``)."""

    min_rate: int = DEFAULT_MIN_TRANSFER_RATE
    min_time: float = DEFAULT_MIN_TRANSFER_TIME

    def allowance(self, size: int) -> float:
        return self.min_time + max(0, size) / self.min_rate


class Transfer:
    """One transfer under watch: its deadline, the connections it uses, and why it stopped (if it did)."""

    def __init__(self, watchdog: Watchdog, what: str, size: int, heartbeat: Callable[[], object] | None) -> None:
        self.watchdog = watchdog
        self.what = what
        self.started = time.monotonic()
        self.size = size
        self.deadline = self.started + watchdog.limits.allowance(size)
        self.heartbeat = heartbeat
        self.received = 0
        self.error: BaseException | None = None
        self._stopped = threading.Event()
        self._connections: list[Any] = []
        self._beat = self.started

    def expect(self, size: int) -> None:
        """The transfer turns out to carry ``size`` bytes: its deadline grows to match (never shrinks)."""
        if size > self.size:
            self.size = size
            self.deadline = self.started + self.watchdog.limits.allowance(size)

    def attach(self, connection: Any) -> None:
        """A connection this transfer sends or reads on (urllib3's; its socket may not exist yet)."""
        with self.watchdog.lock:
            self._connections.append(connection)
            stopped = self.error is not None
        if stopped:
            _shut_down(connection)

    def release(self) -> None:
        """The connections used so far are done with (read to the end and back in the pool, where another
        request may take them, or closed): stopping this transfer must never touch them again."""
        with self.watchdog.lock:
            self._connections.clear()

    def wait(self, seconds: float, sleep: Callable[[float], None] | None = None) -> None:
        """Wait between attempts (``sleep``, or until stopped): a stop (a cancel, Ctrl-C) ends the wait at
        once and raises why; the deadline moves by the wait, since it measures transfers, not backoff."""
        with self.watchdog.lock:
            self.deadline += seconds
        if sleep is not None:
            sleep(seconds)
        else:
            self._stopped.wait(seconds)
        self.check()

    def check(self) -> None:
        """Raise why the transfer was stopped, if it was."""
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        self.watchdog.finish(self)

    def stop(self, error: BaseException) -> None:
        """Stop the transfer with ``error``: the reading thread wakes up and raises it."""
        with self.watchdog.lock:  # held while shutting down: a finished transfer's connection is never touched
            if self.error is None:
                self.error = error
            for connection in self._connections:
                _shut_down(connection)
        self._stopped.set()

    def too_slow(self) -> RegistryUnavailable:
        limits = self.watchdog.limits
        return RegistryUnavailable(
            f"{self.what}: too slow: not done within {limits.allowance(self.size):.0f}s "
            f"(DUCC_MIN_TRANSFER_TIME={limits.min_time:g} plus {self.size} bytes at "
            f"DUCC_MIN_TRANSFER_RATE={limits.min_rate} bytes/s); {self.received} bytes had been read"
        )

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()


def _shut_down(connection: Any) -> None:
    """Wake up whoever reads ``connection``'s socket. Only shut down, never closed here: the fd stays the
    reader's until it closes the connection itself (a closed fd could be reused under it)."""
    sock = getattr(connection, "sock", None)
    if sock is None:
        return
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's call, under TLS too
    except OSError:
        pass


def abort_all() -> None:
    """Abort every watchdog of this process (``Watchdog.abort``): what Ctrl-C does. A signal is for the
    whole process, so this is the one place that knows every client of it."""
    for watchdog in list(_WATCHDOGS):
        watchdog.abort()


class Watchdog:
    """Watches the open transfers of one client (see the module's promises)."""

    def __init__(self, limits: TransferLimits = TransferLimits()) -> None:
        self.limits = limits
        self.lock = threading.RLock()  # abort() runs in a signal handler, maybe inside start()
        self._transfers: set[Transfer] = set()
        self._wake = threading.Event()
        self._aborted = threading.Event()
        self._thread: threading.Thread | None = None
        _WATCHDOGS.add(self)

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    def start(self, what: str, size: int = 0, heartbeat: Callable[[], object] | None = None) -> Transfer:
        """A new transfer of about ``size`` bytes; ``heartbeat`` is called every second or so while it
        lasts, from the watchdog's thread: whatever it raises stops the transfer with that error."""
        transfer = Transfer(self, what, size, heartbeat)
        with self.lock:  # as abort() looks: a transfer is either refused here or seen there
            aborted = self._aborted.is_set()
            if not aborted:
                self._transfers.add(transfer)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="ducc-transfer-watchdog", daemon=True)
                    self._thread.start()
        if aborted:
            transfer.stop(TransferInterrupted())
        self._wake.set()
        return transfer

    def finish(self, transfer: Transfer) -> None:
        with self.lock:
            self._transfers.discard(transfer)
            transfer._connections.clear()

    def abort(self) -> None:
        """Stop every transfer now, and every later one at its start (the process is being interrupted)."""
        with self.lock:
            self._aborted.set()
            transfers = list(self._transfers)
        for transfer in transfers:
            transfer.stop(TransferInterrupted())
        self._wake.set()

    def _run(self) -> None:
        while True:
            with self.lock:
                transfers = list(self._transfers)
            if not transfers:
                self._wake.wait()
                self._wake.clear()
                continue
            now = time.monotonic()
            for transfer in transfers:
                if transfer.error is not None:
                    continue
                if now > transfer.deadline:
                    transfer.stop(transfer.too_slow())
                elif transfer.heartbeat is not None and now - transfer._beat >= HEARTBEAT:
                    transfer._beat = now
                    try:
                        transfer.heartbeat()
                    except BaseException as exc:  # a cancelled job: the reader raises it
                        transfer.stop(exc)
            time.sleep(TICK)


_WATCHDOGS: weakref.WeakSet[Watchdog] = weakref.WeakSet()


def _after_fork() -> None:
    """A forked child (a prefork worker) has none of its parent's threads or transfers, and a lock the
    watchdog held at the fork would stay held: every watchdog starts afresh there."""
    for watchdog in list(_WATCHDOGS):
        watchdog.lock = threading.RLock()
        watchdog._transfers = set()
        watchdog._thread = None
        watchdog._wake = threading.Event()


os.register_at_fork(after_in_child=_after_fork)

# Which transfer the current thread is sending: the connection pools below attach each connection they
# use to it, so the watchdog can wake up a thread that waits for response headers or a redirect too.
_sending = threading.local()


@contextmanager
def sending(transfer: Transfer) -> Iterator[None]:
    """The requests this thread makes meanwhile belong to ``transfer``."""
    _sending.transfer = transfer
    try:
        yield
    finally:
        _sending.transfer = None


def _attach(connection: Any) -> None:
    transfer: Transfer | None = getattr(_sending, "transfer", None)
    if transfer is not None:
        transfer.attach(connection)


class _WatchedHTTPConnectionPool(urllib3.HTTPConnectionPool):
    def _make_request(self, conn: Any, *args: Any, **kwargs: Any) -> Any:
        _attach(conn)
        return super()._make_request(conn, *args, **kwargs)


class _WatchedHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    def _make_request(self, conn: Any, *args: Any, **kwargs: Any) -> Any:
        _attach(conn)
        return super()._make_request(conn, *args, **kwargs)


_POOLS = {"http": _WatchedHTTPConnectionPool, "https": _WatchedHTTPSConnectionPool}


class WatchedAdapter(requests.adapters.HTTPAdapter):
    """``requests``' adapter whose connections are attached to the transfer being sent (see ``sending``)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        manager.pool_classes_by_scheme = _POOLS
        return manager
