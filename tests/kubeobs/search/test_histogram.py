"""The histogram: interval choice, epoch-aligned buckets, drawing; computed on a real store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeobs.search.backend import SearchRequest, Top
from kubeobs.search.histogram import Histogram, choose_interval, compute, draw, to_json
from kubeobs.search.query import parse
from kubeobs.search.sqlite import SqliteBackend
from kubeobs.search.timerange import TimeRange, parse_time
from tests.kubeobs.search import corpus

S = 1_000_000_000


@pytest.mark.parametrize(
    ("span", "buckets", "interval"),
    [
        (10 * S, 40, S),
        (60 * S, 40, 2 * S),
        (360 * S, 40, 10 * S),
        (3600 * S, 40, 120 * S),
        (86400 * S, 40, 3600 * S),
    ],
)
def test_choose_interval(span: int, buckets: int, interval: int) -> None:
    assert choose_interval(0, span, buckets) == interval


def test_draw_scales_bars_and_lists_the_busiest() -> None:
    hist = Histogram(
        start_ns=0,
        end_ns=3 * 60 * S,
        interval_ns=60 * S,
        counts={0: 10, 120 * S: 5},
        top=Top([("shop", 12), ("payments", 3)], [(("shop", "web-1"), 12)]),
    )
    lines = draw(hist, width=40)
    # 40 columns: 20 for the time, 2 for the count, 3 spaces, 15 for the bar
    assert lines[0] == "1970-01-01T00:00:00Z 10 " + "█" * 15
    assert lines[1] == "1970-01-01T00:01:00Z  0"
    assert lines[2] == "1970-01-01T00:02:00Z  5 " + "█" * 7 + "▌"
    assert lines[3] == "15 lines, 3 buckets of 1m, 1970-01-01T00:00:00Z to 1970-01-01T00:03:00Z"
    assert lines[4] == "top namespaces: shop 12 (80.0%), payments 3 (20.0%)"
    assert lines[5] == "top pods: shop/web-1 12 (80.0%)"
    assert draw(hist, width=40, unicode=False)[0].endswith(" " + "#" * 15)
    assert to_json(hist)["buckets"][1] == {"time": "1970-01-01T00:01:00.000000000Z", "count": 0}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteBackend]:
    backend = SqliteBackend(corpus.load_sqlite(tmp_path_factory.mktemp("hist"), corpus.build()))
    yield backend
    backend.close()


def test_compute_on_the_store_matches_the_oracle(store: SqliteBackend) -> None:
    lines = corpus.lines(corpus.build())
    steps: list[tuple[int, int]] = []
    request = SearchRequest(parse("error OR refused"), limit=None)
    hist = compute(store, request, now_ns=0, progress=lambda d, t: steps.append((d, t)))
    assert hist is not None
    chosen = [x for x in lines if x.has("error") or x.has("refused")]
    assert hist.interval_ns == 10 * S  # six minutes in at most 40 rows
    want: dict[int, int] = {}
    for x in chosen:
        b = x.ts_ns - x.ts_ns % hist.interval_ns
        want[b] = want.get(b, 0) + 1
    assert hist.counts == want
    assert hist.start_ns == min(want) and hist.end_ns == max(want) + hist.interval_ns
    assert steps[-1][0] == steps[-1][1] and len(steps) >= 3  # progress reported slice by slice
    ns_counts: dict[str, int] = {}
    for x in chosen:
        ns_counts[x.namespace] = ns_counts.get(x.namespace, 0) + 1
    assert hist.top.namespaces == sorted(ns_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]


def test_compute_with_a_range_and_an_interval(store: SqliteBackend) -> None:
    start = parse_time("2024-03-01T23:59:30Z", 0)
    end = parse_time("2024-03-02T00:00:30Z", 0)
    request = SearchRequest(parse("stream:stderr"), TimeRange(start, end), limit=None)
    hist = compute(store, request, now_ns=0, interval_ns=15 * S)
    assert hist is not None
    assert [b for b, _ in hist.buckets()] == [start + i * 15 * S for i in range(4)]
    lines = corpus.lines(corpus.build())
    assert hist.total == sum(1 for x in lines if x.stream == "stderr" and start <= x.ts_ns < end)


def test_compute_without_matches_is_none(store: SqliteBackend) -> None:
    assert compute(store, SearchRequest(parse("nosuchword")), now_ns=0) is None


def test_store_path_is_checked(tmp_path: Path) -> None:
    from kubeobs.search.backend import BackendError

    with pytest.raises(BackendError, match="no such log store"):
        SqliteBackend(tmp_path / "none.db")
    (tmp_path / "other.db").write_bytes(b"")
    with pytest.raises(BackendError, match="not a kubeobs log store"):
        SqliteBackend(tmp_path / "other.db")
    (tmp_path / "junk.db").write_bytes(b"x" * 4096)
    with pytest.raises(BackendError, match="cannot open the log store"):
        SqliteBackend(tmp_path / "junk.db")
