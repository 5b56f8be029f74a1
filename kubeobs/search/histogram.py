"""``kubeobs logs --histogram``: matching lines per time bucket, drawn in the terminal, with the busiest
namespaces and pods.

Buckets are fixed intervals aligned to the epoch (UTC), as Elasticsearch's ``fixed_interval``
``date_histogram`` makes them and as SQLite's ``ts_ns / interval`` groups them, so both backends give the
same buckets. The interval is the smallest of :data:`INTERVALS` that draws the range in at most
``max_buckets`` rows, or the one asked for (``--interval``).

The range is counted in up to :data:`SLICES` slices, one backend request each, so a long query can
report progress (``progress(done, total)``) instead of sitting silent.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubeobs.search.backend import Backend, SearchRequest, Top
from kubeobs.search.timerange import format_ns

__all__ = ["INTERVALS", "SLICES", "Histogram", "choose_interval", "compute", "draw", "to_json"]

_S = 1_000_000_000
INTERVALS = tuple(
    n * _S for n in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)
) + tuple(d * 86400 * _S for d in (1, 2, 7, 14, 30, 90, 365))
SLICES = 8
_EIGHTHS = " ▏▎▍▌▋▊▉█"


@dataclass(frozen=True, slots=True)
class Histogram:
    start_ns: int  # first bucket's start
    end_ns: int  # last bucket's end
    interval_ns: int
    counts: dict[int, int]  # bucket start -> lines (absent: 0)
    top: Top

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def buckets(self) -> list[tuple[int, int]]:
        return [(b, self.counts.get(b, 0)) for b in range(self.start_ns, self.end_ns, self.interval_ns)]


def choose_interval(start_ns: int, end_ns: int, max_buckets: int) -> int:
    span = max(end_ns - start_ns, 1)
    for interval in INTERVALS:
        if -(-span // interval) + 1 <= max_buckets:  # +1: alignment may add a bucket
            return interval
    return INTERVALS[-1]


def compute(
    backend: Backend,
    request: SearchRequest,
    *,
    now_ns: int,
    interval_ns: int | None = None,
    max_buckets: int = 40,
    top: int = 5,
    progress: Callable[[int, int], None] | None = None,
) -> Histogram | None:
    """The histogram of ``request``'s lines; None when nothing matches (and no range was given)."""
    start, end = request.time.start_ns, request.time.end_ns
    if start is None or end is None:
        bounds = backend.bounds(request)
        if bounds is None and start is None:
            return None
        if start is None:
            assert bounds is not None
            start = bounds[0]
        if end is None:
            end = bounds[1] + 1 if bounds is not None else now_ns
            if request.time.start_ns is not None:  # --since/--from: up to now
                end = max(end, now_ns)
    end = max(end, start + 1)
    interval = interval_ns or choose_interval(start, end, max_buckets)
    lo = start - start % interval
    hi = end + (-end) % interval
    n_buckets = (hi - lo) // interval
    per_slice = -(-n_buckets // SLICES)
    edges = [*range(lo, hi, per_slice * interval), hi]
    total_steps = len(edges)  # the slices, then the top lists
    counts: dict[int, int] = {}
    for i, (a, b) in enumerate(itertools.pairwise(edges)):
        if progress is not None:
            progress(i, total_steps)
        # clip to the asked range: the first and last buckets may be partial
        part = backend.histogram(request, max(a, start), min(b, end), interval)
        for k, v in part.items():
            counts[k] = counts.get(k, 0) + v
    if progress is not None:
        progress(total_steps - 1, total_steps)
    top_lists = backend.top(request, start, end, top)
    if progress is not None:
        progress(total_steps, total_steps)
    return Histogram(lo, hi, interval, counts, top_lists)


def _label(ns: int, interval_ns: int) -> str:
    return format_ns(ns, 0 if interval_ns >= _S else 3)


def _bar(value: int, peak: int, width: int, unicode: bool) -> str:
    if value <= 0 or peak <= 0:
        return ""
    eighths = max(1, round(value / peak * width * 8))
    if not unicode:
        return "#" * max(1, eighths // 8)
    return "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")


def _interval_text(ns: int) -> str:
    for unit, size in (("d", 86400 * _S), ("h", 3600 * _S), ("m", 60 * _S), ("s", _S)):
        if ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns // 1_000_000}ms"


def draw(hist: Histogram, *, width: int = 80, colour: bool = False, unicode: bool = True) -> list[str]:
    """The histogram as text lines, bars scaled to fit ``width`` columns."""
    rows = hist.buckets()
    peak = max((c for _, c in rows), default=0)
    count_w = max(len(f"{peak:,}"), 1)
    label_w = len(_label(rows[0][0], hist.interval_ns)) if rows else 20
    bar_w = max(10, width - label_w - count_w - 3)
    out = []
    for start, count in rows:
        bar = _bar(count, peak, bar_w, unicode)
        if colour and bar:
            bar = f"\x1b[36m{bar}\x1b[0m"
        label = _label(start, hist.interval_ns)
        out.append(f"{label} {count:>{count_w},} {bar}".rstrip())
    total = hist.total
    out.append(
        f"{total:,} lines, {len(rows)} buckets of {_interval_text(hist.interval_ns)},"
        f" {format_ns(hist.start_ns, 0)} to {format_ns(hist.end_ns, 0)}"
    )

    def share(n: int) -> str:
        return f"{n:,} ({n * 100 / total:.1f}%)" if total else f"{n:,}"

    if hist.top.namespaces:
        out.append("top namespaces: " + ", ".join(f"{ns or '-'} {share(n)}" for ns, n in hist.top.namespaces))
    if hist.top.pods:
        out.append(
            "top pods: " + ", ".join(f"{ns or '-'}/{pod or '-'} {share(n)}" for (ns, pod), n in hist.top.pods)
        )
    return out


def to_json(hist: Histogram) -> dict[str, Any]:
    """The histogram as a JSON-able object (``-o json``)."""
    return {
        "interval": _interval_text(hist.interval_ns),
        "from": format_ns(hist.start_ns),
        "to": format_ns(hist.end_ns),
        "total": hist.total,
        "buckets": [{"time": format_ns(b), "count": c} for b, c in hist.buckets()],
        "top_namespaces": [{"namespace": ns, "count": n} for ns, n in hist.top.namespaces],
        "top_pods": [{"namespace": ns, "pod": pod, "count": n} for (ns, pod), n in hist.top.pods],
    }
