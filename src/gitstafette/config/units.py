"""Durations and sizes as they are written in flags and variables (``90s``, ``15m``, ``25MiB``): seconds and bytes."""

from __future__ import annotations

import re

from gitstafette.exceptions import ConfigError

__all__ = ["parse_duration", "parse_size"]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}


def parse_duration(text: str | float, name: str = "duration") -> float:
    """``"90"``, ``"90s"``, ``"15m"``, ``"24h"``, ``"7d"`` → seconds."""
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"{name}: {text!r} is not a duration (examples: 30s, 15m, 24h, 7d)")
    return float(match.group(1)) * _DURATION_UNITS_S[match.group(2)]


def parse_size(text: str | int, name: str = "size") -> int:
    """``"25MB"``, ``"25MiB"``, ``"1024"`` → bytes (MB = 1,000,000 bytes; MiB = 1,048,576)."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"{name}: {text!r} is not a size (examples: 26214400, 25MiB, 512KB)")
    unit = (match.group(2) or "").lower().removesuffix("b")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])
