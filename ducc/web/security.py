"""Webhook and API tokens: read from the environment or files, compared in constant time, never logged.

``DUCC_WEBHOOK_TOKEN`` (or ``DUCC_WEBHOOK_TOKEN_FILE``) serves every source;
``DUCC_WEBHOOK_TOKEN_<SOURCE>`` (one per name of ``ducc.web.senders.TOKEN_SOURCES``;
also ``_FILE``) gives one source its own. ``Settings`` reads them. A request carries it as
``Authorization: Bearer <token>`` (Harbor may send the bare token) or, for
senders that cannot set headers (Docker Hub, Quay), as ``?token=``.
With no token configured a source refuses everything: ducc fails closed.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable, Mapping

log = logging.getLogger("ducc.web")


class Tokens:
    def __init__(self, by_source: Mapping[str, list[str]]) -> None:
        self._by_source = {source: [t.encode() for t in tokens if t] for source, tokens in by_source.items()}

    @classmethod
    def of(cls, configured: Mapping[str, str], sources: Iterable[str]) -> Tokens:
        """Each source's own token, else the common one (``configured[""]``); a token configured
        for a source nobody sends as is reported (a typo would otherwise refuse that sender)."""
        sources = tuple(sources)
        common = configured.get("")
        unknown = sorted(set(configured) - {"", *sources})
        if unknown:
            log.warning("tokens configured for unknown sources %s (known: %s)", ", ".join(unknown), ", ".join(sources))
        by_source: dict[str, list[str]] = {}
        for source in sources:
            own = configured.get(source)
            by_source[source] = [own] if own else ([common] if common else [])
        return cls(by_source)

    def configured(self, source: str) -> bool:
        return bool(self._by_source.get(source))

    def check(self, source: str, presented: str | None) -> bool:
        """True if ``presented`` is a token of ``source``; every candidate is compared in constant time."""
        if not presented:
            return False
        given = presented.encode()
        ok = False
        for token in self._by_source.get(source, []):
            ok |= hmac.compare_digest(given, token)
        return ok


def presented_token(authorization: str | None, query_token: str | None) -> str | None:
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            return value.strip() or None
        if not value:
            return scheme  # Harbor's "auth header" may be the bare token
        return None
    return query_token or None
