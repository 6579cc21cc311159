"""Wishlists (DUCC's recipe format, version 1): load, validate, expand. Pure: tags come in as a list.

::

    version: 1
    user: cvmfsunpacker
    cvmfs_repo: unpacked.cern.ch
    output_format: '$(scheme)://registry.example.org/thin/$(image)'
    input:
      - 'https://registry.hub.docker.com/library/ubuntu:24.04'
      - 'https://registry.hub.docker.com/atlas/analysisbase:21.2.*'

``output_format`` asks for a thin image of every input (docs/design.md §7), pushed as
``user`` unless the settings name another account; without it, no thin images.

ducc extensions (a DUCC v1 file needs none of them): a top-level ``platforms``
list, and input entries written as mappings
``{image: REF, platforms: [...], exclude: [GLOB, ...]}``.
Wildcards (``*``, ``?``, ``[...]``) are allowed only in the tag and match the
whole tag with shell-glob semantics.

A wishlist is read by every process (``check-wishlist``, ``sync``, ``serve``, the web app whenever it
changes), so its YAML may not make any of them work for long: files over ``MAX_BYTES`` are refused
before they are read, anchors and aliases (``&a``, ``*a``: a few hundred bytes of them expand to
gigabytes) and nesting deeper than ``MAX_DEPTH`` before anything is built from the text.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ducc.errors import InvalidReference, WishlistError
from ducc.model.manifest import DEFAULT_PLATFORM, Platform
from ducc.model.reference import Reference, split_reference
from ducc.model.request import ConversionRequest
from ducc.thin import expand_output_format, thin_reference

MAX_BYTES = 8 << 20  # 8 MiB, some 150,000 entries: DUCC's largest recipes are a few hundred KiB
MAX_DEPTH = 8  # a wishlist needs 4: the file, input, an entry, its platforms
# libyaml's parser when there is one (ten times faster than PyYAML's own on a large file); both refuse tags.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_GLOB_CHARS = frozenset("*?[")
_TAG_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]{1,128}$")


@dataclass(frozen=True)
class Wish:
    """One input line: a reference whose tag may be a glob."""

    text: str
    registry: str
    repository: str
    tag: str | None
    digest: str | None
    scheme: str
    platforms: tuple[Platform, ...]
    exclude: tuple[str, ...] = ()

    @property
    def is_pattern(self) -> bool:
        return self.tag is not None and not _GLOB_CHARS.isdisjoint(self.tag)

    @property
    def repository_reference(self) -> Reference:
        """A reference to the repository (any tag), to list its tags with."""
        return Reference(self.registry, self.repository, "latest")

    def matches(self, tag: str) -> bool:
        if self.tag is None:
            return False
        # A tag without glob characters matches only itself: no pattern to compile (fnmatch keeps a
        # bounded cache of them, which a wishlist of a hundred thousand tags would only churn).
        if not (fnmatch.fnmatchcase(tag, self.tag) if self.is_pattern else tag == self.tag):
            return False
        return not any(fnmatch.fnmatchcase(tag, pattern) for pattern in self.exclude)

    def covers(self, ref: Reference) -> bool:
        """Whether ``ref`` is one of the images this wish asks for (its tag matches, or its digest is the wish's)."""
        if (self.registry, self.repository) != (ref.registry, ref.repository):
            return False
        return (ref.tag is not None and self.matches(ref.tag)) or (
            ref.digest is not None and self.digest == str(ref.digest))

    def expand(self, tags: Iterable[str]) -> list[Reference]:
        """The references this wish stands for, given the repository's tags (ignored unless a pattern)."""
        if not self.is_pattern:
            from ducc.model.digest import Digest

            digest = Digest.parse(self.digest) if self.digest else None
            return [Reference(self.registry, self.repository, self.tag, digest, self.scheme)]
        return [
            Reference(self.registry, self.repository, tag, None, self.scheme)
            for tag in sorted(set(tags))
            if self.matches(tag)
        ]


@dataclass(frozen=True)
class Wishlist:
    """A validated wishlist. ``output_format`` None: no thin images (DUCC's recipes may omit it)."""

    version: int
    user: str | None
    cvmfs_repo: str | None
    output_format: str | None
    wishes: tuple[Wish, ...] = field(default_factory=tuple)

    def thin_target(self, ref: Reference) -> Reference | None:
        """Where the thin image of ``ref`` goes (None without ``output_format``); a WishlistError if the
        format cannot name one for ``ref`` (``$(tag)`` of a digest-only input, say)."""
        return thin_reference(self.output_format, ref) if self.output_format else None

    def request(self, ref: Reference, platform: Platform) -> ConversionRequest:
        """The conversion this wishlist asks for ``ref`` on ``platform``, with its thin image if any (pushed
        as ``user``, its layer URLs naming ``cvmfs_repo`` unless the settings name a repository)."""
        target = self.thin_target(ref)
        if target is None:
            return ConversionRequest(ref, platform)
        return ConversionRequest(ref, platform, thin=target, thin_user=self.user, thin_repo=self.cvmfs_repo)


def _platforms(value: Any, where: str, default: tuple[Platform, ...]) -> tuple[Platform, ...]:
    if value is None:
        return default
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise WishlistError(f"{where}: platforms must be a non-empty list like ['linux/amd64']")
    try:
        return tuple(Platform.parse(str(p)) for p in value)
    except ValueError as exc:
        raise WishlistError(f"{where}: {exc}") from exc


def parse_wish(text: str, platforms: tuple[Platform, ...], exclude: tuple[str, ...] = (), where: str = "") -> Wish:
    try:
        parts = split_reference(text)
    except InvalidReference as exc:
        raise WishlistError(f"{where}{exc}") from exc
    tag = parts.tag
    if tag is None and parts.digest is None:
        tag = "latest"
    if tag is not None and not _TAG_PATTERN.match(tag):
        raise WishlistError(f"{where}{text!r}: tag {tag!r} has characters a tag or tag glob cannot have")
    if tag is not None and parts.digest is not None and any(c in _GLOB_CHARS for c in tag):
        raise WishlistError(f"{where}{text!r}: a digest cannot be combined with a tag glob")
    if tag is not None and not any(c in _GLOB_CHARS for c in tag):
        try:
            Reference(parts.registry, parts.repository, tag, parts.digest)
        except InvalidReference as exc:
            raise WishlistError(f"{where}{exc}") from exc
    return Wish(
        text=text,
        registry=parts.registry,
        repository=parts.repository,
        tag=tag,
        digest=str(parts.digest) if parts.digest else None,
        scheme=parts.scheme or "https",
        platforms=platforms,
        exclude=exclude,
    )


def read_text(path: Path) -> str:
    """The text of the wishlist file ``path``; a WishlistError naming it if it cannot be read, is not UTF-8
    or is larger than ``MAX_BYTES`` (checked before reading; a file that grows meanwhile is cut there)."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            data = file.read(MAX_BYTES + 1) if size <= MAX_BYTES else b""
    except OSError as exc:
        raise WishlistError(f"cannot read wishlist {path}: {exc.strerror or exc}") from exc
    if size > MAX_BYTES or len(data) > MAX_BYTES:
        raise WishlistError(f"wishlist {path} is larger than a wishlist may be ({_mib(MAX_BYTES)}): "
                            f"{_mib(max(size, len(data)))}{' or more' if size <= MAX_BYTES else ''}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WishlistError(f"cannot read wishlist {path}: not UTF-8 text") from exc


def read(path: Path) -> Wishlist:
    """The wishlist in the file ``path``; a WishlistError naming the file if it cannot be read or is invalid."""
    text = read_text(path)
    try:
        return load(text)
    except WishlistError as exc:
        raise WishlistError(f"wishlist {path}: {exc}") from exc


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _line(event: yaml.Event) -> str:
    return f"line {event.start_mark.line + 1}: " if event.start_mark is not None else ""


def _yaml(text: str) -> Any:
    """The YAML document ``text``, once its events show neither anchors nor aliases nor deep nesting: what
    is built from it grows with the text, never beyond it."""
    if len(text) > MAX_BYTES:
        raise WishlistError(f"wishlist is larger than a wishlist may be ({_mib(MAX_BYTES)})")
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise WishlistError(f"{_line(event)}YAML anchors and aliases (&name, *name) "
                                    "are not allowed in a wishlist; write each entry out")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise WishlistError(f"{_line(event)}nested deeper than a wishlist may be "
                                        f"({MAX_DEPTH} levels)")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        return yaml.load(text, Loader=_LOADER)  # a safe loader (no tags), and nothing to expand
    except yaml.YAMLError as exc:
        raise WishlistError(f"wishlist is not valid YAML: {' '.join(str(exc).split())}") from exc


def load(text: str) -> Wishlist:
    """Parse and validate a wishlist; every problem is a WishlistError naming the entry."""
    data = _yaml(text)
    if not isinstance(data, Mapping):
        raise WishlistError("wishlist must be a mapping with version, input, ...")
    version = data.get("version")
    if version != 1:
        raise WishlistError(f"wishlist version {version!r} is not supported (expected 1)")
    unknown = set(data) - {"version", "user", "cvmfs_repo", "output_format", "input", "platforms"}
    if unknown:
        raise WishlistError(f"unknown wishlist keys: {', '.join(sorted(map(str, unknown)))}")
    output_format = data.get("output_format") or None
    if output_format is not None and not isinstance(output_format, str):
        raise WishlistError("output_format must be a string")
    if output_format is not None:  # an unknown $(variable) is a mistake of the file, not of one image
        expand_output_format(output_format, Reference("registry.example.org", "any/image", "tag"))
    default_platforms = _platforms(data.get("platforms"), "platforms", (DEFAULT_PLATFORM,))
    entries = data.get("input")
    if not isinstance(entries, list) or not entries:
        raise WishlistError("wishlist input must be a non-empty list of image references")
    wishes = []
    for number, entry in enumerate(entries, 1):
        where = f"input #{number}: "
        if isinstance(entry, str):
            wishes.append(parse_wish(entry, default_platforms, where=where))
        elif isinstance(entry, Mapping) and isinstance(entry.get("image"), str):
            unknown = set(entry) - {"image", "platforms", "exclude"}
            if unknown:
                raise WishlistError(f"{where}unknown keys {', '.join(sorted(map(str, unknown)))}")
            exclude = entry.get("exclude") or []
            if isinstance(exclude, str):
                exclude = [exclude]
            if not isinstance(exclude, list) or not all(isinstance(e, str) for e in exclude):
                raise WishlistError(f"{where}exclude must be a list of tag globs")
            platforms = _platforms(entry.get("platforms"), where.rstrip(": "), default_platforms)
            wishes.append(parse_wish(entry["image"], platforms, tuple(exclude), where=where))
        else:
            raise WishlistError(f"{where}must be an image reference string or a mapping with 'image'")
    user = data.get("user")
    repo = data.get("cvmfs_repo")
    return Wishlist(1, str(user) if user else None, str(repo) if repo else None, output_format, tuple(wishes))


def wishlist_origin(path: str) -> str:
    """How the records of the conversions a wishlist asked for name it (``ConversionRequest.origin``),
    whoever queued them: its sync, or a webhook for an image it names."""
    return f"wishlist {os.path.abspath(path)}"


def thin_name(output_format: str, ref: Reference, scheme: str | None = None) -> str:
    """``output_format`` with DUCC's variables substituted for ``ref`` (see ``ducc.thin.output_variables``)."""
    return expand_output_format(output_format, ref, scheme)
