"""The composition root: ``Services`` builds every collaborator of a process from ``Settings``, lazily.

The CLI, the workers and the web app all take what they need from one
``Services``: nothing else builds a Redis client, a job store, a queue, a
registry client, a publisher or a converter. Each is built on first use, so
the web process, which asks only for the light ones (Redis, jobs, queue, the
repository view), never imports the converter: the heavy builders import it
inside themselves (the import contract ``The web process never touches the
converter`` and ``tests/test_architecture.py`` check both).

Imports run one way: this module builds from ``ducc.service`` (Redis, jobs, the queue, locks), and
the service package never imports it back: the task bodies receive a ``Services`` as their
``Collaborators`` (the import contract ``One way down`` checks it).
"""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from ducc.errors import ServiceUnavailable
from ducc.progress import LogProgress, Progress
from ducc.publish import Publisher, RepositoryView, StillHeld, backends
from ducc.service import keys
from ducc.service.broker import build_redis
from ducc.service.jobs import JobStore
from ducc.service.locks import lease
from ducc.service.queue import Queue
from ducc.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

    from ducc.cache import BlobCache
    from ducc.convert import Converter
    from ducc.model.reference import Reference
    from ducc.publish.sinks import ImageSink
    from ducc.registry.auth import Keychain
    from ducc.registry.client import RegistryClient

log = logging.getLogger(__name__)


class Services:
    """What one process needs, built from ``settings`` on first use.

    ``root`` overrides ``settings.root`` (the CLI's ``--root``); ``progress`` is how
    conversions report (a terminal line in the CLI, job timelines in workers).
    ``shared_locks`` makes layer and repository locks Redis leases (the service);
    without it they are local to the host (the CLI converting in the foreground).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        root: Path | None = None,
        progress: Progress | None = None,
        shared_locks: bool = False,
    ) -> None:
        self.settings = settings
        self.root = (root or settings.root).absolute()
        self.progress = progress or LogProgress()
        self.shared_locks = shared_locks
        self._thin_clients: dict[tuple[str, str | None], RegistryClient] = {}
        self._thin_guard = threading.Lock()

    # -- light: Redis, status, the repository read only (the web app uses these) ---------

    @cached_property
    def redis_url(self) -> str:
        """``DUCC_REDIS_URL``, or the embedded Redis of a ``ducc serve`` on this machine."""
        if self.settings.redis.url:
            return self.settings.redis.url
        if self.settings.embedded_redis_socket.exists():
            return self.settings.embedded_redis_url
        raise ServiceUnavailable(f"DUCC_REDIS_URL is not set and no ducc serve runs here "
                                 f"(no {self.settings.embedded_redis_socket})")

    @property
    def redis_password(self) -> str | None:
        """``DUCC_REDIS_PASSWORD`` for the Redis at ``DUCC_REDIS_URL``; the embedded Redis of ``ducc serve``
        needs none (its socket is private to its user)."""
        return self.settings.redis.password if self.settings.redis.url else None

    @cached_property
    def redis(self) -> redis.Redis:
        return build_redis(self.redis_url, self.redis_password)

    @cached_property
    def jobs(self) -> JobStore:
        return JobStore(self.redis, ttl=self.settings.jobs.ttl)

    @cached_property
    def queue(self) -> Queue:
        """What submitters need: Redis only, no converter, no Celery."""
        return Queue(self.redis, self.jobs)

    @cached_property
    def view(self) -> RepositoryView:
        """The repository, read only; never creates it."""
        return backends.of(self.settings).view(self.settings, self.root)

    # -- heavy: what converts (workers, the CLI) -----------------------------------------

    @cached_property
    def publisher(self) -> Publisher:
        lock = self._repository_lock if self.shared_locks else None
        return backends.of(self.settings).publisher(self.settings, self.root, lock)

    def check_stores(self) -> None:
        """Each store in use beside the repository (``DUCC_PODMAN_STORE``…) can be written here (its
        preflight): a ``RepositoryUnusable``, one line, otherwise. Commands and ``ducc worker`` call it
        before any work; a store that fails later is reported per image and never fails a conversion."""
        for store in backends.stores(self.settings):
            store.preflight(self.settings, self.root)

    @cached_property
    def sinks(self) -> tuple[ImageSink, ...]:
        """The stores written beside the repository, told after it (``ducc.publish.sinks``)."""
        return tuple(store.sink(self.settings, self.publisher) for store in backends.stores(self.settings))

    def _repository_lock(self, name: str) -> AbstractContextManager[StillHeld]:
        # Writes into one repository are serialised across hosts by a Redis lease on its name; the
        # publisher asks whether it still holds it before every visible change.
        return lease(self.redis, keys.publish_lease(name), seconds=self.settings.jobs.lease)

    def _layer_lock(self, digest: object) -> AbstractContextManager[object]:
        # One fetch per layer across workers.
        return lease(self.redis, keys.layer_lease(digest), seconds=self.settings.jobs.lease)

    @cached_property
    def keychain(self) -> Keychain:
        from ducc.registry.auth import ChainKeychain, DockerConfigKeychain, for_hosts

        keychains: list[Keychain] = [
            for_hosts(self.settings.registry.user, self.settings.registry.password, self.settings.registry.hosts)
        ]
        config = self.settings.registry.docker_config
        if config is not None and config.is_file():
            keychains.append(DockerConfigKeychain(str(config)))
        return ChainKeychain.of(keychains)

    @cached_property
    def client(self) -> RegistryClient:
        return self._registry_client(self.keychain)

    def _registry_client(self, keychain: Keychain) -> RegistryClient:
        from ducc.registry.client import RegistryClient, RetryPolicy, TransferLimits

        settings = self.settings
        return RegistryClient(keychain=keychain, insecure=settings.registry.insecure,
                              retry=RetryPolicy(attempts=max(1, settings.registry.retry_attempts)),
                              limits=TransferLimits(settings.registry.min_transfer_rate, settings.registry.min_transfer_time),
                              max_tag_pages=settings.registry.max_tag_pages, max_tags=settings.registry.max_tags)

    def thin_client(self, target: Reference, user: str | None = None) -> RegistryClient:
        """The client that pushes thin images to ``target``'s registry (one per registry and account).

        The account is ``DUCC_OUTPUT_REGISTRY_USER``, else ``user`` (a wishlist's ``user``), with
        ``DUCC_OUTPUT_REGISTRY_PASSWORD``; it is offered to that registry only, before the pull
        credentials (``DUCC_REGISTRY_*``, Docker's config), which are still tried after it.
        """
        from ducc.registry.auth import ChainKeychain, RegistryKeychain

        account = self.settings.thin.registry_user or user
        with self._thin_guard:
            found = self._thin_clients.get((target.api_host, account))
            if found is None:
                password = self.settings.thin.registry_password
                keychain = self.keychain
                if account and password:
                    keychain = ChainKeychain.of([RegistryKeychain(target.registry, account, password), self.keychain])
                elif account:
                    log.warning("thin images for %s: user %s but no DUCC_OUTPUT_REGISTRY_PASSWORD; "
                                "pushing with the pull credentials", target.registry, account)
                found = self._thin_clients[(target.api_host, account)] = self._registry_client(keychain)
            return found

    @cached_property
    def cache(self) -> BlobCache | None:
        from ducc.cache import BlobCache

        if self.settings.cache.dir is None:
            return None
        return BlobCache(self.settings.cache.dir / "blobs", self.settings.cache.max_bytes)

    @cached_property
    def converter(self) -> Converter:
        from ducc.admission import from_limits
        from ducc.convert import Converter
        from ducc.model.limits import Limits

        limits = Limits(self.settings.limits.max_image_bytes, self.settings.limits.max_layer_entries, self.settings.limits.max_path_depth,
                        self.settings.limits.max_path_bytes)
        return Converter(self.client, self.publisher, sinks=self.sinks, cache=self.cache, progress=self.progress,
                         parallel_layers=self.settings.parallel_layers,
                         layer_lock=self._layer_lock if self.shared_locks else None, thin_client=self.thin_client,
                         limits=limits, cvmfs_repo=self.settings.cvmfs.repo,
                         thin_cvmfs_repo=self.settings.thin.cvmfs_repo,
                         policies=from_limits(max_layers=self.settings.limits.max_layers,
                                              max_compressed_bytes=self.settings.limits.max_compressed_bytes))

    def celery(self) -> Celery:
        """The Celery app (a new one each call: a worker registers its tasks on its own)."""
        from ducc.service.broker import create_celery

        return create_celery(self.settings, self.redis_url, self.redis_password)
