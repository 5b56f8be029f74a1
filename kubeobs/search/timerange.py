"""Times and durations as ``kubeobs logs`` reads them, in integer nanoseconds since the epoch (UTC).

- Durations: ``90s``, ``15m``, ``2h30m``, ``1d``, ``1w``, ``500ms`` (units ``ns us ms s m h d w``).
- Times (``--from``/``--to``): ``now``; a duration, meaning that long ago; RFC 3339 with up to nine
  fractional digits and ``Z`` or an offset (``2024-03-01T12:00:00.123456789Z``); the same without a zone,
  or with a space for the ``T``, or just a date, taken as UTC (the CLI shows times in UTC).

A range is half-open, ``[start, end)``: ``--from`` is included, ``--to`` is not.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass

__all__ = ["TimeRange", "format_ns", "parse_duration", "parse_time"]

_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
    "w": 7 * 86_400_000_000_000,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w)")
_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))?"
)
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class TimeRange:
    """``[start_ns, end_ns)``; None is open on that side."""

    start_ns: int | None = None
    end_ns: int | None = None


def parse_duration(text: str) -> int:
    """Nanoseconds in ``text`` (``15m``, ``1h30m``, ``0s``); raises ValueError."""
    s = text.strip()
    pos, total = 0, 0
    if not s:
        raise ValueError("empty duration")
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(f"bad duration {text!r} (examples: 90s, 15m, 2h30m, 1d)")
        total += round(float(m.group(1)) * _UNITS[m.group(2)])
        pos = m.end()
    return total


def parse_time(text: str, now_ns: int) -> int:
    """Nanoseconds since the epoch of ``text`` (see the module docstring); raises ValueError."""
    s = text.strip()
    if s == "now":
        return now_ns
    if s and (s[0].isdigit() and _DURATION_PART.match(s) and not _TIME.match(s)):
        return now_ns - parse_duration(s)
    m = _TIME.fullmatch(s)
    if m is None:
        raise ValueError(
            f"bad time {text!r} (examples: 2024-03-01T12:00:00Z, 2024-03-01, 15m for 15m ago, now)"
        )
    year, month, day, hh, mm, ss, frac, _z, sign, oh, om = m.groups()
    try:
        seconds = calendar.timegm(
            (int(year), int(month), int(day), int(hh or 0), int(mm or 0), int(ss or 0), 0, 0, 0)
        )
        # timegm normalises out-of-range fields (month 13): check the round trip
        if time.gmtime(seconds)[:6] != (
            int(year),
            int(month),
            int(day),
            int(hh or 0),
            int(mm or 0),
            int(ss or 0),
        ):
            raise ValueError
    except (ValueError, OverflowError):
        raise ValueError(f"bad time {text!r}: no such date or time") from None
    if sign is not None:
        offset = int(oh) * 3600 + int(om) * 60
        seconds -= offset if sign == "+" else -offset
    ns = seconds * 1_000_000_000 + (int(frac.ljust(9, "0")) if frac else 0)
    if not 0 <= ns <= _INT64_MAX:
        raise ValueError(f"bad time {text!r}: out of range (1970 to 2262)")
    return ns


def format_ns(ns: int, digits: int = 9) -> str:
    """RFC 3339 in UTC with ``digits`` fractional digits (0 to 9): ``2024-03-01T12:00:00.123456789Z``."""
    seconds, frac = divmod(ns, 1_000_000_000)
    head = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if digits <= 0:
        return head + "Z"
    return f"{head}.{frac:09d}"[: len(head) + 1 + digits] + "Z"
