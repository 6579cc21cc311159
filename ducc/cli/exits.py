"""How a ``ducc`` command ends: its exit statuses, and the one line on stderr each failure prints.

Every failure a user can cause is one line, ``ducc: <what>: <why>``, and one of the statuses below
(``ducc --help`` lists them); anything unforeseen is re-raised, so it shows as the bug it is.
"""

from __future__ import annotations

import os
import sys

import redis

from ducc.errors import DuccError, RepositoryUnusable, ServiceUnavailable, StateDirectoryInUse, WishlistError
from ducc.settings import Settings
from ducc.terminal import printable

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE
EXIT_PENDING = 75  # EX_TEMPFAIL: not finished yet
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool its reader left


def one_line(message: object) -> str:
    """``message`` as part of one line: whitespace folded (a message from below may carry newlines), other
    control characters escaped (a registry's error body may carry terminal escape sequences)."""
    return printable(" ".join(str(message).split()))


def fail(message: object, code: int) -> int:
    """The one line a failure prints; returns ``code``."""
    print("ducc: " + one_line(message), file=sys.stderr)
    return code


def summary(total: int, failures: list[tuple[str, str]]) -> int:
    """One line for one image (``ducc: IMAGE: why``), a list at the end for several; EXIT_FAILED if any."""
    if not failures:
        return EXIT_OK
    if total == 1:
        ((what, why),) = failures
        return fail(why if what in why else f"{what}: {why}", EXIT_FAILED)
    print(f"\n{len(failures)} of {total} failed:", file=sys.stderr)
    for what, why in failures:
        print(f"  {one_line(what)}: {one_line(why)}", file=sys.stderr)
    return EXIT_FAILED


def redis_location(settings: Settings) -> str:
    """The Redis a command talks to, as messages show it (no password)."""
    from ducc.service.broker import display_url

    return display_url(settings.redis.url) if settings.redis.url else settings.embedded_redis_url


def failure(exc: Exception, settings: Settings) -> tuple[str, int]:
    """What to say about ``exc`` and with which exit status; anything unforeseen is re-raised."""
    if isinstance(exc, (WishlistError, RepositoryUnusable)):
        return str(exc), EXIT_USAGE
    if isinstance(exc, (ServiceUnavailable, StateDirectoryInUse)):
        return str(exc), EXIT_UNAVAILABLE
    if isinstance(exc, ValueError):  # settings or arguments that do not make sense (a reference, say)
        return str(exc), EXIT_USAGE
    if isinstance(exc, DuccError):
        return str(exc), EXIT_FAILED
    if isinstance(exc, redis.AuthenticationError):
        return f"Redis at {redis_location(settings)} refused the password: {exc}", EXIT_UNAVAILABLE
    if isinstance(exc, redis.RedisError):
        return f"Redis at {redis_location(settings)} unreachable: {exc}", EXIT_UNAVAILABLE
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot access{where}: {exc.strerror}", EXIT_FAILED
    raise exc


def reader_gone() -> int:
    """The reader of stdout went away (``ducc list | head -1``): stop quietly, as other tools do. Whatever
    is still buffered goes nowhere, so Python's own flush at exit cannot complain either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE
