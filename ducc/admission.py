"""Admission: the policies an image must pass before ducc downloads a layer of it or publishes anything.

A conversion (``ducc.convert``) resolves the reference, fetches the manifest and config, then asks
every policy in turn whether it may go on (its ``admit`` step). A policy sees the ``Image``:
reference, platform, manifest (each layer's declared size and media type) and config (Env, Labels,
diff_ids), all verified against their digests; no layer blob has been read, and nothing has been
written to the repository. A policy that refuses raises ``ImageRefused`` naming itself and why; the
conversion stops there, publishes nothing (no layer, no flat root, no tag, no record, no thin image),
and the refusal is permanent: the queue does not retry it.

Policies are built from settings by the composition root (``ducc.wiring``), so ``ducc convert``,
``ducc sync`` and the service's workers all apply the same ones. A new policy (a signature check, a
registry allow-list, a label rule) is a class with an ``admit`` method added to that list.

Policies must be pure judgements over the image, or read what they need themselves: they are
called from worker threads, once per conversion that is not already current (a tag whose record
matches the registry is never fetched, so never re-judged).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ducc.errors import ImageRefused
from ducc.model.image import Image


class Policy(Protocol):
    def admit(self, image: Image) -> None:
        """Return if ``image`` may be converted; else raise ``ImageRefused`` naming the policy and why."""


def admit(policies: Sequence[Policy], image: Image) -> None:
    """Every policy, in order; the first refusal stops the rest (``ImageRefused``)."""
    for policy in policies:
        policy.admit(image)


@dataclass(frozen=True)
class MaxLayers:
    """``DUCC_MAX_LAYERS``: an image whose manifest lists more layers is refused. Every layer is a tree
    of its own in the repository, with a nested catalog; an image of hundreds of layers is a build
    mistake that costs the repository far more than its size says."""

    limit: int

    def admit(self, image: Image) -> None:
        count = len(image.manifest.layers)
        if count > self.limit:
            raise ImageRefused(image.reference, f"DUCC_MAX_LAYERS={self.limit}", f"its manifest lists {count} layers")


@dataclass(frozen=True)
class MaxDeclaredBytes:
    """``DUCC_MAX_COMPRESSED_BYTES``: an image whose manifest declares more compressed bytes (the sizes of
    its distinct layers) is refused before any is downloaded. The sizes are the registry's word, and the
    download holds every blob to its declared size; ``DUCC_MAX_IMAGE_BYTES`` bounds what unpacking
    then writes."""

    limit: int

    def admit(self, image: Image) -> None:
        declared = image.declared_bytes
        if declared > self.limit:
            raise ImageRefused(image.reference, f"DUCC_MAX_COMPRESSED_BYTES={self.limit}",
                               f"its layers are {declared} compressed bytes")


def from_limits(*, max_layers: int | None, max_compressed_bytes: int | None) -> list[Policy]:
    """The policies the operator's settings ask for (None: that limit is off), cheapest first."""
    policies: list[Policy] = []
    if max_layers is not None:
        policies.append(MaxLayers(max_layers))
    if max_compressed_bytes is not None:
        policies.append(MaxDeclaredBytes(max_compressed_bytes))
    return policies
