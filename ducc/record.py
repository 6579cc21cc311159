"""The ``.metadata`` record of a converted image, as bytes and back. Pure: publishers store the files.

A record is three files in ``.metadata/<registry>/<repository>:<tag>/``:
``config.json`` (the image config), ``ducc.json`` (what ducc converted, when,
and from which digests; ``requested_by`` when a wishlist asked for it;
``thin_reference`` and ``thin_digest`` once a thin image of it was pushed) and ``manifest.json`` (the image manifest), written in
that order: ``manifest.json`` last, because its presence is what says "this tag
is converted". Records written by CVMFS's DUCC hold only ``manifest.json``
(with Go-struct keys, which the manifest parser reads case-insensitively).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ducc.layout import RECORD_CONFIG, RECORD_DETAILS, RECORD_MANIFEST
from ducc.model.digest import Digest
from ducc.model.manifest import ImageConfig, Manifest, Platform, parse_manifest
from ducc.model.reference import Reference

FILES = (RECORD_CONFIG, RECORD_DETAILS, RECORD_MANIFEST)  # the order they are written in: manifest last


@dataclass(frozen=True)
class Record:
    """What ``.metadata`` says about one converted tag.

    ``tag_digest`` is what the registry served for the tag (an index digest for
    multi-arch images); it is None for records written by DUCC, which stored only
    the manifest. ``details`` is ``ducc.json`` (empty for DUCC's records).
    """

    manifest: Manifest
    config_digest: Digest
    tag_digest: Digest | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    config: bytes | None = None

    @classmethod
    def create(
        cls, reference: Reference, platform: Platform, tag_digest: Digest, manifest: Manifest, config: ImageConfig,
        *, converted_at: str, converted_by: str, extra: Mapping[str, Any] | None = None,
    ) -> Record:
        details = {
            "reference": str(reference),
            "platform": str(platform),
            "tag_digest": str(tag_digest),
            "manifest_digest": str(manifest.digest),
            "config_digest": str(config.digest),
            "layers": [str(d.digest) for d in manifest.layers],
            "converted_at": converted_at,
            "converted_by": converted_by,
            **(extra or {}),
        }
        return cls(manifest, config.digest, tag_digest, details, config.raw)

    @classmethod
    def parse(cls, files: Mapping[str, bytes]) -> Record:
        """A record from its files (``manifest.json`` required); ValueError if they do not parse."""
        manifest = parse_manifest(files[RECORD_MANIFEST])
        if not isinstance(manifest, Manifest):
            raise ValueError("record manifest.json is an index, not an image manifest")
        raw_details = files.get(RECORD_DETAILS)
        details = json.loads(raw_details) if raw_details else {}
        if not isinstance(details, dict):
            raise ValueError("record ducc.json is not a JSON object")
        tag_digest = Digest.parse(details["tag_digest"]) if details.get("tag_digest") else None
        return cls(manifest, manifest.config.digest, tag_digest, details, files.get(RECORD_CONFIG))

    def files(self) -> dict[str, bytes]:
        """The files to write, in order (``manifest.json`` last)."""
        out: dict[str, bytes] = {}
        if self.config is not None:
            out[RECORD_CONFIG] = self.config
        if self.details:
            out[RECORD_DETAILS] = (json.dumps(dict(self.details), indent=2) + "\n").encode()
        out[RECORD_MANIFEST] = self.manifest.raw
        return out

    @property
    def layers(self) -> tuple[Digest, ...]:
        """The layer digests, base first."""
        return tuple(d.digest for d in self.manifest.layers)

    def with_thin(self, reference: Reference, digest: Digest) -> Record:
        """This record, saying that ``reference`` (a tag) serves the image's thin image at ``digest``."""
        return replace(self, details={**self.details, "thin_reference": str(reference), "thin_digest": str(digest)})

    @property
    def thin_reference(self) -> str | None:
        """Where the thin image of this conversion was pushed (a tag), if one was."""
        value = self.details.get("thin_reference")
        return str(value) if value else None

    @property
    def thin_digest(self) -> Digest | None:
        value = self.details.get("thin_digest")
        return Digest.parse(str(value)) if value else None

    @property
    def requested_by(self) -> str | None:
        """Who asked for this conversion (``wishlist <path>``), if it was recorded."""
        value = self.details.get("requested_by")
        return str(value) if value else None

    @property
    def converted_at(self) -> str | None:
        value = self.details.get("converted_at")
        return str(value) if value else None

    def container_config(self) -> dict[str, Any]:
        """The ``config`` object of the image config (Env, Entrypoint, Cmd, ...); empty if not recorded."""
        if not self.config:
            return {}
        try:
            container = json.loads(self.config).get("config")
        except (ValueError, AttributeError):
            return {}
        return container if isinstance(container, dict) else {}
