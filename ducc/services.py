"""The composition root: settings → registry client, publisher, converter. Used by the CLI (and later
the workers and the web app) so every process is wired the same way; no module keeps a global client."""

from __future__ import annotations

from pathlib import Path

from ducc.cache import BlobCache
from ducc.convert import Converter
from ducc.progress import LogProgress, Progress
from ducc.publish.directory import DirectoryPublisher
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


def build_publisher(settings: Settings, root: Path | None = None) -> DirectoryPublisher:
    return DirectoryPublisher(root or settings.root, durable=settings.fsync)


def build_converter(
    settings: Settings,
    *,
    root: Path | None = None,
    client: RegistryClient | None = None,
    progress: Progress | None = None,
) -> Converter:
    cache = BlobCache(settings.cache_dir / "blobs", settings.cache_max_bytes) if settings.cache_dir else None
    return Converter(
        client or build_client(settings),
        build_publisher(settings, root),
        cache=cache,
        progress=progress or LogProgress(),
        parallel_layers=settings.parallel_layers,
    )
