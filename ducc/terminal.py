"""Text from outside (a registry's error body, a job's reason, a name in a repository) as ducc writes it
to a terminal or a log: C0 and C1 control characters become ``\\xNN``, so an escape sequence in a message
can neither move the cursor, retitle the window nor forge a line. Pure."""

from __future__ import annotations

import re

_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROLS_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escaped(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def printable(text: str) -> str:
    """``text`` with every control character escaped (newlines and tabs too: the result is one line)."""
    return _CONTROLS.sub(_escaped, text)


def printable_lines(text: str) -> str:
    """``text`` with every control character but newline and tab escaped (a log record with a traceback)."""
    return _CONTROLS_BUT_LINES.sub(_escaped, text)
