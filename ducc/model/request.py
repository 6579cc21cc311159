"""What the queue carries between submitters and workers: a conversion request and its result, and an
unpublish request (a policy's: a tag deleted from its registry, or one that left the wishlist).

All are frozen and serialise to JSON (``to_json``/``from_json``, ``parse_request`` for either request);
only the queue serialises them. The coalescing key, what makes two requests "the same conversion" (or
the same unpublishing), is derived from the request and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ducc.model.digest import Digest
from ducc.model.manifest import DEFAULT_PLATFORM, Platform
from ducc.model.reference import Reference


@dataclass(frozen=True)
class ConversionRequest:
    """Convert ``reference`` for ``platform``.

    ``thin`` names where a thin image is pushed (None: no thin image), ``thin_user``
    the account that pushes it when the settings name none (a wishlist's ``user``, as
    in DUCC; never a password), ``thin_repo`` the CVMFS repository its layer URLs name
    when the settings name none (a wishlist's ``cvmfs_repo``). ``origin`` says who asks
    (``wishlist <path>`` for a wishlist's sync): the record keeps it, so a policy can tell
    the tags a wishlist published.

    Requests with the same ``key`` (image and platform) are one conversion: the queue
    coalesces them, and the job they join takes on the thin image (with its user and
    repository) and origin a joining request adds (``ducc.service.queue``); a request for
    another thin image than the job's own is a job of its own.
    """

    reference: Reference
    platform: Platform = DEFAULT_PLATFORM
    thin: Reference | None = None
    thin_user: str | None = None
    origin: str | None = None
    thin_repo: str | None = None

    @property
    def image(self) -> str:
        return str(self.reference)

    @property
    def key(self) -> str:
        return f"{self.image}|{self.platform}"

    def with_platform(self, platform: Platform) -> ConversionRequest:
        return replace(self, platform=platform)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image": self.image, "platform": str(self.platform)}
        if self.thin is not None:
            out["thin"] = str(self.thin)
        if self.thin_user:
            out["thin_user"] = self.thin_user
        if self.thin_repo:
            out["thin_repo"] = self.thin_repo
        if self.origin:
            out["origin"] = self.origin
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ConversionRequest:
        """The request ``to_json`` wrote; ValueError (``InvalidReference`` included) if it does not parse."""
        thin = obj.get("thin")
        return cls(
            Reference.parse(str(obj["image"])),
            Platform.parse(str(obj.get("platform") or DEFAULT_PLATFORM)),
            thin=Reference.parse(str(thin)) if thin else None,
            thin_user=str(obj["thin_user"]) if obj.get("thin_user") else None,
            origin=str(obj["origin"]) if obj.get("origin") else None,
            thin_repo=str(obj["thin_repo"]) if obj.get("thin_repo") else None,
        )


UNPUBLISH = "unpublish"


@dataclass(frozen=True)
class UnpublishRequest:
    """Unpublish ``reference`` on ``platform`` (its tag link and record) because of ``reason``.

    ``confirm``: only once the registry answers the manifest with a clean 404 (a delete notification
    says the tag is gone; the registry has the last word). Without it (a tag that left the wishlist)
    it is unpublished as asked. Its ``key`` never coalesces with a conversion of the same image.
    """

    reference: Reference
    platform: Platform = DEFAULT_PLATFORM
    confirm: bool = True
    reason: str = ""

    @property
    def image(self) -> str:
        return str(self.reference)

    @property
    def key(self) -> str:
        return f"{UNPUBLISH}|{self.image}|{self.platform}"

    def to_json(self) -> dict[str, Any]:
        return {"action": UNPUBLISH, "image": self.image, "platform": str(self.platform), "confirm": self.confirm,
                "reason": self.reason}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> UnpublishRequest:
        return cls(Reference.parse(str(obj["image"])), Platform.parse(str(obj.get("platform") or DEFAULT_PLATFORM)),
                   confirm=bool(obj.get("confirm", True)), reason=str(obj.get("reason") or ""))


QueuedRequest = ConversionRequest | UnpublishRequest


def parse_request(obj: Mapping[str, Any]) -> QueuedRequest:
    """The request a job carries, by its ``action`` (a conversion when there is none); ValueError if it
    does not parse."""
    action = obj.get("action")
    if action == UNPUBLISH:
        return UnpublishRequest.from_json(obj)
    if action not in (None, "convert"):
        raise ValueError(f"a job for {action!r} carries no request")
    return ConversionRequest.from_json(obj)


@dataclass(frozen=True)
class ConversionResult:
    """What a finished conversion did. ``state`` is ``published`` or ``unchanged`` (the tag was current).

    ``thin_digest`` is the digest the request's thin reference serves (None: no thin image asked for,
    or not pushed); ``thin_pushed`` says whether this conversion sent it (False: the registry or the
    record had it); ``thin_error`` why a thin image asked for was not pushed although the image was
    published (a cancel that came after publication).
    """

    request: ConversionRequest
    state: str
    path: str
    tag_digest: Digest | None = None
    config_digest: Digest | None = None
    layers_unpacked: int = 0
    layers_reused: int = 0
    flat_reused: bool = False
    bytes_fetched: int = 0
    seconds: float = 0.0
    skipped_entries: tuple[str, ...] = field(default_factory=tuple)
    revision: int | None = None  # the repository revision the image landed in (CVMFS)
    thin_digest: Digest | None = None
    thin_pushed: bool = False
    thin_error: str = ""

    def then(self, recheck: ConversionResult) -> ConversionResult:
        """What a job did in all when, after this run, it checked the tag again (``recheck``, run for a
        request that joined it meanwhile). A recheck that published a newer image is the outcome, with
        the layers and bytes of both runs; one that found the tag unchanged keeps this outcome, with the
        request as it grew (a thin image a joining request asked for) and what the recheck did about it."""
        seconds = self.seconds + recheck.seconds
        if recheck.state == "published":
            return replace(recheck, layers_unpacked=self.layers_unpacked + recheck.layers_unpacked,
                           bytes_fetched=self.bytes_fetched + recheck.bytes_fetched, seconds=seconds)
        thin_digest = recheck.thin_digest or self.thin_digest
        return replace(self, request=recheck.request, seconds=seconds, thin_digest=thin_digest,
                       thin_pushed=self.thin_pushed or recheck.thin_pushed,
                       thin_error="" if thin_digest else recheck.thin_error or self.thin_error)

    @property
    def reference(self) -> Reference:
        return self.request.reference

    @property
    def thin(self) -> Reference | None:
        """The thin image pinned to its digest (``registry/repository:tag@sha256:...``), if there is one."""
        if self.request.thin is None or self.thin_digest is None:
            return None
        return self.request.thin.with_digest(self.thin_digest)

    @property
    def platform(self) -> Platform:
        return self.request.platform

    def to_json(self) -> dict[str, Any]:
        return {
            "request": self.request.to_json(),
            "state": self.state,
            "path": self.path,
            "tag_digest": str(self.tag_digest) if self.tag_digest else None,
            "config_digest": str(self.config_digest) if self.config_digest else None,
            "layers_unpacked": self.layers_unpacked,
            "layers_reused": self.layers_reused,
            "flat_reused": self.flat_reused,
            "bytes_fetched": self.bytes_fetched,
            "seconds": round(self.seconds, 3),
            "skipped_entries": list(self.skipped_entries),
            "revision": self.revision,
            "thin_digest": str(self.thin_digest) if self.thin_digest else None,
            "thin_pushed": self.thin_pushed,
            "thin_error": self.thin_error or None,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ConversionResult:
        def digest(name: str) -> Digest | None:
            return Digest.parse(obj[name]) if obj.get(name) else None

        return cls(
            ConversionRequest.from_json(obj["request"]),
            str(obj["state"]),
            str(obj.get("path", "")),
            tag_digest=digest("tag_digest"),
            config_digest=digest("config_digest"),
            layers_unpacked=int(obj.get("layers_unpacked", 0)),
            layers_reused=int(obj.get("layers_reused", 0)),
            flat_reused=bool(obj.get("flat_reused", False)),
            bytes_fetched=int(obj.get("bytes_fetched", 0)),
            seconds=float(obj.get("seconds", 0.0)),
            skipped_entries=tuple(obj.get("skipped_entries") or ()),
            revision=int(obj["revision"]) if obj.get("revision") is not None else None,
            thin_digest=digest("thin_digest"),
            thin_pushed=bool(obj.get("thin_pushed", False)),
            thin_error=str(obj.get("thin_error") or ""),
        )
