"""One pure parser per sender: a decoded JSON payload → the image events it reports.

Each parser returns ``Parsed``: the events to act on (pushes, and for senders
that report them, deleted tags), and for everything else in the payload, a
reason it was ignored (a pull, a blob). A payload that does not have the
sender's shape raises ``PayloadError`` (HTTP 400).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ducc.errors import InvalidReference
from ducc.model.reference import Reference


class PayloadError(ValueError):
    """The payload is not what this sender sends; the message says what is wrong."""


@dataclass(frozen=True)
class ImageEvent:
    reference: Reference
    event_id: str | None = None


@dataclass
class Parsed:
    events: list[ImageEvent] = field(default_factory=list)  # pushed: convert
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (what, why)
    deleted: list[ImageEvent] = field(default_factory=list)  # deleted from the registry (by tag, or by digest)


def obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PayloadError(f"{where} must be a JSON object")
    return value


def text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise PayloadError(f"{where} must be a non-empty string")
    return value


def reference(value: str, where: str) -> Reference:
    try:
        return Reference.parse(value)
    except InvalidReference as exc:
        raise PayloadError(f"{where}: {exc}") from exc
