"""Time windows of `mlpipe monitor` and its one-line refusal (MonitorError)."""

from __future__ import annotations

import datetime as dt
import re


class MonitorError(Exception):
    """A user-facing refusal (no logs, unknown version, bad window): one line; `code` is the exit code."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------
# Time windows.

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'24h', '30m', '7d', '90s', '2w' as seconds."""
    match = _RELATIVE.match(text.strip().lower())
    if not match:
        raise MonitorError(f"bad duration {text!r}: use a number and a unit s, m, h, d or w (e.g. 24h)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_time(text: str, now: float) -> float:
    """An ISO 8601 time (no zone = UTC), 'now', or a duration meaning that long before `now`."""
    text = text.strip()
    if text.lower() == "now":
        return now
    if _RELATIVE.match(text.lower()):
        return now - parse_duration(text)
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise MonitorError(
            f"bad time {text!r}: use ISO 8601 (2026-11-22T04:00:00Z), 'now', or a duration like 24h"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.timestamp()


def iso_seconds(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="seconds")
