"""``WWW-Authenticate`` parsing (RFC 7235), pure.

Registry scopes hold ``:`` and ``,`` inside quoted strings
(``scope="repository:a/b:pull,push"``), so the header is tokenised, never split
on commas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SPACE = re.compile(r"[ \t]*")


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lowercased: "bearer", "basic"
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


def _quoted(header: str, pos: int) -> tuple[str, int]:
    # header[pos] is the opening quote
    out = []
    pos += 1
    while pos < len(header):
        ch = header[pos]
        if ch == "\\" and pos + 1 < len(header):
            out.append(header[pos + 1])
            pos += 2
        elif ch == '"':
            return "".join(out), pos + 1
        else:
            out.append(ch)
            pos += 1
    raise ValueError("unterminated quoted string in WWW-Authenticate")


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge in a ``WWW-Authenticate`` value, in order; malformed input raises ValueError."""
    challenges: list[Challenge] = []
    pos = 0
    current: Challenge | None = None
    while pos < len(header):
        pos = _SPACE.match(header, pos).end()  # type: ignore[union-attr]
        if pos >= len(header):
            break
        if header[pos] == ",":
            pos += 1
            continue
        token = _TOKEN.match(header, pos)
        if not token:
            raise ValueError(f"unexpected {header[pos]!r} in WWW-Authenticate at {pos}")
        after = _SPACE.match(header, token.end()).end()  # type: ignore[union-attr]
        if after < len(header) and header[after] == "=" and current is not None:
            value_pos = _SPACE.match(header, after + 1).end()  # type: ignore[union-attr]
            if value_pos < len(header) and header[value_pos] == '"':
                value, pos = _quoted(header, value_pos)
            else:
                value_match = _TOKEN.match(header, value_pos)
                if not value_match:
                    raise ValueError("missing parameter value in WWW-Authenticate")
                value, pos = value_match.group(0), value_match.end()
            current.params[token.group(0).lower()] = value
        else:
            current = Challenge(token.group(0).lower())
            challenges.append(current)
            pos = token.end()
    return challenges
