from __future__ import annotations

from pathlib import Path

import pytest

from ducc.convert import Converter
from ducc.publish.directory import DirectoryPublisher
from ducc.registry.client import RegistryClient
from tests.support.mounts import tmpfs


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root can mount one here): a disk that fills up for real, and can be grown."""
    with tmpfs(tmp_path / "small", "size=2m") as mount:
        yield mount


@pytest.fixture
def converter(client: RegistryClient, root: Path) -> Converter:
    return Converter(client, DirectoryPublisher(root))


@pytest.fixture
def converter_factory(root: Path):
    """A converter into ``root`` with the given client."""

    def make(client: RegistryClient) -> Converter:
        return Converter(client, DirectoryPublisher(root))

    return make


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a free loopback port."""
    from tests.support.service import start_redis

    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def cvmfs(tmp_path):
    """A repository of its own on the real CernVM-FS 2.12 server (``cvmfs_server mkfs -o root``, removed
    with ``rmfs -f`` after the test), reached through the recorder that logs calls and injects faults
    (tests/support/cvmfs.py). Skips, saying why, where the real server cannot run (not root, no
    /dev/fuse); fails where it could but is not installed (run ./bootstrap.sh)."""
    from tests.support.cvmfs import real_cvmfs

    with real_cvmfs(tmp_path / "cvmfs-repo") as server:
        yield server


@pytest.fixture
def proxy(registry):
    """A fault-injecting proxy in front of the session registry (tests/support/proxy.py)."""
    from tests.support.proxy import FaultProxy

    p = FaultProxy(registry.host)
    yield p
    p.stop()
