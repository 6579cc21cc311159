"""The last wishlist sync, as the status page shows it: what became of every image it checked.

The sync task (``ducc.service.tasks.run_sync``) records one ``LastSync`` in Redis
(``ducc:sync:last``) when it finishes; each image is ``unchanged`` (published at
the registry's digest), ``queued`` (with the job that converts it, whose state
the page follows) or ``failed`` (the check itself failed: the registry is
unreachable, say). A wish whose tags could not be listed is a failure of the wish.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from ducc.service import keys


@dataclass(frozen=True)
class ImageOutcome:
    image: str
    platform: str
    outcome: str  # unchanged | queued | failed
    job: str = ""
    error: str = ""


@dataclass(frozen=True)
class LastSync:
    at: float
    wishlist: str
    images: tuple[ImageOutcome, ...] = ()
    wish_failures: dict[str, str] = field(default_factory=dict)  # wish text -> why it could not be expanded

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "wishlist": self.wishlist, "images": [asdict(i) for i in self.images],
                "wish_failures": self.wish_failures}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LastSync:
        return cls(float(data["at"]), str(data.get("wishlist", "")),
                   tuple(ImageOutcome(**i) for i in data.get("images", [])), dict(data.get("wish_failures", {})))


def record(client: redis.Redis, last: LastSync) -> None:
    client.set(keys.SYNC_LAST, json.dumps(last.to_json()))


def read(client: redis.Redis) -> LastSync | None:
    """The last sync recorded; None before the first one (or if its record does not parse)."""
    raw = client.get(keys.SYNC_LAST)
    if not raw:
        return None
    try:
        return LastSync.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError):
        return None
