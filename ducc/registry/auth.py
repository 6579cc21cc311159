"""Credentials for registries: the Keychain protocol and its sources.

A Keychain answers "which username/password for this registry host?". ducc
asks it only after a registry challenged a request, and sends what it returns
only to that host or to the token realm the host named.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ducc.model.reference import DOCKER_HUB_ALIASES, DOCKER_HUB_API

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:  # never print the secret, even in a traceback
        return f"Credentials(username={self.username!r}, password=***)"


class Keychain(Protocol):
    def credentials(self, host: str) -> Credentials | None: ...


@dataclass(frozen=True)
class StaticKeychain:
    """Fixed credentials for a set of hosts (from settings or tests)."""

    entries: Mapping[str, Credentials]

    def credentials(self, host: str) -> Credentials | None:
        return self.entries.get(host)


class RegistryKeychain:
    """One username/password for one registry, e.g. where thin images are pushed.

    ``registry`` is a host as references spell it (Docker Hub in any of its spellings);
    the credentials are offered to that registry's API host and to no other.
    """

    def __init__(self, registry: str, username: str, password: str) -> None:
        self.host = _api_host(registry)
        self._credentials = Credentials(username, password)

    def credentials(self, host: str) -> Credentials | None:
        return self._credentials if _api_host(host) == self.host else None

    def __repr__(self) -> str:
        return f"RegistryKeychain({self.host!r}, username={self._credentials.username!r})"


def _api_host(registry: str) -> str:
    name = registry.strip().lower()
    return DOCKER_HUB_API if name in DOCKER_HUB_ALIASES else name


def for_hosts(username: str | None, password: str | None, hosts: Iterable[str]) -> StaticKeychain:
    """One username/password (``DUCC_REGISTRY_USER``/``_PASSWORD``) for the hosts it is meant for.

    The hosts list is required: a password is never offered to a registry it was not meant for.
    """
    hosts = list(hosts)
    if not username:
        return ANONYMOUS
    if not hosts:
        log.warning("DUCC_REGISTRY_USER is set but DUCC_REGISTRY_HOSTS is empty: credentials unused")
    return StaticKeychain({host: Credentials(username, password or "") for host in hosts})


class DockerConfigKeychain:
    """``~/.docker/config.json`` (or ``$DOCKER_CONFIG``): auths, credsStore and credHelpers."""

    def __init__(self, config_path: str | None = None) -> None:
        from docker import auth  # imported here: only this keychain needs the docker package

        self._auth = auth
        self._config = auth.load_config(config_path=config_path)

    def credentials(self, host: str) -> Credentials | None:
        name = "docker.io" if host in ("registry-1.docker.io", "registry.hub.docker.com") else host
        try:
            entry = self._config.resolve_authconfig(name)
        except Exception as exc:  # a broken credential helper must not stop anonymous pulls
            log.warning("docker credential lookup for %s failed: %s", host, exc)
            return None
        if not entry:
            return None
        username = entry.get("Username") or entry.get("username")
        password = entry.get("Password") or entry.get("password") or entry.get("IdentityToken")
        if username and password:
            return Credentials(username, password)
        return None


@dataclass(frozen=True)
class ChainKeychain:
    """The first answer of several keychains, in order."""

    keychains: tuple[Keychain, ...]

    @classmethod
    def of(cls, keychains: Iterable[Keychain]) -> ChainKeychain:
        return cls(tuple(keychains))

    def credentials(self, host: str) -> Credentials | None:
        for keychain in self.keychains:
            found = keychain.credentials(host)
            if found:
                return found
        return None


ANONYMOUS = StaticKeychain({})
