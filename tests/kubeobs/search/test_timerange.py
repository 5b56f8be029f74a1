"""Durations and times as ``--since``, ``--from`` and ``--to`` read them."""

from __future__ import annotations

import pytest

from kubeobs.search.timerange import format_ns, parse_duration, parse_time

NOW = 1_709_337_600_123_456_789  # 2024-03-02T00:00:00.123456789Z
S = 1_000_000_000


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0s", 0),
        ("90s", 90 * S),
        ("15m", 900 * S),
        ("2h30m", 9000 * S),
        ("1d", 86400 * S),
        ("1w", 7 * 86400 * S),
        ("500ms", S // 2),
        ("1.5h", 5400 * S),
        ("250us", 250_000),
        ("7ns", 7),
    ],
)
def test_durations(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["", "15", "m", "15 m", "15min", "-5m", "1h-1m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("now", NOW),
        ("15m", NOW - 900 * S),
        ("2024-03-01T12:00:00Z", 1_709_294_400 * S),
        ("2024-03-01T12:00:00.123456789Z", 1_709_294_400 * S + 123_456_789),
        ("2024-03-01T12:00:00.5Z", 1_709_294_400 * S + 500_000_000),
        ("2024-03-01T13:00:00+01:00", 1_709_294_400 * S),
        ("2024-03-01T07:00:00-0500", 1_709_294_400 * S),
        ("2024-03-01T12:00:00", 1_709_294_400 * S),
        ("2024-03-01 12:00", 1_709_294_400 * S),
        ("2024-03-01", 1_709_251_200 * S),
        ("2024-02-29", 1_709_164_800 * S),
    ],
)
def test_times(text: str, ns: int) -> None:
    assert parse_time(text, NOW) == ns


@pytest.mark.parametrize(
    "text", ["yesterday", "2024-13-01", "2023-02-29", "2024-03-01T25:00:00Z", "1969-12-31"]
)
def test_bad_times(text: str) -> None:
    with pytest.raises(ValueError, match="bad time"):
        parse_time(text, NOW)


def test_format_ns_keeps_nanoseconds_or_cuts_to_the_asked_digits() -> None:
    assert format_ns(NOW) == "2024-03-02T00:00:00.123456789Z"
    assert format_ns(NOW, 3) == "2024-03-02T00:00:00.123Z"
    assert format_ns(NOW, 0) == "2024-03-02T00:00:00Z"
    assert parse_time(format_ns(NOW), 0) == NOW
