"""Where a conversion may stop when its job is cancelled: its cancel points.

A cancel check is called by the conversion at defined places, never hidden in a
progress report: before it resolves (``resolving``), before and while it downloads
layers (``fetching``), before it builds the flat root (``flattening``), inside the
publishing transaction just before the tag moves (``publishing``: the last point at
which a cancel keeps the image unpublished) and, after publication, before it pushes
a thin image (``thin``: the image stays published; only the push is skipped).

A check raises ``JobCancelled`` when a cancel was asked for; the conversion unwinds
like any failure, so nothing is half published. ``never`` is the check of a
conversion nobody can cancel (the CLI's foreground ``convert``).
"""

from __future__ import annotations

from typing import Protocol


class CancelCheck(Protocol):
    def __call__(self, point: str) -> None:
        """Raise ``JobCancelled`` if the conversion was asked to stop; ``point`` says where it is."""


def never(point: str) -> None:
    """Nobody cancels this conversion."""
