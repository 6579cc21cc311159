"""Manifests, indexes and image configs (OCI image spec and Docker schema 2).

Parsing is case-insensitive on keys: DUCC's ``.metadata`` records serialise Go
structs (``SchemaVersion``, ``Config``, ``Layers``) and must stay readable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ducc.errors import InvalidManifest, InvalidPlatform, NoMatchingPlatform
from ducc.model import mediatypes
from ducc.model.digest import Digest


def _get(obj: Mapping[str, Any], key: str, default: Any = None) -> Any:
    if key in obj:
        return obj[key]
    lowered = key.lower()
    for name, value in obj.items():
        if name.lower() == lowered:
            return value
    return default


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidManifest(f"{what} must be a JSON object")
    return value


def _load(raw: bytes, what: str) -> Mapping[str, Any]:
    try:
        return _object(json.loads(raw), what)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidManifest(f"{what} is not valid JSON: {exc}") from exc


# The values the OCI image spec takes from Go's GOOS and GOARCH (``linux``, ``windows``, ``amd64``, ``arm64``,
# ``386``, ``ppc64le``, ``s390x``, ``riscv64``, ``mips64le``, ``unknown`` for attestations) and variants
# (``v5`` to ``v8``, amd64's ``v2`` to ``v4``). A platform names a directory (``.multiarch/<arch>[:<variant>]``,
# ``<os>-`` first for other systems), so ``.``, ``..``, ``/``, whitespace and control characters can never be
# part of one; an os has no ``-`` either, so ``<os>-<arch>`` names one platform only.
_OS = re.compile(r"[a-z0-9][a-z0-9_]{0,31}")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")


def _shown(value: object) -> str:
    """``value`` quoted with its control characters escaped, cut short: it is from outside and goes into one line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


@dataclass(frozen=True, order=True)
class Platform:
    """``os/architecture[/variant]``; arm64's default variant v8 is implied.

    The constructor refuses anything but the OCI grammar's lowercase names (``InvalidPlatform``), so no
    entry point (the CLI, the API, webhooks, wishlists, image indexes, records) can hand on one that would
    name another directory. ``parse`` and ``from_json`` lowercase first, as containerd does.
    """

    os: str
    architecture: str
    variant: str | None = None

    def __post_init__(self) -> None:
        for part, value, rule, chars in (("os", self.os, _OS, ", '_'"),
                                         ("architecture", self.architecture, _NAME, ", '_', '.', '-'"),
                                         ("variant", self.variant, _NAME, ", '_', '.', '-'")):
            if value is None and part == "variant":
                continue
            if not isinstance(value, str) or not rule.fullmatch(value):
                whole = "/".join(str(p) for p in (self.os, self.architecture, self.variant) if p is not None)
                raise InvalidPlatform(f"platform {_shown(whole)}: {part} {_shown(value)} is not a lowercase "
                                      f"name (up to 32 letters, digits{chars}; a letter or digit first)")

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]`` as a user writes it (case does not matter); InvalidPlatform otherwise."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidPlatform(f"platform {_shown(text)} is not os/arch[/variant]")
        parts = [p.lower() for p in parts]
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Platform:
        """The ``platform`` of an index entry; InvalidPlatform for values outside the grammar."""
        values = [_get(obj, "os", ""), _get(obj, "architecture", ""), _get(obj, "variant") or None]
        if not all(isinstance(v, str) for v in values[:2]) or not isinstance(values[2], str | None):
            raise InvalidPlatform(f"platform {_shown(dict(obj))}: os, architecture and variant must be strings")
        os_, architecture, variant = (v.lower() if isinstance(v, str) else v for v in values)
        return cls(os_, architecture, variant)

    def _normal_variant(self) -> str | None:
        if self.architecture == "arm64" and self.variant in (None, "v8"):
            return "v8"
        return self.variant

    def matches(self, wanted: Platform) -> bool:
        """True if this platform satisfies ``wanted`` (no variant asked: any variant)."""
        if (self.os, self.architecture) != (wanted.os, wanted.architecture):
            return False
        return wanted.variant is None or self._normal_variant() == wanted._normal_variant()

    @property
    def is_unknown(self) -> bool:
        """Attestation manifests in an index are marked ``unknown/unknown``."""
        return self.os == "unknown" or self.architecture == "unknown"

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


DEFAULT_PLATFORM = Platform("linux", "amd64")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: Any, what: str) -> Descriptor:
        obj = _object(obj, what)
        try:
            digest = Digest.parse(_get(obj, "digest", ""))
        except ValueError as exc:
            raise InvalidManifest(f"{what}: {exc}") from exc
        size = _get(obj, "size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidManifest(f"{what}: size must be a non-negative integer")
        platform = _get(obj, "platform")
        try:
            # An entry without os and architecture names no platform (it is never selected); one with
            # values outside the grammar makes the whole index invalid: it cannot be trusted to name paths.
            named = isinstance(platform, Mapping) and (_get(platform, "os") or _get(platform, "architecture"))
            selectable = Platform.from_json(platform) if named else None
        except InvalidPlatform as exc:
            raise InvalidManifest(f"{what}: {exc}") from exc
        return cls(
            media_type=str(_get(obj, "mediaType", "")),
            digest=digest,
            size=size,
            platform=selectable,
            urls=tuple(_get(obj, "urls") or ()),
        )


@dataclass(frozen=True)
class Manifest:
    """An image manifest: one config and its layers, base layer first."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    raw: bytes = field(repr=False)

    @property
    def digest(self) -> Digest:
        return Digest.of(self.raw)


@dataclass(frozen=True)
class Index:
    """An OCI image index or Docker manifest list."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    raw: bytes = field(repr=False)

    @property
    def digest(self) -> Digest:
        return Digest.of(self.raw)

    def select(self, wanted: Platform) -> Descriptor:
        """The image manifest for ``wanted``; ``unknown/unknown`` entries (attestations) never match."""
        candidates = [
            d
            for d in self.manifests
            if d.platform is not None and not d.platform.is_unknown and d.platform.matches(wanted)
        ]
        if not candidates:
            offered = sorted({str(d.platform) for d in self.manifests if d.platform and not d.platform.is_unknown})
            raise NoMatchingPlatform(f"no {wanted} image in this index (it offers: {', '.join(offered) or 'none'})")
        exact = [d for d in candidates if d.platform is not None and d.platform.variant == wanted.variant]
        return (exact or candidates)[0]


def parse_manifest(raw: bytes, content_type: str | None = None) -> Manifest | Index:
    """Parse an image manifest or an index; the body's ``mediaType`` wins over the HTTP header."""
    obj = _load(raw, "manifest")
    schema = _get(obj, "schemaVersion")
    if schema != 2:
        raise InvalidManifest(f"manifest schemaVersion {schema!r} is not supported (only schema 2 / OCI)")
    media_type = _get(obj, "mediaType") or (content_type or "").split(";")[0].strip()
    if not media_type:
        media_type = mediatypes.OCI_INDEX if _get(obj, "manifests") is not None else mediatypes.OCI_MANIFEST
    if media_type in mediatypes.INDEXES:
        entries = _get(obj, "manifests")
        if not isinstance(entries, list):
            raise InvalidManifest("index has no manifests list")
        return Index(
            media_type,
            tuple(Descriptor.from_json(e, f"index entry {i}") for i, e in enumerate(entries)),
            raw,
        )
    if media_type in mediatypes.IMAGE_MANIFESTS:
        layers = _get(obj, "layers")
        if not isinstance(layers, list):
            raise InvalidManifest("manifest has no layers list")
        return Manifest(
            media_type,
            Descriptor.from_json(_get(obj, "config"), "manifest config"),
            tuple(Descriptor.from_json(e, f"layer {i}") for i, e in enumerate(layers)),
            raw,
        )
    raise InvalidManifest(f"unsupported manifest media type {media_type!r}")


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config ducc uses; ``diff_ids`` are base layer first."""

    raw: bytes = field(repr=False)
    os: str
    architecture: str
    diff_ids: tuple[Digest, ...]
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    working_dir: str = ""
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> Digest:
        return Digest.of(self.raw)

    @classmethod
    def parse(cls, raw: bytes) -> ImageConfig:
        obj = _load(raw, "image config")
        rootfs = _object(_get(obj, "rootfs", {}), "config rootfs")
        try:
            diff_ids = tuple(Digest.parse(d) for d in _get(rootfs, "diff_ids") or ())
        except ValueError as exc:
            raise InvalidManifest(f"config rootfs.diff_ids: {exc}") from exc
        conf = _get(obj, "config") or {}
        conf = _object(conf, "config.config")

        def strings(key: str) -> tuple[str, ...] | None:
            value = _get(conf, key)
            if value is None:
                return None
            if isinstance(value, str):
                return (value,)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InvalidManifest(f"config {key} must be a list of strings")
            return tuple(value)

        labels = _get(conf, "Labels") or {}
        if not isinstance(labels, Mapping):
            raise InvalidManifest("config Labels must be an object")
        return cls(
            raw=raw,
            os=str(_get(obj, "os", "")),
            architecture=str(_get(obj, "architecture", "")),
            diff_ids=diff_ids,
            env=strings("Env") or (),
            entrypoint=strings("Entrypoint"),
            cmd=strings("Cmd"),
            working_dir=str(_get(conf, "WorkingDir") or ""),
            user=str(_get(conf, "User") or ""),
            labels={str(k): str(v) for k, v in labels.items()},
        )
