"""Shared fixtures: real registry processes and ducc's client for them."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ducc.model.reference import Reference
from ducc.registry.auth import Credentials, StaticKeychain
from ducc.registry.client import RegistryClient, RetryPolicy
from tests.support.processes import Registry, start_registry
from tests.support.tokens import ISSUER, SERVICE, TokenServer

_names = itertools.count()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench", action="store_true", help="also run the timing benchmarks (tests marked bench)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Benchmarks measure speed and prove no behaviour the other tests do not: the default run (and CI,
    on two cores within its time limit) leaves them out, saying so, unless asked for."""
    if config.getoption("--bench") or os.environ.get("DUCC_BENCH") == "1":
        return
    skip = pytest.mark.skip(reason="a timing benchmark: run with --bench or DUCC_BENCH=1")
    for item in items:
        if item.get_closest_marker("bench"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """One real ``docker-registry`` for the whole session; tests use distinct repository names."""
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A real registry that demands Basic auth (htpasswd)."""
    reg = start_registry(tmp_path_factory.mktemp("auth-registry"), username="ducc", password="s3cr3t-pw")
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, TokenServer]]:
    """A real registry in Bearer-token mode, with its token service."""
    directory = tmp_path_factory.mktemp("token-registry")
    tokens = TokenServer(directory, "ducc", "t0ken-pw")
    reg = start_registry(directory, token={"realm": tokens.realm, "service": SERVICE, "issuer": ISSUER,
                                           "rootcertbundle": str(tokens.cert_path)})
    yield reg, tokens
    reg.stop()
    tokens.stop()


@pytest.fixture
def client() -> RegistryClient:
    return RegistryClient(retry=RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2))


@pytest.fixture
def auth_client(auth_registry: Registry) -> RegistryClient:
    keychain = StaticKeychain({auth_registry.host: Credentials("ducc", "s3cr3t-pw")})
    return RegistryClient(keychain=keychain, retry=RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2))


@pytest.fixture
def unique_ref(registry: Registry, request: pytest.FixtureRequest):
    """A function giving a fresh reference in the session registry: ``unique_ref("tag")``."""

    def make(tag: str = "v1", host: str | None = None) -> Reference:
        name = request.node.name.lower().split("[")[0].replace("_", "-")[:50].strip("-")
        return Reference.parse(f"{host or registry.host}/t{next(_names)}/{name}:{tag}")

    return make


@pytest.fixture(autouse=True)
def _ducc_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ducc")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    return path
