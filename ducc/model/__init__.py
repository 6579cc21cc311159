"""Pure data: references, digests, media types, manifests and configs. No I/O here."""

from ducc.model.digest import Digest
from ducc.model.manifest import Descriptor, ImageConfig, Index, Manifest, Platform, parse_manifest
from ducc.model.reference import Reference

__all__ = [
    "Descriptor",
    "Digest",
    "ImageConfig",
    "Index",
    "Manifest",
    "Platform",
    "Reference",
    "parse_manifest",
]
