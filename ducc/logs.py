"""Log lines for every ducc process (CLI, worker, web app): one format, the chosen level.

A message carries text from outside (a registry's error body, an image's name): its control characters
are escaped (``ducc.terminal``), so a log line read on a terminal shows them instead of obeying them.
"""

from __future__ import annotations

import logging
from typing import Any

from ducc.terminal import printable_lines

FORMAT = "%(asctime)s %(levelname)s %(message)s"


class EscapingFormatter(logging.Formatter):
    """The standard format, with the control characters of the message and of a traceback (its last line
    is the exception's message) escaped; newlines kept, so both stay readable."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802  # logging's own names
        return printable_lines(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:  # noqa: N802
        return printable_lines(super().formatException(ei))


def setup_logging(level: int | str) -> None:
    handler = logging.StreamHandler()  # stderr
    handler.setFormatter(EscapingFormatter(FORMAT, datefmt="%H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler])  # as before, nothing if the process has its handlers
    logging.getLogger("urllib3").setLevel(logging.WARNING)
