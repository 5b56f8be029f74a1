"""What a search backend is: the request it gets, the hits it yields, the errors it raises.

Two backends implement :class:`Backend`: :class:`kubeobs.search.es.EsBackend` (Elasticsearch, the
cluster mode) and :class:`kubeobs.search.sqlite.SqliteBackend` (the one-machine store). Both compile
the same query model (:mod:`kubeobs.search.query`) and return the same documents (the collector's,
see SPEC.md "Collector contract") in the same order.

Order: newest first by ``@timestamp`` to the nanosecond, then ``log.offset``, then the node and the file
path (so two files with a line at the same nanosecond and offset still come in a fixed order), then the
part of a split line. That is a total order for everything one collector writes, so paging resumes
exactly after the last line seen (``search_after`` / keyset), whatever is being written meanwhile.

Errors: :class:`BackendError` (unreachable, refused, not a log store...) says which URL and why; the CLI
turns it into exit code 3.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubeobs.search.query import All, Node
from kubeobs.search.timerange import TimeRange

__all__ = ["Backend", "BackendError", "Follower", "Hit", "SearchRequest", "Top"]


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """One search: the query (flags already folded in), the time range, the order and how many lines.

    ``limit`` None: every matching line (streamed page by page).
    """

    query: Node = field(default_factory=All)
    time: TimeRange = field(default_factory=TimeRange)
    newest_first: bool = True
    limit: int | None = 100


@dataclass(frozen=True, slots=True)
class Hit:
    """One log line: its ``_id``, the stored document, and its position in the total order."""

    id: str
    doc: dict[str, Any]
    ts_ns: int


@dataclass(frozen=True, slots=True)
class Top:
    """Line counts of the busiest namespaces and pods, most first (ties by name)."""

    namespaces: list[tuple[str, int]]
    pods: list[tuple[tuple[str, str], int]]  # ((namespace, pod), count)


class BackendError(RuntimeError):
    """The backend at ``url`` could not answer: ``reason`` says why (one line)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"{url}: {reason}")


class Follower(Protocol):
    """Stateful cursor for ``--follow``: :meth:`backlog` once, then :meth:`poll` again and again.

    Together they return every matching line once: nothing twice, nothing skipped.
    """

    def backlog(self, count: int | None) -> list[Hit]:
        """The newest ``count`` matching lines now (None: all), oldest first; starts the cursor."""
        ...

    def poll(self) -> list[Hit]:
        """Matching lines that arrived since the last call, oldest first."""
        ...


class Backend(Protocol):
    """A log store the CLI can search. Not thread-safe; one request at a time."""

    url: str  # for messages (credentials removed)

    def search(self, request: SearchRequest) -> Iterator[Hit]:
        """Matching lines in order, fetched page by page as the iterator is consumed."""
        ...

    def follower(self, request: SearchRequest) -> Follower:
        """A cursor over lines arriving from now on (``request.limit`` is ignored)."""
        ...

    def bounds(self, request: SearchRequest) -> tuple[int, int] | None:
        """The first and last ``@timestamp`` (ns) among matching lines; None when nothing matches."""
        ...

    def histogram(
        self, request: SearchRequest, start_ns: int, end_ns: int, interval_ns: int
    ) -> dict[int, int]:
        """Matching lines in ``[start_ns, end_ns)`` per bucket; key: bucket start (a multiple of
        ``interval_ns`` since the epoch); empty buckets may be absent."""
        ...

    def top(self, request: SearchRequest, start_ns: int, end_ns: int, size: int) -> Top:
        """The ``size`` busiest namespaces and pods among matching lines in ``[start_ns, end_ns)``."""
        ...

    def close(self) -> None: ...
