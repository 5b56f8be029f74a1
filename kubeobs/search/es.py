"""The cluster backend: Elasticsearch 8/9 (or an OpenSearch-API server), on the official sync client.

Compiler (:func:`compile_query`, pure): the query model becomes query DSL in filter context (no scoring):
words and phrases ``match_phrase`` on ``message`` (Elasticsearch's analyzer splits them), a prefix is a
``prefix`` query on ``message``'s (lowercased) terms, keyword fields ``term`` or ``wildcard``, labels
``term``/``exists`` on ``kubernetes.labels.<key>``, ``AND`` ``bool.filter`` (+ ``must_not`` for its
negated children), ``OR`` ``bool.should`` with ``minimum_should_match: 1``, ``NOT`` ``bool.must_not``.
The time range is a ``range`` on ``@timestamp`` with nanosecond RFC 3339 bounds (``date_nanos``).

Paging (:meth:`EsBackend.search`): ``search_after`` on the total order of :data:`SORT_DESC` (see
:mod:`kubeobs.search.backend`; ``_id`` cannot be sorted on in Elasticsearch 8, so the tiebreakers are
the node, the file path and the split part). When more than one page may be needed, a point in time is
opened (``POST /<index>/_pit``) for a consistent view; servers without that endpoint (OpenSearch,
osmem: 400/404/405) or users without the privilege (403) get plain ``search_after`` on the same total
order, which still returns every line once (lines indexed meanwhile may or may not show).

``--follow`` (:class:`EsFollower`): Elasticsearch has no insertion order, and a line can become visible
after lines with later timestamps (collector batching, refresh interval). Each poll therefore re-reads
the last ``window`` of timestamps (ids and sort values only, then the new documents by id) and keeps
the ids it has shown within that window: nothing twice, and nothing missed unless a line becomes
searchable more than ``window`` after a later line did.
"""

from __future__ import annotations

import contextlib
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout, TlsError, TransportError
from elasticsearch import ApiError, Elasticsearch, UnsupportedProductError

from kubeobs.search.backend import BackendError, Hit, SearchRequest, Top
from kubeobs.search.query import MESSAGE, All, And, Exists, Match, Node, Not, Or, Text
from kubeobs.search.timerange import format_ns

__all__ = [
    "DEFAULT_INDEX",
    "PAGE_SIZE",
    "SORT_DESC",
    "EsBackend",
    "EsFollower",
    "compile_query",
    "compile_request",
    "redact_url",
    "sort_clause",
    "wildcard_pattern",
    "with_port",
]

DEFAULT_INDEX = "logs-k8s-*"  # what the collector's default index pattern "logs-k8s-%Y.%m.%d" produces
PAGE_SIZE = 1000
PIT_KEEP_ALIVE = "2m"

# (field, unmapped_type, missing): the total order of backend.py
_SORT_FIELDS: tuple[tuple[str, str, Any], ...] = (
    ("@timestamp", "date_nanos", None),
    ("log.offset", "long", 0),
    ("kubernetes.node.name", "keyword", None),
    ("log.file.path", "keyword", None),
    ("kubeobs.split.part", "integer", 0),
)


def sort_clause(newest_first: bool) -> list[dict[str, Any]]:
    order = "desc" if newest_first else "asc"
    out: list[dict[str, Any]] = []
    for name, unmapped, missing in _SORT_FIELDS:
        spec: dict[str, Any] = {"order": order, "unmapped_type": unmapped}
        if name == "@timestamp":
            spec["numeric_type"] = "date_nanos"  # also when some index maps it as a millisecond date
        if missing is not None:
            spec["missing"] = missing
        out.append({name: spec})
    return out


SORT_DESC = sort_clause(True)


# --- compiler --------------------------------------------------------------------------------------------


def wildcard_pattern(value: str) -> str:
    """A query glob (``*``, ``?``) as an Elasticsearch wildcard: only ``\\`` needs escaping."""
    return value.replace("\\", "\\\\")


def compile_query(node: Node) -> dict[str, Any]:
    """``node`` as Elasticsearch query DSL."""
    match node:
        case All():
            return {"match_all": {}}
        case Text(text, prefix):
            if prefix:
                # term-level: the index holds lowercased terms
                return {"prefix": {MESSAGE: {"value": text.lower()}}}
            return {"match_phrase": {MESSAGE: {"query": text}}}
        case Match(field, value, glob):
            if glob:
                return {"wildcard": {field: {"value": wildcard_pattern(value)}}}
            return {"term": {field: {"value": value}}}
        case Exists(field):
            return {"exists": {"field": field}}
        case Not(child):
            return {"bool": {"must_not": [compile_query(child)]}}
        case Or(children):
            return {"bool": {"should": [compile_query(c) for c in children], "minimum_should_match": 1}}
        case And(children):
            must = [compile_query(c) for c in children if not isinstance(c, Not)]
            must_not = [compile_query(c.child) for c in children if isinstance(c, Not)]
            body: dict[str, Any] = {}
            if must:
                body["filter"] = must
            if must_not:
                body["must_not"] = must_not
            return {"bool": body}
    raise TypeError(node)


def compile_request(request: SearchRequest) -> dict[str, Any]:
    """The ``query`` of ``request``: its query model and time range."""
    query = compile_query(request.query)
    bounds: dict[str, str] = {}
    if request.time.start_ns is not None:
        bounds["gte"] = format_ns(request.time.start_ns)
    if request.time.end_ns is not None:
        bounds["lt"] = format_ns(request.time.end_ns)
    if not bounds:
        return query
    time_range = {"range": {"@timestamp": bounds}}
    if query == {"match_all": {}}:
        return {"bool": {"filter": [time_range]}}
    return {"bool": {"filter": [query, time_range]}}


def _with_range(request: SearchRequest, start_ns: int, end_ns: int | None = None) -> dict[str, Any]:
    bounds = {"gte": format_ns(start_ns)}
    if end_ns is not None:
        bounds["lt"] = format_ns(end_ns)
    return {"bool": {"filter": [compile_request(request), {"range": {"@timestamp": bounds}}]}}


# --- backend --------------------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` without a password in its userinfo."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in userinfo else url


def with_port(url: str) -> str:
    """``url`` with the scheme's default port when it has none (the client insists on one)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname or parts.port is not None:
        return url
    port = 443 if parts.scheme == "https" else 80
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.netloc}:{port}"))


def _reason(exc: Exception) -> str:
    """One line saying why a request failed."""
    if isinstance(exc, ApiError):
        info = exc.info if isinstance(exc.info, dict) else {}
        err = info.get("error")
        if isinstance(err, dict):
            root = (err.get("root_cause") or [err])[0]
            text = f"{root.get('type', '')}: {root.get('reason', '')}".strip(": ")
        elif err:
            text = str(err)
        elif exc.meta.status == 404:
            text = "not found (is this the URL of Elasticsearch?)"
        else:
            text = "no details in the response"
        return f"HTTP {exc.meta.status}: {text}"
    if isinstance(exc, UnsupportedProductError):
        return "not Elasticsearch (the server did not identify as Elasticsearch)"
    if isinstance(exc, TlsError):
        return f"TLS error: {exc.message}"
    if isinstance(exc, ConnectionTimeout):
        return "timed out"
    if isinstance(exc, TransportConnectionError):
        msg = str(exc.message)
        for known in ("Connection refused", "Name or service not known", "No route to host", "timed out"):
            if known.lower() in msg.lower():
                return f"cannot connect: {known.lower()}"
        return f"cannot connect: {msg}"
    if isinstance(exc, TransportError):
        return str(exc.message)
    return str(exc)


class EsBackend:
    """:class:`~kubeobs.search.backend.Backend` over Elasticsearch indices matching ``index``."""

    def __init__(
        self,
        url: str,
        *,
        index: str = DEFAULT_INDEX,
        page_size: int = PAGE_SIZE,
        follow_window_ns: int = 30_000_000_000,
        client: Elasticsearch | None = None,
        **client_options: Any,
    ) -> None:
        self.url = redact_url(url)
        self.index = index
        self.page_size = page_size
        self.follow_window_ns = follow_window_ns
        self.pit_supported: bool | None = None  # None: not tried yet
        options: dict[str, Any] = {"request_timeout": 30.0, "max_retries": 1, "retry_on_timeout": False}
        options.update(client_options)
        # raises ValueError for a URL or options the client cannot use
        self.client = client if client is not None else Elasticsearch(with_port(url), **options)

    def _call(self, fn: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
        try:
            body: dict[str, Any] = fn(**kwargs).body
        except (ApiError, TransportError, UnsupportedProductError) as e:
            raise BackendError(self.url, _reason(e)) from None
        return body

    def _search_body(self, **kwargs: Any) -> dict[str, Any]:
        return self._call(
            self.client.search,
            index=self.index,
            ignore_unavailable=True,
            allow_no_indices=True,
            track_total_hits=False,
            **kwargs,
        )

    # -- point in time --

    def _open_pit(self) -> str | None:
        if self.pit_supported is False:
            return None
        try:
            resp = self.client.open_point_in_time(
                index=self.index, keep_alive=PIT_KEEP_ALIVE, ignore_unavailable=True
            )
        except ApiError as e:
            if e.meta.status in (400, 403, 404, 405):
                self.pit_supported = False  # no PIT here: plain search_after on the total order
                return None
            raise BackendError(self.url, _reason(e)) from None
        except TransportError as e:
            raise BackendError(self.url, _reason(e)) from None
        self.pit_supported = True
        return str(resp["id"])

    def _close_pit(self, pit: str) -> None:
        with contextlib.suppress(ApiError, TransportError):  # it expires after PIT_KEEP_ALIVE anyway
            self.client.close_point_in_time(id=pit)

    # -- search --

    def search(self, request: SearchRequest) -> Iterator[Hit]:
        query = compile_request(request)
        sort = sort_clause(request.newest_first)
        remaining = request.limit
        pit = None
        if remaining is None or remaining > self.page_size:
            pit = self._open_pit()
        after: list[Any] | None = None
        try:
            while remaining is None or remaining > 0:
                size = self.page_size if remaining is None else min(self.page_size, remaining)
                kwargs: dict[str, Any] = {"query": query, "sort": sort, "size": size}
                if after is not None:
                    kwargs["search_after"] = after
                if pit is not None:
                    body = self._call(
                        self.client.search,
                        pit={"id": pit, "keep_alive": PIT_KEEP_ALIVE},
                        track_total_hits=False,
                        **kwargs,
                    )
                    pit = body.get("pit_id", pit)
                else:
                    body = self._search_body(**kwargs)
                hits = body["hits"]["hits"]
                for h in hits:
                    yield Hit(id=h["_id"], doc=h["_source"], ts_ns=int(h["sort"][0]))
                if remaining is not None:
                    remaining -= len(hits)
                if len(hits) < size:
                    return
                after = hits[-1]["sort"]
        finally:
            if pit is not None:
                self._close_pit(pit)

    def follower(self, request: SearchRequest) -> EsFollower:
        return EsFollower(self, request, self.follow_window_ns)

    # -- aggregations --

    def bounds(self, request: SearchRequest) -> tuple[int, int] | None:
        # sorted searches, not min/max aggregations: those answer in milliseconds
        lo = self._extreme(request, newest=False)
        hi = self._extreme(request, newest=True)
        return None if lo is None or hi is None else (lo, hi)

    def _extreme(self, request: SearchRequest, newest: bool) -> int | None:
        body = self._search_body(
            query=compile_request(request), sort=sort_clause(newest)[:1], size=1, source=False
        )
        hits = body["hits"]["hits"]
        return int(hits[0]["sort"][0]) if hits else None

    def histogram(
        self, request: SearchRequest, start_ns: int, end_ns: int, interval_ns: int
    ) -> dict[int, int]:
        if interval_ns % 1_000_000:
            raise ValueError("Elasticsearch histogram intervals are whole milliseconds")
        body = self._search_body(
            query=_with_range(request, start_ns, end_ns),
            size=0,
            aggs={
                "h": {
                    "date_histogram": {
                        "field": "@timestamp",
                        "fixed_interval": f"{interval_ns // 1_000_000}ms",
                        "min_doc_count": 1,
                    }
                }
            },
        )
        buckets = ((body.get("aggregations") or {}).get("h") or {}).get("buckets") or []
        return {int(b["key"]) * 1_000_000: int(b["doc_count"]) for b in buckets if b["doc_count"]}

    def top(self, request: SearchRequest, start_ns: int, end_ns: int, size: int) -> Top:
        order = [{"_count": "desc"}, {"_key": "asc"}]
        body = self._search_body(
            query=_with_range(request, start_ns, end_ns),
            size=0,
            aggs={
                "ns": {"terms": {"field": "kubernetes.namespace", "size": size, "order": order}},
                "pods": {
                    "multi_terms": {
                        "terms": [{"field": "kubernetes.namespace"}, {"field": "kubernetes.pod.name"}],
                        "size": size,
                        "order": order,
                    }
                },
            },
        )
        aggs = body.get("aggregations") or {}
        namespaces = [(str(b["key"]), int(b["doc_count"])) for b in aggs.get("ns", {}).get("buckets", [])]
        pods = [
            ((str(b["key"][0]), str(b["key"][1])), int(b["doc_count"]))
            for b in aggs.get("pods", {}).get("buckets", [])
        ]
        return Top(namespaces, pods)

    def close(self) -> None:
        self.client.close()


class EsFollower:
    """``--follow`` on Elasticsearch: a sliding window of timestamps (see the module docstring)."""

    def __init__(
        self,
        backend: EsBackend,
        request: SearchRequest,
        window_ns: int,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.backend = backend
        self.request = request
        self.window_ns = window_ns
        self.now_ns = now_ns
        self.seen: dict[str, int] = {}  # id -> @timestamp ns, for ids within the window
        self.high: int | None = None  # the latest @timestamp seen

    def _low(self) -> int:
        # The window follows the newest line seen, but never runs ahead of the clock: one line from a
        # node whose clock is an hour fast must not hide everybody else's.
        now = self.now_ns()
        low = (now if self.high is None else min(self.high, now)) - self.window_ns
        if self.request.time.start_ns is not None:
            low = max(low, self.request.time.start_ns)
        return low

    def _window(self) -> Iterator[tuple[str, int]]:
        """(id, ts) of every matching line at or after the window's low edge, oldest first."""
        b = self.backend
        query = _with_range(self.request, self._low())
        after: list[Any] | None = None
        while True:
            kwargs: dict[str, Any] = {
                "query": query,
                "sort": sort_clause(False),
                "size": b.page_size,
                "source": False,
                "filter_path": "hits.hits._id,hits.hits.sort",
            }
            if after is not None:
                kwargs["search_after"] = after
            hits = (b._search_body(**kwargs).get("hits") or {}).get("hits") or []
            for h in hits:
                yield h["_id"], int(h["sort"][0])
            if len(hits) < b.page_size:
                return
            after = hits[-1]["sort"]

    def _remember(self, entries: list[tuple[str, int]]) -> None:
        for id_, ts in entries:
            self.seen[id_] = ts
            self.high = ts if self.high is None else max(self.high, ts)
        low = self._low()
        self.seen = {k: v for k, v in self.seen.items() if v >= low}

    def _fetch(self, ids: list[str]) -> list[Hit]:
        hits: list[Hit] = []
        b = self.backend
        for i in range(0, len(ids), b.page_size):
            chunk = ids[i : i + b.page_size]
            body = b._search_body(query={"ids": {"values": chunk}}, sort=sort_clause(False), size=len(chunk))
            hits.extend(Hit(h["_id"], h["_source"], int(h["sort"][0])) for h in body["hits"]["hits"])
        hits.sort(key=lambda h: h.ts_ns)  # chunks are each in order; keep the whole poll in order
        return hits

    def backlog(self, count: int | None) -> list[Hit]:
        # Mark what is there now as seen first, then read the backlog: a line arriving in between is
        # either in the backlog (and remembered) or shown by the next poll, never lost or doubled.
        self.high = self.backend._extreme(self.request, newest=True)
        self._remember(list(self._window()))
        hits: list[Hit] = []
        if count is None or count > 0:
            request = SearchRequest(self.request.query, self.request.time, newest_first=True, limit=count)
            hits = list(self.backend.search(request))
            hits.reverse()
        self._remember([(h.id, h.ts_ns) for h in hits])
        return hits

    def poll(self) -> list[Hit]:
        fresh = [(id_, ts) for id_, ts in self._window() if id_ not in self.seen]
        if not fresh:
            return []
        hits = self._fetch([id_ for id_, _ in fresh])
        self._remember(fresh)
        return hits
