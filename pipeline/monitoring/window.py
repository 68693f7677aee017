"""Time windows of `mlpipe monitor`, its one-line refusal (MonitorError) and its per-window tables."""

from __future__ import annotations

import datetime as dt
import re
from typing import Callable


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


def config_duration(config, key: str) -> float:
    """The duration setting `monitoring.<key>` in seconds; a bad one is a config error naming the setting."""
    try:
        return parse_duration(getattr(config.monitoring, key))
    except MonitorError as e:
        raise MonitorError(f"config error: monitoring.{key}: {e}") from None


def window_lines(title: str, columns: list[tuple], entries: list[dict], failed: Callable[[dict], str]) -> list[str]:
    """A table of one line per (window, version): the window's start, the version, `columns` ((heading, width
    spec, key, decimals): a value with decimals is printed with 4 of them, or n/a) and the verdict
    (`failed(entry)` names the bound the entry missed)."""
    if not entries:
        return []

    def cell(value, spec: str, decimals: bool) -> str:
        if decimals:
            value = "n/a" if value is None else f"{value:.4f}"
        return format(value, spec)

    head = " ".join(format(heading, spec) for heading, spec, _, _ in columns)
    out = [f"{title + ' WINDOW SINCE':<26} {'VERSION':<11} {head}  VERDICT"]
    for e in entries:
        verdict = "not judged" if not e["judged"] else ("ok" if e["passed"] else f"FAIL ({failed(e)})")
        row = " ".join(cell(e[key], spec, decimals) for _, spec, key, decimals in columns)
        out.append(f"{e['window']['since']:<26} {e['version']:<11} {row}  {verdict}")
    return out
