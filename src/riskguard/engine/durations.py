"""Durations written the way rule authors write them: ``30s``, ``5m``, ``1h``, ``24h``, ``7d``."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PATTERN = re.compile(r"^([1-9][0-9]{0,5})([smhd])$")


def parse_duration(text: str) -> int:
    """Seconds in ``text``; raises ValueError naming the accepted forms."""
    match = _PATTERN.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"invalid duration {text!r}: expected a number and a unit s, m, h or d")
    return int(match.group(1)) * _UNITS[match.group(2)]
