"""An image as the registry serves it for one reference on one platform: manifest and config, no layers.

This is what a conversion knows once it has fetched (``ducc.convert``) and what admission policies
judge (``ducc.admission``): the manifest and config are verified against their digests and
consistent with each other (one diff_id per layer); not one layer blob has been read yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from ducc.model.digest import Digest
from ducc.model.manifest import Descriptor, ImageConfig, Manifest, Platform
from ducc.model.reference import Reference


@dataclass(frozen=True)
class Image:
    """What the registry serves for ``reference`` on ``platform``; ``tag_digest`` is what the reference
    resolved to (an index's digest for a multi-platform image, else the manifest's)."""

    reference: Reference
    platform: Platform
    tag_digest: Digest
    manifest: Manifest
    config: ImageConfig

    @property
    def layers(self) -> tuple[tuple[Descriptor, Digest], ...]:
        """(blob descriptor, diff_id) pairs, base layer first."""
        return tuple(zip(self.manifest.layers, self.config.diff_ids, strict=True))

    @property
    def declared_bytes(self) -> int:
        """Compressed bytes of its distinct layers, as the manifest declares them: what converting it
        downloads at most (a layer listed twice is fetched once)."""
        return sum({d.digest: d.size for d, _ in self.layers}.values())
