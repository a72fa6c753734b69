"""Parsing of user-facing values (durations, column mappings) with one-line errors."""

from __future__ import annotations

import re

from operators.errors import TickcastError


class ConfigError(TickcastError):
    """A flag, environment variable or config value is invalid."""


_UNITS_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
             "h": 3_600_000_000_000, "d": 86_400_000_000_000}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h|d)\s*$")


def parse_duration_ns(text: str, what: str = "duration") -> int:
    """'500ms', '30s', '15m', '2h', '1d' -> nanoseconds."""
    m = _DURATION.match(str(text))
    if not m:
        raise ConfigError(f"{what} {text!r} is not a duration; write a number and a unit, e.g. 30s, 15m, 2h, 1d")
    value = float(m.group(1)) * _UNITS_NS[m.group(2)]
    if value <= 0:
        raise ConfigError(f"{what} must be positive, got {text!r}")
    return int(value)


def parse_mapping(text: str | None) -> dict[str, str]:
    """'price=last,ts=time' -> {'price': 'last', 'ts': 'time'} (canonical name = source name)."""
    if not text:
        return {}
    out: dict[str, str] = {}
    for part in text.split(","):
        if "=" not in part or not part.split("=", 1)[0].strip() or not part.split("=", 1)[1].strip():
            raise ConfigError(f"--map entry {part!r} is not canonical=source, e.g. --map price=last,ts=time")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out
