"""What may be converted: images matching ``DUCC_ALLOW`` globs or an entry of the wishlist.

``DUCC_ALLOW`` is a comma-separated list of shell globs matched against the
full reference (``registry.example.org/team/*`` allows every repository and
tag under ``team/``; a pattern without a tag also matches any tag). The
wishlist allows exactly what it would convert (tag globs included). With
neither, nothing is allowed: ducc fails closed.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from ducc.errors import WishlistError
from ducc.model.manifest import Platform
from ducc.model.reference import Reference
from ducc.model.request import ConversionRequest
from ducc.wishlist import Wishlist, read, wishlist_origin

log = logging.getLogger(__name__)


class Policy:
    def __init__(self, allow: list[str], wishlist_path: Path | None = None) -> None:
        self.allow = [pattern.strip() for pattern in allow if pattern.strip()]
        self.wishlist_path = wishlist_path
        self._wishlist: Wishlist | None = None
        self._mtime: float | None = None
        self.problem: str | None = None  # why the wishlist allows nothing (unreadable, invalid)
        self._origin = wishlist_origin(str(wishlist_path)) if wishlist_path is not None else None
        if not self.allow and wishlist_path is None:
            log.warning("no DUCC_ALLOW and no wishlist: every conversion request will be refused by policy")

    def wishlist(self) -> Wishlist | None:
        """The wishlist, re-read when its file changes; an unreadable one allows nothing (and says so:
        ``problem`` keeps why)."""
        if self.wishlist_path is None:
            return None
        try:
            mtime = os.stat(self.wishlist_path).st_mtime
        except OSError as exc:
            problem = f"cannot read wishlist {self.wishlist_path}: {exc.strerror or exc}"
            if problem != self.problem:  # said once, not at every request
                log.error("policy: %s; it allows nothing", problem)
            self.problem, self._wishlist, self._mtime = problem, None, None
            return None
        if mtime != self._mtime:
            try:
                self._wishlist, self.problem = read(self.wishlist_path), None
            except WishlistError as exc:
                self._wishlist, self.problem = None, str(exc)
                log.error("policy: %s; it allows nothing", self.problem)
            self._mtime = mtime
        return self._wishlist

    def decide(self, ref: Reference) -> Decision:
        """Whether ``ref`` may be converted, why, and how: a wishlist entry that names it gives its
        platforms and its thin image (the wishlist's ``output_format``), whichever rule allowed it, so a
        webhook converts an image exactly as the nightly sync would."""
        wishes = self.wishlist()
        wish = next((w for w in wishes.wishes if w.covers(ref)), None) if wishes is not None else None
        full, name = str(ref), ref.name
        for pattern in self.allow:
            if fnmatch.fnmatchcase(full, pattern) or fnmatch.fnmatchcase(name, pattern):
                if wish is not None:
                    return Decision(True, f"DUCC_ALLOW {pattern}", wish.platforms, wishes, self._origin)
                return Decision(True, f"DUCC_ALLOW {pattern}")
        if wish is not None:
            return Decision(True, f"wishlist entry {wish.text}", wish.platforms, wishes, self._origin)
        if self.problem:
            return Decision(False, f"matches no DUCC_ALLOW pattern, and the {self.problem}")
        return Decision(False, "matches neither DUCC_ALLOW nor the wishlist")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    why: str
    platforms: tuple[Platform, ...] = ()
    wishlist: Wishlist | None = None  # the wishlist that names the image, if one does
    origin: str | None = None  # how records name that wishlist

    def request(self, ref: Reference, platform: Platform) -> ConversionRequest:
        """The conversion to queue for ``ref`` on ``platform``: as the wishlist that names it asks for it (its
        thin image, its name in the record), if one does."""
        if self.wishlist is not None:
            return replace(self.wishlist.request(ref, platform), origin=self.origin)
        return ConversionRequest(ref, platform)
