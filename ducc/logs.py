"""Log lines for every ducc process (CLI, worker, web app): one format, the chosen level."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(message)s"


def setup_logging(level: int | str) -> None:
    logging.basicConfig(level=level, format=FORMAT, datefmt="%H:%M:%S")
    logging.getLogger("urllib3").setLevel(logging.WARNING)
