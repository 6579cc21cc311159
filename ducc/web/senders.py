"""Who may send requests: one table that drives both the routes and the token sources.

Each ``Sender`` is a webhook receiver at ``/webhooks/<name>`` with its parser
and accepted content types; ``API`` is the REST API's token source. Tokens are
looked up by these names (``DUCC_WEBHOOK_TOKEN_<NAME>``), so a sender added
here has its route and its token at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ducc.web.sources import Parsed, dockerhub, harbor, quay, registry

JSON_TYPES = frozenset({"application/json"})


@dataclass(frozen=True)
class Sender:
    name: str
    parse: Callable[[Any], Parsed]
    content_types: frozenset[str] = JSON_TYPES

    @property
    def path(self) -> str:
        return f"/webhooks/{self.name}"


SENDERS = (
    Sender("registry", registry.parse, registry.CONTENT_TYPES),
    Sender("dockerhub", dockerhub.parse),
    Sender("harbor", harbor.parse, JSON_TYPES | {"application/cloudevents+json"}),
    Sender("quay", quay.parse),
)
API = "api"
TOKEN_SOURCES = (*(sender.name for sender in SENDERS), API)
