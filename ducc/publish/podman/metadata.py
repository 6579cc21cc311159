"""What podman reads in an additional image store, as values and JSON (docs/podman.md). Pure.

The store is containers/storage's ``overlay`` layout, read-only to podman::

    overlay/<layer-id>/diff            the layer's tree, whiteouts in overlay's form
    overlay/<layer-id>/link            the layer's short name, ``l/<link>`` → ``../<layer-id>/diff``
    overlay/<layer-id>/lower           ``l/<parent link>:l/<grandparent link>:…`` (absent on a base layer)
    overlay/l/<link>                   symlink to the layer's diff
    overlay-layers/layers.json         every layer: id, parent, digests, size
    overlay-images/images.json         every image: id (config hex), manifest digest, names, top layer
    overlay-images/<image-id>/<file>   the image's big data: ``manifest``, ``manifest-sha256:<hex>``, the
                                       config as ``sha256:<config hex>`` (file names encoded, ``big_data_file``)
    overlay-layers/layers.lock, overlay-images/images.lock   empty; a read-only store must have them

A layer's id is containers/image's chain of diff ids: the base layer's diff id hex, then
``sha256(<parent id> + "+" + <diff id hex>)``; the same layers below give the same id, so images share
them. ``Indexes`` holds both JSON lists and the operations ``add``/``remove``/``gc`` of the writer plan
on them; the writer (``ducc.publish.podman.store``) only commits the result.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from ducc.model.digest import Digest
from ducc.model.manifest import ImageConfig
from ducc.record import Record

OVERLAY = PurePosixPath("overlay")
LINKS = OVERLAY / "l"
LAYERS_INDEX = PurePosixPath("overlay-layers/layers.json")
IMAGES_INDEX = PurePosixPath("overlay-images/images.json")
IMAGES = IMAGES_INDEX.parent
LOCKS = (PurePosixPath("overlay-layers/layers.lock"), PurePosixPath("overlay-images/images.lock"))
MANIFEST_KEY = "manifest"  # the big data podman reads as "the" manifest of the image
_LINK_LENGTH = 26  # what the overlay driver's own link names have: 26 base32 characters


def layer_ids(diff_ids: Sequence[Digest]) -> tuple[str, ...]:
    """The store ids of an image's layers (base first), from their diff ids (base first)."""
    ids: list[str] = []
    for diff_id in diff_ids:
        ids.append(diff_id.hex if not ids else hashlib.sha256(f"{ids[-1]}+{diff_id.hex}".encode()).hexdigest())
    return tuple(ids)


def link_name(layer_id: str) -> str:
    """The layer's short name under ``overlay/l``: derived from its id (podman draws it at random), so a
    layer written twice, or into two stores, gets the same one."""
    return base64.b32encode(hashlib.sha256(layer_id.encode()).digest()).decode()[:_LINK_LENGTH]


def layer_dir(layer_id: str) -> PurePosixPath:
    return OVERLAY / layer_id


def link_path(layer_id: str) -> PurePosixPath:
    return LINKS / link_name(layer_id)


def link_target(layer_id: str) -> str:
    """What ``overlay/l/<link>`` holds: the diff, relative to ``overlay/l``."""
    return f"../{layer_id}/diff"


def lower(parents: Sequence[str]) -> str:
    """The ``lower`` file of a layer whose parents are ``parents`` (nearest first): their ``l/<link>``s."""
    return ":".join(f"{LINKS.name}/{link_name(p)}" for p in parents)


def image_dir(image_id: str) -> PurePosixPath:
    return IMAGES / image_id


def big_data_file(key: str) -> str:
    """The file name containers/storage gives the big data ``key``: the key itself if it holds only
    ``[a-z0-9.]``, else ``=`` and its base64 (``sha256:…`` and ``manifest-sha256:…`` are encoded)."""
    if key and all(c == "." or "0" <= c <= "9" or "a" <= c <= "z" for c in key):
        return key
    return "=" + base64.b64encode(key.encode()).decode()


def timestamp(when: str | None) -> str:
    """An RFC 3339 UTC time as Go's ``time.Time`` reads it, from ducc's ISO time (None: the epoch)."""
    if not when:
        return "1970-01-01T00:00:00Z"
    moment = datetime.fromisoformat(when.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class StoreLayer:
    """One entry of ``layers.json``. ``diff-size`` (the uncompressed tar's size) is not written: ducc keeps
    no tar, and podman then counts the layer as 0 bytes in ``podman images``."""

    id: str
    parent: str | None
    digest: Digest  # compressed, as in the manifest
    size: int
    diff_id: Digest
    created: str

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.parent:
            out["parent"] = self.parent
        out.update({
            "created": self.created,
            "compressed-diff-digest": str(self.digest),
            "compressed-size": self.size,
            "diff-digest": str(self.diff_id),
        })
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> StoreLayer:
        return cls(str(obj["id"]), obj.get("parent") or None, Digest.parse(obj["compressed-diff-digest"]),
                   int(obj.get("compressed-size", 0)), Digest.parse(obj["diff-digest"]), str(obj["created"]))


@dataclass(frozen=True)
class BigData:
    key: str
    size: int
    digest: Digest


@dataclass(frozen=True)
class StoreImage:
    """One entry of ``images.json``: ``id`` is the config digest's hex, ``digest`` the source manifest's,
    ``digests`` every manifest digest stored for it (one config may come with several manifests)."""

    id: str
    digest: Digest
    names: tuple[str, ...]
    layer: str
    created: str
    big_data: tuple[BigData, ...]
    digests: tuple[Digest, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "digest": str(self.digest),
        }
        if self.digests:
            out["digests"] = [str(d) for d in self.digests]
        out.update({
            "names": list(self.names),
            "layer": self.layer,
            "metadata": "{}",
            "big-data-names": [b.key for b in self.big_data],
            "big-data-sizes": {b.key: b.size for b in self.big_data},
            "big-data-digests": {b.key: str(b.digest) for b in self.big_data},
            "created": self.created,
        })
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> StoreImage:
        sizes, digests = obj.get("big-data-sizes") or {}, obj.get("big-data-digests") or {}
        big = tuple(BigData(k, int(sizes.get(k, 0)), Digest.parse(digests[k])) for k in obj.get("big-data-names") or ())
        return cls(str(obj["id"]), Digest.parse(obj["digest"]), tuple(obj.get("names") or ()), str(obj["layer"]),
                   str(obj["created"]), big, tuple(Digest.parse(d) for d in obj.get("digests") or ()))


@dataclass(frozen=True)
class Entry:
    """What one converted image brings to the store: its image entry, its layers (base first) and the
    big-data files (key → bytes) of ``overlay-images/<id>/``."""

    image: StoreImage
    layers: tuple[StoreLayer, ...]
    files: Mapping[str, bytes]


def entry_of(name: str, record: Record) -> Entry:
    """The store's view of the image ``record`` describes, named ``name`` (``<registry>/<repository>:<tag>``).

    ValueError if the record holds no config (records written by CVMFS's DUCC) or if the config's diff ids
    do not match the manifest's layers one for one."""
    if record.config is None:
        raise ValueError("the record holds no image config: the store needs its diff ids")
    config = ImageConfig.parse(record.config)
    if config.digest != record.config_digest:
        raise ValueError(f"the record's config is {config.digest}, its manifest names {record.config_digest}")
    layers = record.manifest.layers
    if len(config.diff_ids) != len(layers) or not layers:
        raise ValueError(f"the config lists {len(config.diff_ids)} diff ids for {len(layers)} layers")
    created = timestamp(record.converted_at)
    ids = layer_ids(config.diff_ids)
    store_layers = tuple(
        StoreLayer(layer_id, ids[i - 1] if i else None, descriptor.digest, descriptor.size, diff_id, created)
        for i, (layer_id, descriptor, diff_id) in enumerate(zip(ids, layers, config.diff_ids, strict=True))
    )
    manifest_digest = record.manifest.digest
    files = {
        str(config.digest): record.config,
        f"manifest-{manifest_digest.algorithm}:{manifest_digest.hex}": record.manifest.raw,
        MANIFEST_KEY: record.manifest.raw,
    }
    big = tuple(BigData(key, len(data), Digest.of(data)) for key, data in files.items())
    image = StoreImage(config.digest.hex, manifest_digest, (name,), ids[-1], created, big, (manifest_digest,))
    return Entry(image, store_layers, files)


@dataclass(frozen=True)
class Indexes:
    """``layers.json`` and ``images.json`` as ordered mappings by id. Every operation returns new indexes;
    none touches disk. A name belongs to one image at most; an image left without names is dropped."""

    layers: Mapping[str, StoreLayer] = field(default_factory=dict)
    images: Mapping[str, StoreImage] = field(default_factory=dict)

    @classmethod
    def parse(cls, layers_json: bytes | None, images_json: bytes | None) -> Indexes:
        """The indexes from the two files' bytes (None or empty: no entries); ValueError if one does not parse."""
        def entries(raw: bytes | None, what: str) -> list[Mapping[str, Any]]:
            if not raw or not raw.strip():
                return []
            value = json.loads(raw)
            if not isinstance(value, list):
                raise ValueError(f"{what} is not a JSON list")
            return value

        layers = (StoreLayer.from_json(o) for o in entries(layers_json, str(LAYERS_INDEX)))
        images = (StoreImage.from_json(o) for o in entries(images_json, str(IMAGES_INDEX)))
        return cls({layer.id: layer for layer in layers}, {image.id: image for image in images})

    def layers_json(self) -> bytes:
        return _dump([layer.to_json() for layer in self.layers.values()])

    def images_json(self) -> bytes:
        return _dump([image.to_json() for image in self.images.values()])

    def with_entry(self, entry: Entry) -> Indexes:
        """These indexes with ``entry``'s layers (new ones appended) and its image: its name taken from
        any other image, merged into the image of the same id if there is one; layers pruned (an image
        whose only name moved goes, and the layers only it used)."""
        layers = dict(self.layers)
        for layer in entry.layers:
            layers.setdefault(layer.id, layer)
        images = dict(self._without(entry.image.names).images)
        old = images.get(entry.image.id)
        if old is None:
            images[entry.image.id] = entry.image
        else:
            names = old.names + tuple(n for n in entry.image.names if n not in old.names)
            digests = old.digests + tuple(d for d in entry.image.digests if d not in old.digests)
            known = {b.key for b in old.big_data}
            big = old.big_data + tuple(b for b in entry.image.big_data if b.key not in known)
            images[entry.image.id] = replace(old, names=names, digests=digests, big_data=big)
        return Indexes(layers, images).pruned()

    def without(self, names: Collection[str]) -> Indexes:
        """These indexes with ``names`` taken from their images; layers no image uses are dropped."""
        return self._without(names).pruned()

    def keeping(self, names: Collection[str]) -> Indexes:
        """These indexes holding only the names in ``names`` (garbage collection); layers pruned."""
        every = {n for image in self.images.values() for n in image.names}
        return self.without(every - set(names))

    def _without(self, names: Collection[str]) -> Indexes:
        gone = set(names)
        images = {}
        for image_id, image in self.images.items():
            left = tuple(n for n in image.names if n not in gone)
            if left:
                images[image_id] = replace(image, names=left) if left != image.names else image
        return Indexes(self.layers, images)

    def pruned(self) -> Indexes:
        """These indexes without the layers that no image's chain of layers reaches."""
        used: set[str] = set()
        for image in self.images.values():
            layer_id: str | None = image.layer
            while layer_id is not None and layer_id not in used:
                used.add(layer_id)
                layer = self.layers.get(layer_id)
                layer_id = layer.parent if layer is not None else None
        return Indexes({i: layer for i, layer in self.layers.items() if i in used}, self.images)

    def chain(self, image_id: str) -> tuple[str, ...]:
        """The image's layer ids, top first (the order of a ``lower`` file)."""
        out: list[str] = []
        layer = self.layers.get(self.images[image_id].layer)
        while layer is not None:
            out.append(layer.id)
            layer = self.layers.get(layer.parent) if layer.parent else None
        return tuple(out)


def union(first: Indexes, second: Indexes) -> Indexes:
    """Layers of both (``first``'s order, then the new ones) and ``second``'s images: what ``layers.json``
    holds while ``images.json`` moves from ``first`` to ``second``, so no reader sees an image whose
    layers are missing."""
    layers = dict(first.layers)
    for layer_id, layer in second.layers.items():
        layers.setdefault(layer_id, layer)
    return Indexes(layers, second.images)


def names_of(images: Iterable[StoreImage]) -> set[str]:
    return {n for image in images for n in image.names}


def _dump(value: list[dict[str, Any]]) -> bytes:
    return (json.dumps(value, indent=1) + "\n").encode()
