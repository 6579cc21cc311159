"""An image factory: real OCI/Docker images from declarative recipes, pushed with ducc's own client.

A recipe lists layers base first; each layer lists entries in tar order::

    image = ImageSpec(layers=[
        Layer([Dir("etc"), File("etc/os-release", b"ID=test\\n")]),
        Layer([Whiteout("etc/os-release"), Opaque("var")], compression="zstd"),
    ], env=["PATH=/bin"], cmd=["/bin/sh"])
    push_image(client, Reference.parse(f"{registry}/t/img:1"), image)
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from dataclasses import dataclass, field

import zstandard

from ducc.model import mediatypes
from ducc.model.digest import Digest
from ducc.model.reference import Reference
from ducc.registry.client import RegistryClient

MTIME = 1_700_000_000


@dataclass(frozen=True)
class File:
    path: str
    content: bytes = b""
    mode: int = 0o644


@dataclass(frozen=True)
class Dir:
    path: str
    mode: int = 0o755


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str


@dataclass(frozen=True)
class Hardlink:
    path: str
    target: str


@dataclass(frozen=True)
class Whiteout:
    path: str  # the path to delete; the entry is <dir>/.wh.<name>


@dataclass(frozen=True)
class Opaque:
    directory: str  # the entry is <directory>/.wh..wh..opq


@dataclass(frozen=True)
class Fifo:
    path: str


@dataclass(frozen=True)
class Device:
    path: str
    major: int = 1
    minor: int = 3


@dataclass(frozen=True)
class Raw:
    """A tar entry exactly as given (hostile names, odd types)."""

    name: str
    type: bytes = tarfile.REGTYPE
    content: bytes = b""
    linkname: str = ""
    mode: int = 0o644


Entry = File | Dir | Symlink | Hardlink | Whiteout | Opaque | Fifo | Device | Raw


@dataclass(frozen=True)
class Layer:
    entries: list[Entry]
    compression: str = "gzip"  # gzip | zstd | none


@dataclass
class ImageSpec:
    layers: list[Layer]
    env: list[str] = field(default_factory=lambda: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    working_dir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    architecture: str = "amd64"
    os: str = "linux"
    variant: str | None = None
    docker: bool = False  # Docker schema 2 media types instead of OCI


def _info(name: str, type_: bytes, mode: int = 0o644, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.mode = mode
    info.size = size
    info.linkname = linkname
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _wh_name(path: str, prefix: str = ".wh.") -> str:
    directory, _, name = path.rpartition("/")
    return f"{directory}/{prefix}{name}" if directory else f"{prefix}{name}"


def layer_tar(layer: Layer) -> bytes:
    """The uncompressed tar of a layer, entries in recipe order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in layer.entries:
            if isinstance(entry, File):
                tar.addfile(_info(entry.path, tarfile.REGTYPE, entry.mode, len(entry.content)), io.BytesIO(entry.content))
            elif isinstance(entry, Dir):
                tar.addfile(_info(entry.path, tarfile.DIRTYPE, entry.mode))
            elif isinstance(entry, Symlink):
                tar.addfile(_info(entry.path, tarfile.SYMTYPE, 0o777, linkname=entry.target))
            elif isinstance(entry, Hardlink):
                tar.addfile(_info(entry.path, tarfile.LNKTYPE, 0o644, linkname=entry.target))
            elif isinstance(entry, Whiteout):
                tar.addfile(_info(_wh_name(entry.path), tarfile.REGTYPE, 0o644))
            elif isinstance(entry, Opaque):
                tar.addfile(_info(f"{entry.directory}/.wh..wh..opq" if entry.directory else ".wh..wh..opq", tarfile.REGTYPE))
            elif isinstance(entry, Fifo):
                tar.addfile(_info(entry.path, tarfile.FIFOTYPE, 0o644))
            elif isinstance(entry, Device):
                info = _info(entry.path, tarfile.CHRTYPE, 0o666)
                info.devmajor, info.devminor = entry.major, entry.minor
                tar.addfile(info)
            elif isinstance(entry, Raw):
                info = _info(entry.name, entry.type, entry.mode, len(entry.content), entry.linkname)
                tar.addfile(info, io.BytesIO(entry.content) if entry.content else None)
    return buffer.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def layer_media_type(compression: str, docker: bool) -> str:
    if docker:
        return mediatypes.DOCKER_LAYER_GZIP if compression == "gzip" else mediatypes.DOCKER_LAYER
    return {"gzip": mediatypes.OCI_LAYER_GZIP, "zstd": mediatypes.OCI_LAYER_ZSTD, "none": mediatypes.OCI_LAYER}[compression]


@dataclass
class BuiltImage:
    manifest: bytes
    manifest_media_type: str
    config: bytes
    blobs: dict[Digest, bytes]

    @property
    def digest(self) -> Digest:
        return Digest.of(self.manifest)

    @property
    def config_digest(self) -> Digest:
        return Digest.of(self.config)

    @property
    def layer_digests(self) -> list[Digest]:
        return [Digest.parse(layer["digest"]) for layer in json.loads(self.manifest)["layers"]]


def build(spec: ImageSpec) -> BuiltImage:
    blobs: dict[Digest, bytes] = {}
    layers, diff_ids = [], []
    for layer in spec.layers:
        tar = layer_tar(layer)
        blob = compress(tar, layer.compression)
        digest = Digest.of(blob)
        blobs[digest] = blob
        diff_ids.append(str(Digest.of(tar)))
        layers.append({"mediaType": layer_media_type(layer.compression, spec.docker),
                       "digest": str(digest), "size": len(blob)})
    container_config: dict = {"Env": spec.env}
    if spec.entrypoint is not None:
        container_config["Entrypoint"] = spec.entrypoint
    if spec.cmd is not None:
        container_config["Cmd"] = spec.cmd
    if spec.working_dir:
        container_config["WorkingDir"] = spec.working_dir
    if spec.user:
        container_config["User"] = spec.user
    if spec.labels:
        container_config["Labels"] = spec.labels
    config_obj = {
        "architecture": spec.architecture, "os": spec.os, "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "created": "2026-01-01T00:00:00Z",
    }
    if spec.variant:
        config_obj["variant"] = spec.variant
    config = json.dumps(config_obj, sort_keys=True).encode()
    blobs[Digest.of(config)] = config
    media = mediatypes.DOCKER_MANIFEST if spec.docker else mediatypes.OCI_MANIFEST
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": media,
        "config": {"mediaType": mediatypes.DOCKER_CONFIG if spec.docker else mediatypes.OCI_CONFIG,
                   "digest": str(Digest.of(config)), "size": len(config)},
        "layers": layers,
    }, sort_keys=True).encode()
    return BuiltImage(manifest, media, config, blobs)


def push_built(client: RegistryClient, ref: Reference, built: BuiltImage, tag: bool = True) -> Digest:
    for digest, blob in built.blobs.items():
        client.push_blob(ref, digest, blob)
    target = ref if tag else ref.with_digest(built.digest)
    if not tag:
        target = Reference(ref.registry, ref.repository, None, built.digest)
    return client.push_manifest(target, built.manifest, built.manifest_media_type)


def push_image(client: RegistryClient, ref: Reference, spec: ImageSpec) -> BuiltImage:
    built = build(spec)
    push_built(client, ref, built)
    return built


def push_index(client: RegistryClient, ref: Reference, specs: list[ImageSpec], extra: list[dict] | None = None) -> dict:
    """Push one image per spec by digest, then an OCI index over them at ``ref``'s tag."""
    entries = []
    built_by_platform = {}
    for spec in specs:
        built = build(spec)
        push_built(client, ref, built, tag=False)
        platform = {"architecture": spec.architecture, "os": spec.os}
        if spec.variant:
            platform["variant"] = spec.variant
        entries.append({"mediaType": built.manifest_media_type, "digest": str(built.digest),
                        "size": len(built.manifest), "platform": platform})
        built_by_platform[f"{spec.os}/{spec.architecture}" + (f"/{spec.variant}" if spec.variant else "")] = built
    entries.extend(extra or [])
    index = json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": entries}).encode()
    client.push_manifest(ref, index, mediatypes.OCI_INDEX)
    return {"index": index, "images": built_by_platform}


def host_programs_layer(programs: list[str]) -> Layer:
    """A layer holding real programs of this machine with the shared libraries they load,
    at their real paths, plus every symlink on the way (usrmerge's ``/bin -> usr/bin`` and the like),
    so tests can run commands inside converted images without any network."""
    import os
    import subprocess

    needed: set[str] = set()
    for program in programs:
        needed.add(program)
        out = subprocess.run(["ldd", program], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            for part in parts:
                if part.startswith("/"):
                    needed.add(part)
    entries: dict[str, Entry] = {}

    def add_path(path: str) -> None:
        """Record every symlink met while resolving ``path`` and the file it ends at."""
        current = "/"
        parts = [p for p in path.split("/") if p]
        while parts:
            part = parts.pop(0)
            candidate = os.path.join(current, part)
            if os.path.islink(candidate):
                target = os.readlink(candidate)
                entries.setdefault(candidate.lstrip("/"), Symlink(candidate.lstrip("/"), target))
                resolved = os.path.normpath(os.path.join(current, target)) if not target.startswith("/") else target
                parts = [p for p in resolved.split("/") if p] + parts
                current = "/"
                continue
            current = candidate
            if os.path.isdir(current):
                entries.setdefault(current.lstrip("/"), Dir(current.lstrip("/")))
        rel = current.lstrip("/")
        if rel not in entries:
            with open(current, "rb") as fh:
                entries[rel] = File(rel, fh.read(), 0o755)

    for path in sorted(needed):
        add_path(path)
    ordered = sorted(entries.values(), key=lambda e: (not isinstance(e, Dir), e.path))  # type: ignore[union-attr]
    return Layer(list(ordered))
