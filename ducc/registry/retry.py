"""ducc's one retry policy for registry requests: how often, and how long to wait in between.

``ducc.registry.transport`` applies it to every request (a blob download's
resumptions in ``ducc.registry.pull`` draw on the same ``Attempts``); nothing
above the transport retries a registry request.

Promises: the wait grows exponentially from ``base_delay`` up to ``max_delay``
with jitter (so workers that failed together do not retry together); a
registry's ``Retry-After`` (seconds or an HTTP date) is honoured, up to four
times ``max_delay``.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

import requests


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is retried."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0-based), or as the registry asked."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay * 4)
        backoff = min(self.base_delay * 2.0**attempt, self.max_delay)
        return backoff * (0.5 + random.random() / 2)


def asked_delay(response: requests.Response) -> float | None:
    """The seconds a registry asked to wait (``Retry-After``, seconds or an HTTP date); None if it did not."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, float(parsed.timestamp()) - time.time())


class Attempts:
    """The attempts one operation may still make under a RetryPolicy (shared by its requests)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.used = 0

    @property
    def left(self) -> bool:
        return self.used < self.policy.attempts
