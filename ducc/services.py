"""The composition root: settings → registry client, publisher, converter, job store, queue. The CLI and
the workers are wired here, the same way; no module keeps a global client. (The web app builds its few
collaborators itself from ``ducc.broker``, ``ducc.jobs`` and ``ducc.queue``: it may not import this module.)"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path

import redis

from ducc.broker import build_redis
from ducc.cache import BlobCache
from ducc.convert import Converter
from ducc.jobs import JobStore
from ducc.locks import lease
from ducc.model.digest import Digest
from ducc.progress import LogProgress, Progress
from ducc.publish.directory import DirectoryPublisher
from ducc.queue import Queue
from ducc.registry.auth import ChainKeychain, DockerConfigKeychain, EnvKeychain, Keychain
from ducc.registry.client import RegistryClient, RetryPolicy
from ducc.settings import Settings


def build_keychain(settings: Settings) -> Keychain:
    keychains: list[Keychain] = [EnvKeychain(settings.env)]
    docker_dir = settings.env.get("DOCKER_CONFIG")
    config = Path(docker_dir) / "config.json" if docker_dir else Path.home() / ".docker" / "config.json"
    if config.is_file():
        keychains.append(DockerConfigKeychain(str(config)))
    return ChainKeychain.of(keychains)


def build_client(settings: Settings) -> RegistryClient:
    return RegistryClient(
        keychain=build_keychain(settings),
        insecure=settings.insecure_registries,
        retry=RetryPolicy(attempts=max(1, settings.retry_attempts)),
    )


def build_publisher(
    settings: Settings, root: Path | None = None, redis_client: redis.Redis | None = None
) -> DirectoryPublisher:
    root = (root or settings.root).resolve()
    # Writes into one repository are serialised across hosts by a Redis lease.
    lock = partial(lease, redis_client, f"publish:{root}", seconds=settings.job_lease) if redis_client else None
    return DirectoryPublisher(root, durable=settings.fsync, lock=lock)


def build_job_store(settings: Settings, redis_client: redis.Redis | None = None) -> JobStore:
    return JobStore(redis_client or build_redis(settings), ttl=settings.job_ttl)


def build_queue(settings: Settings, redis_client: redis.Redis | None = None) -> Queue:
    """What submitters (the CLI, the web app) need: Redis only, no converter, no Celery."""
    client = redis_client or build_redis(settings)
    return Queue(client, build_job_store(settings, client))


def build_converter(
    settings: Settings,
    *,
    root: Path | None = None,
    client: RegistryClient | None = None,
    progress: Progress | None = None,
    redis_client: redis.Redis | None = None,
) -> Converter:
    cache = BlobCache(settings.cache_dir / "blobs", settings.cache_max_bytes) if settings.cache_dir else None
    layer_lock: Callable[[Digest], AbstractContextManager[None]] | None = None
    if redis_client is not None:
        shared = redis_client

        def layer_lock(digest: Digest) -> AbstractContextManager[None]:  # one fetch per layer across workers
            return lease(shared, f"layer:{digest}", seconds=settings.job_lease)

    return Converter(
        client or build_client(settings),
        build_publisher(settings, root, redis_client),
        cache=cache,
        progress=progress or LogProgress(),
        parallel_layers=settings.parallel_layers,
        layer_lock=layer_lock,
    )
