"""A deterministic corpus of collector records for the search tests, and an independent oracle.

About 3,000 lines from 8 containers (5 namespaces, 2 nodes, with and without labels, stdout and stderr)
over six minutes around midnight UTC (so two daily Elasticsearch indices), with the ties the total order
must break: lines in the same millisecond, lines at the same nanosecond and offset in different files
(same node and different nodes), and the two parts of a split line.

Words are separated by spaces and punctuation that Elasticsearch's standard analyzer and FTS5's
unicode61 tokenizer both split on, except in the :data:`SPECIAL` tokens, which the two split differently
(see kubeobs/search/__init__.py): tests search those only whole, or to show the documented difference.

:func:`expected` is the oracle: the ids a predicate over :class:`Line` selects, in the search order.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from collector.config import ElasticsearchSink
from collector.record import FileInfo, Record
from collector.sinks.base import Status
from collector.sinks.elasticsearch import ElasticsearchSinkImpl
from collector.sinks.sqlite import SqliteLogSink, rfc3339_to_ns

SPECIAL = ("10.244.1.7", "10.244.2.9", "shop.example.com", "user_id", "café")
START_NS = 1_709_337_420_000_000_000  # 2024-03-01T23:57:00Z
SPAN_NS = 360_000_000_000  # six minutes


@dataclass(frozen=True)
class Container:
    namespace: str
    pod: str
    container: str
    node: str
    labels: dict[str, str]
    image: str
    lines: int
    messages: Callable[[random.Random, int], tuple[str, str]]  # (stream, message) of line n


def _web(rng: random.Random, n: int) -> tuple[str, str]:
    r = rng.random()
    if r < 0.05:
        return (
            "stderr",
            f"upstream timed out while reading response from 10.244.1.7 request GET /checkout {n}",
        )
    if r < 0.08:
        return "stderr", "connect() failed (111 Connection refused) while connecting to upstream"
    if r < 0.2:
        return "stdout", "GET /healthz 200 kube-probe"
    if r < 0.35:
        return "stdout", f"POST /api/cart 201 in {rng.randint(2, 900)}ms host shop.example.com"
    return "stdout", f"GET /products/{rng.randint(1, 400)} 200 in {rng.randint(2, 900)}ms"


def _api(rng: random.Random, n: int) -> tuple[str, str]:
    r = rng.random()
    if r < 0.06:
        return "stderr", "ERROR request failed status=503 error=connection refused to payments"
    if r < 0.1:
        return "stderr", f"ERROR timeout after {rng.choice((5, 10, 30))}s calling payments"
    if r < 0.2:
        return (
            "stdout",
            f"WARN slow query table=cart items rows={rng.randint(1, 40)} took {rng.randint(200, 900)}ms",
        )
    method = rng.choice(("GET", "GET", "POST", "DELETE"))
    return (
        "stdout",
        f"request completed method={method} path=/api/cart status=200 user_id={rng.randint(1, 99)}",
    )


def _worker(rng: random.Random, n: int) -> tuple[str, str]:
    r = rng.random()
    if r < 0.04:
        return "stderr", f"ERROR charge failed for order {10_000 + n} will retry"
    if r < 0.07:
        return "stderr", "Traceback (most recent call last) File app/gateway line 41 in charge"
    if r < 0.09:
        return "stderr", "HTTPStatusError Server Error 503 Service Unavailable timeouts exceeded"
    if r < 0.2:
        return "stdout", f"INFO settlement batch {n // 25} closed"
    return "stdout", f"INFO charged order {10_000 + n} amount={rng.randint(300, 40_000)} cents EUR"


def _sidecar(rng: random.Random, n: int) -> tuple[str, str]:
    if rng.random() < 0.1:
        return "stderr", "proxy upstream reset before headers (connection refused)"
    return "stdout", f"proxy stats active={rng.randint(0, 50)} idle={rng.randint(0, 9)}"


def _coredns(rng: random.Random, n: int) -> tuple[str, str]:
    r = rng.random()
    if r < 0.1:
        return "stdout", f"[INFO] 10.244.2.9 - {rng.randint(1, 65535)} A IN shop.example.com NXDOMAIN"
    name = rng.choice(("api shop svc", "payments svc", "web shop svc"))
    return "stdout", f"[INFO] 10.244.0.{rng.randint(2, 6)} - {rng.randint(1, 65535)} A IN {name} NOERROR"


def _prometheus(rng: random.Random, n: int) -> tuple[str, str]:
    r = rng.random()
    if r < 0.08:
        return "stderr", 'level=warn component=tsdb msg="compaction failed" err="time limit exceeded"'
    return "stdout", f'level=info component=scrape msg="scrape done" targets={rng.randint(10, 30)}'


def _job(rng: random.Random, n: int) -> tuple[str, str]:
    r = rng.random()
    if r < 0.1:
        return "stdout", f"order {n} café au lait"
    if r < 0.2:
        return "stdout", f"order {n} cafe noir"
    return "stdout", f"processing batch {n} of 400 Time spent {rng.randint(1, 99)}ms"


_WEB_LABELS = {"app": "web", "tier": "frontend", "app.kubernetes.io/name": "shop"}
CONTAINERS: tuple[Container, ...] = (
    Container("shop", "web-7d9f8-abcde", "nginx", "node-a", _WEB_LABELS, "nginx:1.25", 400, _web),
    Container("shop", "web-7d9f8-fghij", "nginx", "node-b", _WEB_LABELS, "nginx:1.25", 400, _web),
    Container(
        "shop",
        "api-5c6b7-q8x2m",
        "api",
        "node-a",
        {"app": "api", "tier": "backend", "app.kubernetes.io/name": "shop"},
        "shop/api:2.3",
        420,
        _api,
    ),
    Container(
        "payments",
        "worker-6f8b9-k2v9p",
        "worker",
        "node-b",
        {"app": "worker", "tier": "backend"},
        "pay:7",
        380,
        _worker,
    ),
    Container(
        "payments",
        "worker-6f8b9-k2v9p",
        "sidecar",
        "node-b",
        {"app": "worker", "tier": "backend"},
        "envoy:1",
        300,
        _sidecar,
    ),
    Container(
        "kube-system",
        "coredns-5d78c-xk2pq",
        "coredns",
        "node-a",
        {"k8s-app": "kube-dns"},
        "coredns:1.11",
        420,
        _coredns,
    ),
    Container(
        "monitoring", "prometheus-0", "prometheus", "node-b", {}, "prom/prometheus:2.53", 380, _prometheus
    ),
    Container("default", "job-42-abcde", "main", "node-a", {"app": "batch"}, "busybox:1.36", 300, _job),
)


def _file(c: Container) -> FileInfo:
    cid = hashlib.sha256(f"search-corpus/{c.pod}/{c.container}".encode()).hexdigest()
    k8s: dict[str, object] = {
        "namespace": c.namespace,
        "pod": {"name": c.pod, "uid": hashlib.md5(c.pod.encode()).hexdigest()},
        "container": {"name": c.container},
        "node": {"name": c.node},
    }
    if c.labels:
        k8s["labels"] = {k.replace(".", "_"): v for k, v in c.labels.items()}
    return FileInfo(
        key=f"2049:{int(cid[:6], 16)}:{cid[:8]}",
        path=f"/var/log/containers/{c.pod}_{c.namespace}_{c.container}-{cid}.log",
        id_prefix=hashlib.sha256(f"{c.node}/{cid}".encode()).hexdigest()[:16],
        kubernetes=k8s,
        container={"id": cid, "image": {"name": c.image}},
    )


def _rfc3339(ns: int, style: int) -> str:
    """Three spellings of one instant: nine digits Z, trimmed digits Z (containerd), and +01:00."""
    seconds, frac = divmod(ns, 1_000_000_000)
    if style == 2:
        seconds += 3600
    t = time.gmtime(seconds)
    head = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    digits = f"{frac:09d}"
    if style == 1:
        digits = digits.rstrip("0")
        return head + (f".{digits}" if digits else "") + "Z"
    return f"{head}.{digits}" + ("+01:00" if style == 2 else "Z")


def build() -> list[Record]:
    """The corpus, deterministic."""
    records: list[Record] = []
    files = [_file(c) for c in CONTAINERS]
    for ci, (c, info) in enumerate(zip(CONTAINERS, files, strict=True)):
        rng = random.Random(f"corpus/{ci}")
        step = SPAN_NS // c.lines
        ts = START_NS + rng.randrange(step)
        offset = 0
        for n in range(c.lines):
            if n == 0 and ci < 3:
                # ties: web-abcde (node-a), web-fghij (node-b) and api (node-a) start at the same
                # nanosecond, offset 0, with the same message
                ts, stream, message = START_NS + 123_456_789, "stdout", "GET /healthz 200 kube-probe"
            else:
                stream, message = c.messages(rng, n)
                if n % 10 == 5:
                    ts += 1_000  # same millisecond as the previous line
                else:
                    ts += rng.randrange(step // 2, step + step // 2)
            size = len(message.encode()) + 40
            if ci == 3 and n == 100:
                # one line longer than the collector's max_line_bytes: two parts, same offset and time
                for part, text in ((1, "settlement export payload part one"), (2, "part two end of export")):
                    records.append(
                        Record(
                            file=info,
                            offset=offset,
                            ckpt=offset + size,
                            timestamp=_rfc3339(ts, 0),
                            stream="stdout",
                            message=text,
                            size=size,
                            part=part,
                            last_part=part == 2,
                        )
                    )
                offset += size
                continue
            records.append(
                Record(
                    file=info,
                    offset=offset,
                    ckpt=offset + size,
                    timestamp=_rfc3339(ts, n % 7 % 3 if n % 7 < 3 else 0),
                    stream=stream,
                    message=message,
                    size=size,
                )
            )
            offset += size
    return records


# --- the oracle ------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[0-9a-zé]+(?:[._][0-9a-zé]+)*")  # the standard analyzer, for this corpus


@dataclass(frozen=True)
class Line:
    id: str
    ts_ns: int
    offset: int
    part: int
    namespace: str
    pod: str
    container: str
    node: str
    path: str
    image: str
    stream: str
    labels: dict[str, str]
    message: str

    @property
    def tokens(self) -> list[str]:
        return _TOKEN.findall(self.message.lower())

    def has(self, *words: str) -> bool:
        """The words, lowercased, next to each other in the message."""
        toks, want = self.tokens, [w.lower() for w in words]
        return any(toks[i : i + len(want)] == want for i in range(len(toks) - len(want) + 1))

    def prefix(self, stem: str) -> bool:
        return any(t.startswith(stem.lower()) for t in self.tokens)

    def sort_key(self) -> tuple[int, int, str, str, int]:
        return (self.ts_ns, self.offset, self.node, self.path, self.part)


def lines(records: list[Record]) -> list[Line]:
    out = []
    for r in records:
        k8s = r.file.kubernetes
        ts = rfc3339_to_ns(r.timestamp)
        assert ts is not None
        out.append(
            Line(
                id=r.id,
                ts_ns=ts,
                offset=r.offset,
                part=r.part,
                namespace=k8s["namespace"],
                pod=k8s["pod"]["name"],
                container=k8s["container"]["name"],
                node=k8s["node"]["name"],
                path=r.file.path,
                image=r.file.container["image"]["name"],
                stream=r.stream,
                labels=dict(k8s.get("labels") or {}),
                message=r.message,
            )
        )
    return out


def expected(
    corpus: list[Line], pred: Callable[[Line], bool], *, newest_first: bool = True, limit: int | None = None
) -> list[str]:
    chosen = sorted((x for x in corpus if pred(x)), key=Line.sort_key, reverse=newest_first)
    return [x.id for x in chosen[:limit]]


# --- loading ---------------------------------------------------------------------------------------------

_LOADED: dict[str, str] = {}  # ES URL -> index pattern, or "sqlite:<dir>" -> store path


def load_sqlite(folder: Path, records: list[Record]) -> Path:
    """The records in a store written by the collector's own SQLite sink (cached per process)."""
    key = f"sqlite:{folder}"
    if key not in _LOADED:
        path = folder / "corpus.db"

        async def write() -> None:
            sink = SqliteLogSink(str(path))
            await sink.start()
            try:
                for i in range(0, len(records), 1000):
                    outcomes = await sink.write(records[i : i + 1000])
                    assert all(o.status is Status.DELIVERED for o in outcomes)
            finally:
                await sink.close()

        asyncio.run(write())
        _LOADED[key] = str(path)
    return Path(_LOADED[key])


def load_es(url: str, records: list[Record]) -> str:
    """The records in daily indices written by the collector's own Elasticsearch sink (once per server);
    returns the index pattern to search."""
    if url not in _LOADED:
        tag = uuid.uuid4().hex[:8]
        config = ElasticsearchSink(
            type="elasticsearch",
            hosts=[url],
            index=f"search-corpus-{tag}-%Y.%m.%d",
            dead_letter_index=f"search-corpus-{tag}-deadletter",
            template_name=f"search-corpus-{tag}",
            request_timeout=60,
        )

        async def write() -> None:
            sink = ElasticsearchSinkImpl(config)
            await sink.start()
            try:
                for i in range(0, len(records), 500):
                    outcomes = await sink.write(records[i : i + 500])
                    bad = [o for o in outcomes if o.status is not Status.DELIVERED]
                    assert not bad, bad[:3]
                await sink.client.indices.refresh(index=f"search-corpus-{tag}-*")
            finally:
                await sink.close()

        asyncio.run(write())
        _LOADED[url] = f"search-corpus-{tag}-2024.*"
    return _LOADED[url]
