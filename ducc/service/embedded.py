"""``ducc serve``: the whole service on one machine in one command.

Before anything starts it checks what an operator can get wrong, each a one-line
error: the state directory is taken (an flock on ``serve.lock`` in it, held for the
supervisor's life, so a second ``ducc serve`` there refuses to start and never
touches the first one's Redis), the repository root cannot be created or written,
the wishlist is missing or invalid. With no webhook token configured it warns that
the web app will refuse every webhook and API request. It queues one wishlist sync
as soon as it runs (as DUCC's loop starts with a conversion; ``--no-initial-sync``
skips it), then beat syncs on ``DUCC_SYNC_SCHEDULE``.

Runs, as child processes it supervises: an embedded Redis (``redis-server`` on
a unix socket under ``DUCC_STATE_DIR``, with an append-only file written before
every answer, so an accepted request survives any process crash; fsynced every
second, or on every write with ``DUCC_REDIS_FSYNC=always``) unless
``DUCC_REDIS_URL`` is set; a worker; beat (the nightly wishlist sync and reconciliation); and the
web app under gunicorn on ``DUCC_LISTEN``. A child that dies is restarted.

Each child runs in a session of its own: Ctrl-C or a signal to the supervisor's
whole process group reaches the supervisor only, and SIGTERM/SIGINT stop the
children in order, each waited for before the next: web, beat, the worker
(which still records its results), Redis last. A child is stopped as a group
(gunicorn's and Celery's own processes with it), killed as a group if it does not
stop within its timeout. Children die with the supervisor (PR_SET_PDEATHSIG), so
nothing is left behind whatever happens to it.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import redis

from ducc.errors import ServiceUnavailable, StateDirectoryInUse
from ducc.publish import backends
from ducc.settings import Settings

log = logging.getLogger("ducc.serve")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self) -> None:
        log.info("starting %s", self.name)
        # Its own session (and process group): see the module docstring.
        self.process = subprocess.Popen(self.argv, env=self.env, preexec_fn=_die_with_parent, start_new_session=True)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the child's group, then SIGKILL to it after ``timeout`` s; whatever of the group
        outlived its leader goes too."""
        if self.process is None:
            return
        if self.alive():
            log.info("stopping %s", self.name)
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
                self._signal(signal.SIGKILL)
                self.process.wait()
            log.info("%s stopped", self.name)
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):  # the whole group is gone already
            pass


def redis_config(state: Path, socket: Path, fsync: str) -> list[str]:
    return [
        "--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700",
        "--dir", str(state), "--appendonly", "yes", "--appendfsync", fsync,
        "--save", "", "--daemonize", "no", "--loglevel", "warning",
    ]


def start_redis(settings: Settings) -> tuple[Child, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable("redis-server is not installed (./bootstrap.sh installs it) and DUCC_REDIS_URL is not set")
    state = settings.embedded_redis_dir
    state.mkdir(parents=True, exist_ok=True)
    child = Child("redis", [binary, *redis_config(state, settings.embedded_redis_socket, settings.redis.fsync)], dict(settings.env))
    child.start()
    url = settings.embedded_redis_url
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not child.alive():
            raise ServiceUnavailable("the embedded redis-server exited at start; see its messages above")
        try:
            if redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5).ping():
                return child, url
        except redis.RedisError:
            time.sleep(0.05)
    raise ServiceUnavailable("the embedded redis-server did not answer within 30s")


LOCK_NAME = "serve.lock"


@contextmanager
def state_directory(state: Path) -> Iterator[None]:
    """Hold ``state`` for this ``ducc serve`` (an flock on ``serve.lock``, which also names our pid);
    StateDirectoryInUse if another one holds it. The lock goes with the process, however it ends."""
    try:
        state.mkdir(parents=True, exist_ok=True)
        fd = os.open(state / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ValueError(f"state directory {state} cannot be used: {exc.strerror or exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise StateDirectoryInUse(f"another ducc serve (pid {holder}) is running with the state directory "
                                      f"{state}; stop it first, or give this one its own DUCC_STATE_DIR") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def preflight(settings: Settings, *, root: Path, wishlist: Path | None, web: bool) -> None:
    """What must hold before anything starts: readable DUCC_SYNC_SCHEDULE and DUCC_GC_SCHEDULE, what the
    repository backend checks (``ducc.publish.backends``: a usable root, a named CVMFS repository) and a
    valid wishlist (errors), a webhook token (a warning: without one the web app refuses every
    webhook and API request)."""
    from ducc.service.broker import parse_cron

    parse_cron(settings.sync.schedule)  # ValueError for a schedule beat could not read
    parse_cron(settings.gc.schedule, "DUCC_GC_SCHEDULE")
    for backend in backends.in_use(settings):  # the repository's backend, and any store beside it
        backend.preflight(settings, root)  # RepositoryUnusable for a root that cannot be written, say
    if wishlist is not None:
        from ducc.wishlist import read

        wishes = read(wishlist)  # WishlistError if missing or invalid
        log.info("wishlist %s: %d entries", wishlist, len(wishes.wishes))
    if web and not settings.web.tokens:
        log.warning("no webhook token is configured (DUCC_WEBHOOK_TOKEN or DUCC_WEBHOOK_TOKEN_<SOURCE>, or _FILE): "
                    "the web app will refuse every webhook and every POST to the API with 401")
    if web and not settings.web.allow and wishlist is None:
        log.warning("neither DUCC_ALLOW nor a wishlist is configured: webhooks and the API may convert nothing")


def queue_first_sync(settings: Settings, env: dict[str, str], wishlist: Path) -> None:
    """Queue the wishlist sync once now; the worker runs it as soon as it is ready."""
    from ducc.schedule import next_sync
    from ducc.service.broker import create_celery
    from ducc.service.queue import SYNC_TASK

    children = Settings.from_env(env)  # as the children: DUCC_REDIS_URL is the given or the embedded Redis
    create_celery(children, env["DUCC_REDIS_URL"], children.redis.password).send_task(SYNC_TASK)
    upcoming = next_sync(settings.sync.schedule, datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    log.info("wishlist %s: first sync queued; then on DUCC_SYNC_SCHEDULE %r (next %s)", wishlist,
             settings.sync.schedule, upcoming)


def serve(settings: Settings, *, root: Path, wishlist: Path | None, web: bool = True, initial_sync: bool = True) -> int:
    with state_directory(settings.state_dir):
        preflight(settings, root=root, wishlist=wishlist, web=web)
        return _supervise(settings, root=root, wishlist=wishlist, web=web, initial_sync=initial_sync)


def _supervise(settings: Settings, *, root: Path, wishlist: Path | None, web: bool, initial_sync: bool) -> int:
    env = dict(settings.env)
    env["DUCC_ROOT"] = str(root.resolve())
    if wishlist is not None:
        env["DUCC_WISHLIST"] = str(wishlist.resolve())
    children: list[Child] = []
    if not settings.redis.url:
        redis_child, url = start_redis(settings)
        children.append(redis_child)
        env["DUCC_REDIS_URL"] = url
        # The embedded Redis has no password (its socket is private to this user): none is sent to it.
        for name in ("DUCC_REDIS_PASSWORD", "DUCC_REDIS_PASSWORD_FILE"):
            env.pop(name, None)
        log.info("embedded Redis at %s (data in %s)", url, settings.embedded_redis_dir)
    ducc = [sys.executable, "-m", "ducc"]
    services = [Child("worker", [*ducc, "worker"], env), Child("beat", [*ducc, "beat"], env)]
    if web:
        services.append(Child("web", [*ducc, "web"], env))
    for child in services:
        child.start()
    children.extend(services)
    log.info("ducc is serving %s%s", root, f" on http://{settings.web.listen}" if web else "")
    if wishlist is not None and initial_sync:
        try:
            queue_first_sync(settings, env, wishlist)
        except Exception as exc:  # the schedule still syncs; the service is up either way
            log.error("could not queue the first wishlist sync: %s", exc)
    elif wishlist is not None:
        log.info("wishlist %s: no sync now (--no-initial-sync); first on DUCC_SYNC_SCHEDULE %r", wishlist,
                 settings.sync.schedule)

    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping:
            time.sleep(0.5)
            for child in children:
                if child.alive() or stopping:
                    continue
                code = child.process.returncode if child.process else None
                now = time.monotonic()
                child.restarts = [t for t in child.restarts if now - t < 60] + [now]
                if len(child.restarts) > 5:
                    log.error("%s keeps dying (exit %s); stopping the service", child.name, code)
                    stopping = True
                    break
                log.error("%s exited with %s; restarting it", child.name, code)
                child.start()
    finally:
        for child in reversed(children):  # web, beat, worker first; Redis last
            child.stop()
    log.info("ducc stopped")
    return 0
