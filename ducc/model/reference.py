"""Image references: every input form of docs/design.md §2 parsed into one frozen value.

Accepted forms: ``ubuntu``, ``ubuntu:24.04``, ``library/ubuntu@sha256:…``,
``ghcr.io/org/img:tag``, ``127.0.0.1:5000/team/img:tag`` and DUCC's URL form
``https://registry.hub.docker.com/library/ubuntu:latest``.

Docker Hub is spelled ``registry.hub.docker.com`` (the name public paths use);
its API lives on ``registry-1.docker.io``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from ducc.errors import InvalidReference
from ducc.model.digest import Digest

DOCKER_HUB = "registry.hub.docker.com"
DOCKER_HUB_API = "registry-1.docker.io"
DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com", "hub.docker.com"}
)

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$"
)


@dataclass(frozen=True)
class ReferenceParts:
    """A reference split into its pieces, the tag not yet validated (wishlists put globs there)."""

    registry: str
    repository: str
    tag: str | None
    digest: Digest | None
    scheme: str | None


def split_reference(text: str) -> ReferenceParts:
    """Split ``text`` into registry, repository, tag and digest, applying Docker Hub defaults."""
    original = text
    text = text.strip()
    scheme = None
    match = re.match(r"^(https?)://", text)
    if match:
        scheme = match.group(1)
        text = text[match.end() :]
    if not text:
        raise InvalidReference(f"empty image reference {original!r}")

    digest = None
    if "@" in text:
        text, _, digest_text = text.partition("@")
        try:
            digest = Digest.parse(digest_text)
        except ValueError as exc:
            raise InvalidReference(f"{original!r}: {exc}") from exc

    tag = None
    last_slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > last_slash:
        text, tag = text[:colon], text[colon + 1 :]

    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or scheme):
        registry, repository = first, rest
    else:
        registry, repository = DOCKER_HUB, text
    if not _HOST.match(registry):
        raise InvalidReference(f"{original!r}: {registry!r} is not a registry host")
    if registry.lower() in DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in repository:
            repository = f"library/{repository}"
    components = repository.split("/")
    if not repository or not all(_COMPONENT.match(c) for c in components):
        raise InvalidReference(
            f"{original!r}: repository {repository!r} must be lowercase path components "
            "of letters, digits and single separators (. _ __ -)"
        )
    if len(registry) + 1 + len(repository) > 255:
        raise InvalidReference(f"{original!r}: name longer than 255 characters")
    return ReferenceParts(registry, repository, tag, digest, scheme)


@dataclass(frozen=True)
class Reference:
    """A parsed image reference.

    ``tag`` defaults to ``latest`` unless a digest is given; with both, the digest
    is what is pulled and the tag is what is published.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None
    scheme: str | None = field(default=None, compare=False)  # a hint from DUCC's URL form only

    def __post_init__(self) -> None:
        if self.tag is None and self.digest is None:
            raise InvalidReference(f"{self.registry}/{self.repository}: neither tag nor digest")
        if self.tag is not None and not _TAG.match(self.tag):
            raise InvalidReference(f"{self.registry}/{self.repository}: invalid tag {self.tag!r}")

    @classmethod
    def parse(cls, text: str) -> Reference:
        parts = split_reference(text)
        tag = parts.tag if parts.tag is not None or parts.digest else "latest"
        return cls(parts.registry, parts.repository, tag, parts.digest, parts.scheme)

    @property
    def is_docker_hub(self) -> bool:
        return self.registry == DOCKER_HUB

    @property
    def api_host(self) -> str:
        """host[:port] that serves the registry HTTP API."""
        return DOCKER_HUB_API if self.is_docker_hub else self.registry

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def selector(self) -> str:
        """What goes after ``/manifests/``: the digest if known, else the tag."""
        return str(self.digest) if self.digest else str(self.tag)

    def with_tag(self, tag: str) -> Reference:
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: Digest) -> Reference:
        return replace(self, digest=digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text
