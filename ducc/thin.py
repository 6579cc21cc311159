"""Thin images (docs/design.md §7): the small image that points at a converted image's layers in CVMFS.

Pure: bytes in, bytes out; pushing is ``ducc.registry.push``.

A thin image is an ordinary Docker schema 2 image whose single layer holds one
file, ``thin.json``, in the format of CVMFS's DUCC and its Docker graph driver::

    {
      "version": "1.0",
      "origin": "https://registry.hub.docker.com/library/ubuntu:24.04",
      "layers": [
        {
          "digest": "<hex>",
          "url": "cvmfs://unpacked.cern.ch/.layers/ab/<hex>/layerfs"
        }
      ]
    }

``layers`` are the source manifest's layers, base layer first, keyed by their
compressed digest (hex, no algorithm) like ``.layers``. The config carries
``CVMFS_IMAGE=true`` and the source's Env, Entrypoint, Cmd, WorkingDir, User
and Labels.

Promises: the same source image, reference and repository give byte-identical
blobs and manifest, on any machine: the tar has fixed metadata, the gzip stream
is written here with stored deflate blocks (so no zlib build can change it), and
every JSON document has a fixed key order and no clock time.

Naming (``thin_reference``) expands DUCC's ``output_format`` variables.
"""

from __future__ import annotations

import io
import json
import re
import struct
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ducc import layout
from ducc.errors import InvalidReference, WishlistError
from ducc.model import mediatypes
from ducc.model.digest import Digest
from ducc.model.manifest import ImageConfig, Manifest
from ducc.model.reference import Reference

THIN_JSON = "thin.json"
THIN_VERSION = "1.0"
CVMFS_IMAGE_ENV = "CVMFS_IMAGE=true"
DEFAULT_OUTPUT_FORMAT = "$(scheme)://$(registry)/$(repository)_thin:$(tag)"
EPOCH = "1970-01-01T00:00:00Z"  # the only time a thin config states: builds are reproducible
OUTPUT_VARIABLES = ("scheme", "registry", "repository", "tag", "digest", "reference", "image")
_VARIABLE = re.compile(r"\$\(([^)]*)\)")
_REPOSITORY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*(?:/[A-Za-z0-9_.-]+)*$")


@dataclass(frozen=True)
class ThinImage:
    """A thin image ready to push: push every blob, then ``manifest`` (as ``media_type``)."""

    manifest: bytes = field(repr=False)
    thin_json: bytes = field(repr=False)
    config_digest: Digest
    layer_digest: Digest
    diff_id: Digest
    blobs: Mapping[Digest, bytes] = field(repr=False, compare=False)  # the layer first, then the config
    media_type: str = mediatypes.DOCKER_MANIFEST

    @property
    def manifest_digest(self) -> Digest:
        return Digest.of(self.manifest)


def origin(source: Reference) -> str:
    """The source as DUCC writes it in ``thin.json``: ``scheme://registry/repository[:tag][@digest]``."""
    text = f"{source.scheme or 'https'}://{source.registry}/{source.repository}"
    if source.tag is not None:
        text += f":{source.tag}"
    if source.digest is not None:
        text += f"@{source.digest}"
    return text


def layer_url(cvmfs_repo: str, digest: Digest) -> str:
    """``cvmfs://<repo>/.layers/xx/<hex>/layerfs``: where a converted layer lives in CVMFS."""
    return f"cvmfs://{cvmfs_repo}/{layout.layerfs(digest)}"


def thin_json(source: Reference, manifest: Manifest, cvmfs_repo: str) -> bytes:
    """The ``thin.json`` of ``source``: DUCC's fields in DUCC's order, indented as DUCC indents them."""
    document = {
        "version": THIN_VERSION,
        "origin": origin(source),
        "layers": [{"digest": layer.digest.hex, "url": layer_url(cvmfs_repo, layer.digest)} for layer in manifest.layers],
    }
    return _go_json(json.dumps(document, indent=2, ensure_ascii=False)).encode()


def build_thin_image(source: Reference, manifest: Manifest, config: ImageConfig, cvmfs_repo: str) -> ThinImage:
    """The thin image of ``source`` (converted into ``cvmfs_repo``, optionally ``repo/subdir``).

    ``manifest`` and ``config`` are the source's, already verified by whoever fetched them.
    """
    repo = cvmfs_repository(cvmfs_repo)
    document = thin_json(source, manifest, repo)
    tar = _single_file_tar(THIN_JSON, document)
    layer = _gzip_stored(tar)
    diff_id = Digest.of(tar)
    config_blob = _canonical(_thin_config(source, config, diff_id))
    layer_digest, config_digest = Digest.of(layer), Digest.of(config_blob)
    manifest_blob = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.DOCKER_MANIFEST,
            "config": {"mediaType": mediatypes.DOCKER_CONFIG, "size": len(config_blob), "digest": str(config_digest)},
            "layers": [{"mediaType": mediatypes.DOCKER_LAYER_GZIP, "size": len(layer), "digest": str(layer_digest)}],
        },
        separators=(",", ":"),
    ).encode()
    return ThinImage(
        manifest=manifest_blob,
        thin_json=document,
        config_digest=config_digest,
        layer_digest=layer_digest,
        diff_id=diff_id,
        blobs=MappingProxyType({layer_digest: layer, config_digest: config_blob}),
    )


# -- naming ------------------------------------------------------------------------------


def output_variables(source: Reference, scheme: str | None = None) -> dict[str, str]:
    """DUCC's ``output_format`` variables for ``source``.

    ``reference`` is DUCC's: ``:tag``, ``@digest`` or ``:tag@digest``. ``image`` is
    docs/design.md §3's: the repository plus ``:tag``, or ``@digest`` when there is no tag.
    ``registry`` is the name public paths use (Docker Hub is ``registry.hub.docker.com``).
    """
    reference = (f":{source.tag}" if source.tag is not None else "") + (f"@{source.digest}" if source.digest else "")
    return {
        "scheme": scheme or source.scheme or "https",
        "registry": source.registry,
        "repository": source.repository,
        "tag": source.tag or "",
        "digest": str(source.digest) if source.digest else "",
        "reference": reference,
        "image": layout.image_name(source),
    }


def expand_output_format(output_format: str, source: Reference, scheme: str | None = None) -> str:
    """``output_format`` with every ``$(variable)`` replaced; an unknown variable is a WishlistError."""
    values = output_variables(source, scheme)

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise WishlistError(
                f"output_format {output_format!r}: unknown variable $({name}) "
                f"(known: {', '.join(f'$({v})' for v in OUTPUT_VARIABLES)})"
            )
        return values[name]

    return _VARIABLE.sub(substitute, output_format)


def thin_reference(output_format: str, source: Reference) -> Reference:
    """Where the thin image of ``source`` is pushed: ``output_format`` expanded and parsed.

    A name without a tag means ``latest`` (as ``docker push`` would); a name with a
    digest, or an empty tag (``$(tag)`` of a digest-only source), is a WishlistError
    naming the format: the thin manifest's digest is computed, not chosen.
    """
    text = expand_output_format(output_format or DEFAULT_OUTPUT_FORMAT, source)
    try:
        target = Reference.parse(text)
    except InvalidReference as exc:
        raise WishlistError(f"output_format {output_format!r} gives {text!r} for {source}: {exc}") from exc
    if target.digest is not None:
        raise WishlistError(
            f"output_format {output_format!r} gives {text!r} for {source}: a thin image is pushed under a tag, "
            "so its name cannot carry a digest"
        )
    return target


# -- bytes -------------------------------------------------------------------------------


def cvmfs_repository(value: str) -> str:
    """``value`` as layer URLs spell it (``repo`` or ``repo/subdir``, no slashes around); ValueError if
    it is not a CVMFS repository name."""
    repo = value.strip().strip("/")
    if not _REPOSITORY_NAME.match(repo) or ".." in repo.split("/"):
        raise ValueError(f"{value!r} is not a CVMFS repository name (like unpacked.cern.ch or repo/subdir)")
    return repo


def _thin_config(source: Reference, config: ImageConfig, diff_id: Digest) -> dict[str, Any]:
    container: dict[str, Any] = {
        # DUCC puts CVMFS_IMAGE first; a source's own CVMFS_IMAGE would contradict it.
        "Env": [CVMFS_IMAGE_ENV, *(e for e in config.env if e.split("=", 1)[0] != "CVMFS_IMAGE")],
    }
    if config.entrypoint is not None:
        container["Entrypoint"] = list(config.entrypoint)
    if config.cmd is not None:
        container["Cmd"] = list(config.cmd)
    if config.working_dir:
        container["WorkingDir"] = config.working_dir
    if config.user:
        container["User"] = config.user
    if config.labels:
        container["Labels"] = dict(config.labels)
    out: dict[str, Any] = {
        "architecture": config.architecture or "amd64",
        "os": config.os or "linux",
        "created": EPOCH,
        "config": container,
        "rootfs": {"type": "layers", "diff_ids": [str(diff_id)]},
        "history": [{"created": EPOCH, "created_by": f"ducc: thin image of {origin(source)}"}],
    }
    variant = _variant(config.raw)
    if variant:
        out["variant"] = variant
    return out


def _variant(raw: bytes) -> str | None:
    try:
        value = json.loads(raw).get("variant")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def _canonical(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _go_json(text: str) -> str:
    """What Go's ``encoding/json`` writes for the same document: it escapes these for HTML safety.

    They can only occur inside JSON strings, so replacing them everywhere is exact.
    """
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text


def _single_file_tar(name: str, content: bytes) -> bytes:
    """A ustar archive of one regular file, ``root:root 0644``, mtime 0, no owner names."""
    info = tarfile.TarInfo(name)
    info.size = len(content)
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _gzip_stored(data: bytes) -> bytes:
    """A gzip member (RFC 1952) of stored deflate blocks (RFC 1951 §3.2.4): no mtime, no name, and
    bytes that depend on nothing but ``data`` (compressed output differs between zlib builds)."""
    header = b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + b"\x00\xff"  # no flags, mtime 0, OS unknown
    blocks = bytearray()
    chunks = [data[i : i + 0xFFFF] for i in range(0, len(data), 0xFFFF)] or [b""]
    for number, chunk in enumerate(chunks):
        final = number == len(chunks) - 1
        blocks += bytes([1 if final else 0]) + struct.pack("<HH", len(chunk), len(chunk) ^ 0xFFFF) + chunk
    trailer = struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return header + bytes(blocks) + trailer
