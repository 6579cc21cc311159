"""Publishing into a repository: the Publisher protocol and the record of a converted image.

The conversion code builds trees in a staging directory the publisher hands
out, then asks the publisher to make them visible in this order: layers, flat
root, tag link, record. Each step is all-or-nothing; an image counts as
converted only once its record is written, and a reader never sees a
half-written tree.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ducc.model.digest import Digest
from ducc.model.manifest import Manifest, Platform, parse_manifest
from ducc.model.reference import Reference


@dataclass(frozen=True)
class Record:
    """What ``.metadata`` says about one converted tag.

    ``tag_digest`` is what the registry served for the tag (an index digest for
    multi-arch images); it is None for records written by DUCC, which stored only
    the manifest.
    """

    manifest: Manifest
    config_digest: Digest
    tag_digest: Digest | None = None
    details: dict[str, Any] | None = None

    @classmethod
    def parse(cls, manifest_raw: bytes, details_raw: bytes | None) -> Record:
        manifest = parse_manifest(manifest_raw)
        if not isinstance(manifest, Manifest):
            raise ValueError("record manifest.json is an index, not an image manifest")
        details = json.loads(details_raw) if details_raw else None
        tag_digest = Digest.parse(details["tag_digest"]) if details and details.get("tag_digest") else None
        return cls(manifest, manifest.config.digest, tag_digest, details)


class Transaction(Protocol):
    """Changes to one repository; each method makes one complete thing visible, or nothing."""

    def add_layer(self, digest: Digest, staged: Path) -> None:
        """Publish ``staged`` (a directory holding ``layerfs``) unless the layer is already there."""

    def add_flat(self, config_digest: Digest, staged: Path) -> None:
        """Publish ``staged`` as the flat root unless one with this config digest is there."""

    def point_tag(self, ref: Reference, platform: Platform, config_digest: Digest) -> None:
        """Make the public path of ``ref`` lead to the flat root, replacing any older target."""

    def write_record(self, ref: Reference, platform: Platform, files: dict[str, bytes]) -> None:
        """Write the ``.metadata`` files; ``manifest.json`` last, the mark of a finished conversion."""


class Publisher(Protocol):
    """A repository that images are published into."""

    name: str

    def has_layer(self, digest: Digest) -> bool: ...

    def layer_source(self, digest: Digest) -> Path:
        """A readable path of the published ``layerfs`` (flattening reads it)."""
        ...

    def has_flat(self, config_digest: Digest) -> bool: ...

    def read_record(self, ref: Reference, platform: Platform) -> Record | None: ...

    def staging(self) -> AbstractContextManager[Path]:
        """A private scratch directory, removed on exit, on the filesystem where trees get built."""
        ...

    def transaction(self, ref: Reference) -> AbstractContextManager[Transaction]:
        """Exclusive write access to the repository (serialised with other writers)."""
        ...

    def published(self) -> Iterator[tuple[str, Path]]:
        """Every public image path with the flat root it leads to."""
        ...
