"""One corpus in both backends, every query in a table: the same lines, in the same order, as the oracle.

The corpus (tests/kubeobs/search/corpus.py, ~3,000 lines) goes into osmem-server through the collector's
Elasticsearch sink (daily indices, the sink's index template) and into a SQLite store through the
collector's SQLite sink, once per run. Requests are built by the CLI's own flag handling.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from elasticsearch import Elasticsearch

from collector.record import Record
from collector.sinks.elasticsearch import logs_mappings
from collector.sinks.sqlite import rfc3339_to_ns
from kubeobs.search.backend import Follower, Hit, SearchRequest
from kubeobs.search.cli import build_parser, build_request
from kubeobs.search.es import EsBackend
from kubeobs.search.follow import follow
from kubeobs.search.histogram import compute
from kubeobs.search.query import parse
from kubeobs.search.sqlite import SqliteBackend
from kubeobs.search.timerange import format_ns
from tests.kubeobs.search import corpus
from tests.kubeobs.search.corpus import Line
from tests.support.servers import EsServer

NOW = corpus.START_NS + corpus.SPAN_NS + 60_000_000_000
RECORDS = corpus.build()
LINES = corpus.lines(RECORDS)
JOB_CID = next(r.file.container["id"] for r in RECORDS if r.file.kubernetes["pod"]["name"] == "job-42-abcde")
PROM_UID = next(
    r.file.kubernetes["pod"]["uid"] for r in RECORDS if r.file.kubernetes["pod"]["name"] == "prometheus-0"
)
TIE_NS = corpus.START_NS + 123_456_789  # three lines from three files at this nanosecond, offset 0


@pytest.fixture(scope="module")
def es_backend(es_server_shared: EsServer) -> Iterator[EsBackend]:
    backend = EsBackend(es_server_shared.url, index=corpus.load_es(es_server_shared.url, RECORDS))
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def sqlite_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteBackend]:
    backend = SqliteBackend(corpus.load_sqlite(tmp_path_factory.mktemp("search-corpus"), RECORDS))
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def sqlite_walking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteBackend]:
    """The store's other plan: every text match counts as big, probed while walking the time index."""
    backend = SqliteBackend(
        corpus.load_sqlite(tmp_path_factory.mktemp("search-corpus"), RECORDS), dense_matches=0
    )
    yield backend
    backend.close()


def request(argv: list[str]) -> SearchRequest:
    return build_request(build_parser().parse_args(argv), NOW)


def ids(hits: Iterator[Hit]) -> list[str]:
    return [h.id for h in hits]


# (CLI arguments, oracle). Every entry runs with --limit 0 (all lines).
TABLE: list[tuple[list[str], Callable[[Line], bool]]] = [
    (["error"], lambda x: x.has("error")),
    (["ERROR"], lambda x: x.has("error")),
    (['"connection refused"'], lambda x: x.has("connection", "refused")),
    (['"refused connection"'], lambda x: x.has("refused", "connection")),
    (['"upstream timed out"'], lambda x: x.has("upstream", "timed", "out")),
    (['"503 service unavailable"'], lambda x: x.has("503", "service", "unavailable")),
    (["time*"], lambda x: x.prefix("time")),
    (["Time*"], lambda x: x.prefix("time")),
    (["timeout*"], lambda x: x.prefix("timeout")),
    (["timeout", "OR", "refused"], lambda x: x.has("timeout") or x.has("refused")),
    (["error", "AND", "NOT", "timeout"], lambda x: x.has("error") and not x.has("timeout")),
    (["error -timeout"], lambda x: x.has("error") and not x.has("timeout")),
    (["(GET OR POST) cart"], lambda x: (x.has("get") or x.has("post")) and x.has("cart")),
    (["NOT (GET OR POST)"], lambda x: not (x.has("get") or x.has("post"))),
    (["--", "-proxy"], lambda x: not x.has("proxy")),
    (
        ["(error OR warn) (namespace:shop OR namespace:monitoring)"],
        lambda x: (x.has("error") or x.has("warn")) and x.namespace in ("shop", "monitoring"),
    ),
    (["10.244.1.7"], lambda x: x.has("10.244.1.7")),
    (["shop.example.com"], lambda x: x.has("shop.example.com")),
    (["user_id"], lambda x: x.has("user_id")),
    (['"kube probe"'], lambda x: x.has("kube", "probe")),
    (["kube-probe"], lambda x: x.has("kube", "probe")),
    (["/api/cart"], lambda x: x.has("api", "cart")),
    (["status=503"], lambda x: x.has("status", "503")),
    (["503"], lambda x: x.has("503")),
    (["payments -namespace:payments"], lambda x: x.has("payments") and x.namespace != "payments"),
    (['message:"charge failed" OR msg:retry'], lambda x: x.has("charge", "failed") or x.has("retry")),
    (["namespace:shop"], lambda x: x.namespace == "shop"),
    (["ns:kube-*"], lambda x: x.namespace.startswith("kube-")),
    (["pod:web-*"], lambda x: x.pod.startswith("web-")),
    (["pod:*-0"], lambda x: x.pod.endswith("-0")),
    (["pod:web-7d9f8-?????"], lambda x: x.pod.startswith("web-7d9f8-")),
    (["pod:web-7d9f8-abcde OR pod:api-*"], lambda x: x.pod == "web-7d9f8-abcde" or x.pod.startswith("api-")),
    (["pod:WEB-*"], lambda x: False),  # values are case-sensitive
    (
        ["--", "-namespace:kube-system stream:stderr"],
        lambda x: x.namespace != "kube-system" and x.stream == "stderr",
    ),
    (["container:api error"], lambda x: x.container == "api" and x.has("error")),
    (["node:node-b timeout*"], lambda x: x.node == "node-b" and x.prefix("timeout")),
    (["host:node-a"], lambda x: x.node == "node-a"),
    (["stream:stderr"], lambda x: x.stream == "stderr"),
    (["labels.app:web"], lambda x: x.labels.get("app") == "web"),
    (["labels.app.kubernetes.io/name:shop"], lambda x: x.labels.get("app_kubernetes_io/name") == "shop"),
    (
        ["label.tier:backend -container:sidecar"],
        lambda x: x.labels.get("tier") == "backend" and x.container != "sidecar",
    ),
    (["--", "-labels.tier:backend"], lambda x: x.labels.get("tier") != "backend"),
    (["labels.k8s-app:kube-*"], lambda x: x.labels.get("k8s-app", "").startswith("kube-")),
    (["image:nginx*"], lambda x: x.image.startswith("nginx")),
    ([f"container_id:{JOB_CID}"], lambda x: x.pod == "job-42-abcde"),
    (["file:*coredns*"], lambda x: "coredns" in x.path),
    ([f"pod_uid:{PROM_UID}"], lambda x: x.pod == "prometheus-0"),
    (["-l", "app=web"], lambda x: x.labels.get("app") == "web"),
    (["-l", "tier!=backend"], lambda x: x.labels.get("tier") != "backend"),
    (["-l", "!app", "-l", "k8s-app"], lambda x: "app" not in x.labels and "k8s-app" in x.labels),
    (["-n", "payments", "--stream", "stderr"], lambda x: x.namespace == "payments" and x.stream == "stderr"),
    (["--pod", "worker-*", "-c", "worker", "order"], lambda x: x.container == "worker" and x.has("order")),
    (
        ["--node", "node-b", "-n", "shop", "-n", "monitoring"],
        lambda x: x.node == "node-b" and x.namespace in ("shop", "monitoring"),
    ),
    (["--since", "2m"], lambda x: x.ts_ns >= NOW - 120_000_000_000),
    (
        ["--from", "2024-03-01T23:59:00Z", "--to", "2024-03-02T00:00:30.5Z", "stream:stdout"],
        lambda x: 1_709_337_540_000_000_000 <= x.ts_ns < 1_709_337_630_500_000_000 and x.stream == "stdout",
    ),
    (
        ["--from", "2024-03-01T23:57:00.123456789Z", "--to", "2024-03-01T23:57:01Z"],
        lambda x: TIE_NS <= x.ts_ns < TIE_NS + 876_543_211,
    ),
    (
        ["--from", "2024-03-01T23:57:00Z", "--to", "2024-03-01T23:57:00.123456789Z"],
        lambda x: x.ts_ns < TIE_NS,
    ),
    (
        ["--from", "2024-03-02T01:00:00+01:00", "error"],
        lambda x: x.ts_ns >= 1_709_337_600_000_000_000 and x.has("error"),
    ),
    ([], lambda x: True),
    (["--reverse", "payments"], lambda x: x.has("payments")),
]


def _name(entry: tuple[list[str], Callable[[Line], bool]]) -> str:
    return " ".join(entry[0]) or "(all)"


@pytest.mark.parametrize("entry", TABLE, ids=[_name(e) for e in TABLE])
def test_same_lines_on_both_backends(
    entry: tuple[list[str], Callable[[Line], bool]],
    es_backend: EsBackend,
    sqlite_backend: SqliteBackend,
    sqlite_walking: SqliteBackend,
) -> None:
    argv, pred = entry
    req = request(["--limit", "0", *argv])
    want = corpus.expected(LINES, pred, newest_first=req.newest_first)
    assert ids(sqlite_backend.search(req)) == want
    assert ids(sqlite_walking.search(req)) == want
    assert ids(es_backend.search(req)) == want


def test_the_table_is_meaningful() -> None:
    """Most queries select some lines but not all; the empty ones are empty for a reason."""
    sizes = {_name(e): len(corpus.expected(LINES, e[1])) for e in TABLE}
    assert sum(1 for n in sizes.values() if 0 < n < len(LINES)) >= len(TABLE) - 4
    assert sizes['"refused connection"'] == 0 and sizes['"connection refused"'] > 10  # order matters
    assert sizes["pod:WEB-*"] == 0 and sizes["pod:web-*"] > 10
    assert len(LINES) > 2500 and len({x.namespace for x in LINES}) == 5


def test_limits_and_both_orders_page_through_everything(
    es_server_shared: EsServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Small pages force many search_after / keyset round trips; on osmem (no Elasticsearch PIT) the
    Elasticsearch backend must notice and page without one."""
    es = EsBackend(es_server_shared.url, index=corpus.load_es(es_server_shared.url, RECORDS), page_size=97)
    store = SqliteBackend(corpus.load_sqlite(tmp_path_factory.mktemp("search-corpus"), RECORDS), page_size=97)
    try:
        for newest_first in (True, False):
            want = corpus.expected(LINES, lambda x: True, newest_first=newest_first)
            req = SearchRequest(parse(""), newest_first=newest_first, limit=None)
            assert ids(store.search(req)) == want
            assert ids(es.search(req)) == want
            assert es.pit_supported is False  # tried POST /<index>/_pit, fell back to plain search_after
            for limit in (1, 96, 97, 98, 250):
                req = SearchRequest(parse(""), newest_first=newest_first, limit=limit)
                assert ids(es.search(req)) == want[:limit]
                assert ids(store.search(req)) == want[:limit]
    finally:
        es.close()
        store.close()


def test_ties_are_ordered_to_the_nanosecond_then_offset_node_path_and_part(
    es_backend: EsBackend, sqlite_backend: SqliteBackend
) -> None:
    req = request(
        ["--limit", "0", "--from", "2024-03-01T23:57:00.123456789Z", "--to", "2024-03-01T23:57:00.12345679Z"]
    )
    for backend in (es_backend, sqlite_backend):
        hits = list(backend.search(req))
        pods = [h.doc["kubernetes"]["pod"]["name"] for h in hits]
        # same nanosecond and offset: node-b first (newest first is descending), then node-a by path
        assert pods == ["web-7d9f8-fghij", "web-7d9f8-abcde", "api-5c6b7-q8x2m"]
        assert {h.ts_ns for h in hits} == {TIE_NS}
    split = request(["--limit", "0", '"export"'])
    for backend in (es_backend, sqlite_backend):
        parts = [h.doc.get("kubeobs", {}).get("split", {}).get("part") for h in backend.search(split)]
        assert parts == [2, 1]
    same_ms = [x for x in LINES if x.ts_ns // 1_000_000 == (x.ts_ns - 1_000) // 1_000_000]
    assert len(same_ms) > 100  # the corpus does exercise sub-millisecond order


@pytest.mark.parametrize(
    "argv", [["error OR refused"], ["-n", "shop", "--interval", "1m"], ["--since", "3m"], []]
)
def test_histograms_agree(argv: list[str], es_backend: EsBackend, sqlite_backend: SqliteBackend) -> None:
    args = build_parser().parse_args(argv)
    req = build_request(args, NOW)
    a = compute(es_backend, req, now_ns=NOW, interval_ns=args.interval, top=3)
    b = compute(sqlite_backend, req, now_ns=NOW, interval_ns=args.interval, top=3)
    assert a is not None and a == b
    assert a.total == sum(1 for _ in sqlite_backend.search(SearchRequest(req.query, req.time, limit=None)))
    assert len(a.top.pods) == 3 and a.top.pods[0][1] >= a.top.pods[1][1]
    assert es_backend.bounds(req) == sqlite_backend.bounds(req)


def test_documented_differences_between_the_analyzers(
    es_backend: EsBackend, sqlite_backend: SqliteBackend
) -> None:
    """kubeobs/search/__init__.py lists these; keep the list honest."""

    def count(backend: Any, q: str) -> int:
        return sum(1 for _ in backend.search(SearchRequest(parse(q), limit=None)))

    # a part of a dotted word: one word to Elasticsearch, several to FTS5
    assert count(es_backend, "example") == 0 < count(sqlite_backend, "example")
    assert count(es_backend, "user") == 0 < count(sqlite_backend, "user")
    # accents: FTS5 folds them, in the text and in the query
    cafe, accented = count(es_backend, "cafe"), count(es_backend, "café")
    assert cafe > 0 and accented > 0
    assert count(sqlite_backend, "cafe") == count(sqlite_backend, "café") == cafe + accented


# --- --follow on Elasticsearch ------------------------------------------------------------------------------


def _records(prefix: str, first: int, count: int, start_ns: int, step_ns: int) -> list[Record]:
    template = RECORDS[0]
    out = []
    for i in range(first, first + count):
        ts = start_ns + (i - first) * step_ns
        out.append(
            Record(
                file=template.file,
                offset=i * 100,
                ckpt=i * 100 + 100,
                timestamp=format_ns(ts),
                stream="stdout",
                message=f"{prefix} line {i}",
                size=100,
            )
        )
    return out


class CountingFollower:
    """A follower that counts its polls (so a test can wait for polls, not for time)."""

    def __init__(self, inner: Follower) -> None:
        self.inner = inner
        self.polls = 0

    def backlog(self, count: int | None) -> list[Hit]:
        return self.inner.backlog(count)

    def poll(self) -> list[Hit]:
        hits = self.inner.poll()
        self.polls += 1
        return hits


def test_follow_on_elasticsearch_shows_every_new_line_once(es_server_shared: EsServer) -> None:
    index = f"search-follow-{uuid.uuid4().hex[:8]}"
    client = Elasticsearch(es_server_shared.url, request_timeout=30)
    client.indices.create(index=index, mappings=logs_mappings())  # what the sink's template gives

    def index_records(records: list[Record]) -> None:
        ops: list[dict[str, Any]] = []
        for r in records:
            ops += [{"create": {"_index": index, "_id": r.id}}, r.document()]
        resp = client.bulk(operations=ops, refresh=True)
        assert all(next(iter(i.values()))["status"] in (201, 409) for i in resp["items"])

    now = time.time_ns()
    old = _records("follow", 0, 50, now - 20_000_000_000, 100_000_000)  # the last 20 s
    index_records(old)
    backend = EsBackend(es_server_shared.url, index=index, page_size=7, follow_window_ns=10_000_000_000)
    shown: list[Hit] = []
    stop = threading.Event()
    req = SearchRequest(parse("follow"), limit=5)
    follower = CountingFollower(backend.follower(req))
    thread = threading.Thread(
        target=follow,
        args=(follower, shown.append, lambda: None),
        kwargs={"backlog": 5, "interval": 0.05, "stop": stop},
    )
    thread.start()

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 20
        while len(shown) < count:
            assert thread.is_alive() and time.monotonic() < deadline, f"{len(shown)} of {count} lines shown"
            time.sleep(0.02)

    try:
        wait_for(5)
        assert [h.id for h in shown] == [r.id for r in old[-5:]]  # the backlog, oldest first
        new = _records("follow", 50, 30, time.time_ns(), 1_000_000)
        index_records(new[:15])
        index_records(new[15:])
        late = _records("follow", 80, 1, record_ns(new[-1]) - 5_000_000_000, 1)  # 5 s late
        wait_for(35)
        index_records(late)
        index_records(new[:10])  # re-sent: 409, nothing new
        too_late = _records("follow", 81, 1, record_ns(new[-1]) - 60_000_000_000, 1)  # beyond the window
        index_records(too_late)
        marker = _records("follow", 82, 1, time.time_ns(), 1)
        index_records(marker)
        wait_for(37)
        polls = follower.polls
        deadline = time.monotonic() + 10
        while follower.polls < polls + 3:  # three more polls: nothing else may appear
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(10)
        backend.close()
        client.indices.delete(index=index)
        client.close()
    got = [h.id for h in shown]
    assert len(got) == len(set(got)), "a line was shown twice"
    assert got[:5] == [r.id for r in old[-5:]]
    assert got[5:35] == [r.id for r in new]
    assert got[35:] == [late[0].id, marker[0].id]
    assert too_late[0].id not in got  # documented: later than --follow-window is not shown


def record_ns(record: Record) -> int:
    ts = rfc3339_to_ns(record.timestamp)
    assert ts is not None
    return ts
