"""Demo container logs, so ``kubeobs up --demo`` has something to show on a laptop.

:func:`write_demo_logs` fills a folder the way a kubelet fills ``/var/log/containers``: one file per
container, named ``<pod>_<namespace>_<container>-<64 hex container id>.log``, with the history of the
last few minutes ending at ``now``; :func:`run_demo_writer` then keeps appending a few lines per second
to the same files until told to stop. The pods (:data:`DEMO_PODS`):

- ``shop/web-7d9f8-abcde`` (nginx, CRI): access logs, now and then an upstream error on stderr;
- ``shop/api-5c6b7d9f4-q8x2m`` (docker json-file): JSON structured logs;
- ``payments/worker-6f8b9c7d5-k2v9p`` (CRI): a Python app; now and then an error with a multi-line
  traceback on stderr, and once a very long line that the runtime split into ``P`` pieces ended by
  an ``F`` piece (containerd splits lines at 16 KiB);
- ``kube-system/coredns-5d78c9869d-xk2pq`` (CRI): DNS query logs.

Everything is derived from ``seed``: the same seed and ``now`` give the same bytes.

Example::

    paths = write_demo_logs(Path("demo-logs"))
    stop = asyncio.Event()
    task = asyncio.create_task(run_demo_writer(Path("demo-logs"), stop))
    ...
    stop.set()
    await task
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import orjson

__all__ = ["DEMO_PODS", "DEMO_RECORDS", "DemoPod", "run_demo_writer", "write_demo_logs", "write_demo_records"]

# One log event: the (stream, text) lines it writes, given the event's time in ns since the epoch.
Event = Callable[[int], list[tuple[str, str]]]
# Makes the n-th event of a pod from the pod's random generator.
EventMaker = Callable[[random.Random, int], Event]

MAX_LINE_BYTES = 16 * 1024  # runtimes split longer lines into partial pieces
_LINE_STEP_NS = 4_000  # between the lines of one multi-line event
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True, slots=True)
class DemoPod:
    namespace: str
    pod: str
    container: str
    format: Literal["cri", "docker"]
    events: EventMaker
    live_events_per_second: tuple[int, ...]  # drawn from for each second of run_demo_writer

    def file_name(self, seed: int = 0) -> str:
        cid = hashlib.sha256(f"kubeobs-demo/{seed}/{self.namespace}/{self.pod}/{self.container}".encode())
        return f"{self.pod}_{self.namespace}_{self.container}-{cid.hexdigest()}.log"


def _utc(ts_ns: int) -> time.struct_time:
    return time.gmtime(ts_ns // 1_000_000_000)


def _ms(ts_ns: int) -> int:
    return ts_ns // 1_000_000 % 1000


def _rfc3339(ts_ns: int, *, trim: bool) -> str:
    """RFC3339Nano in UTC; ``trim`` drops trailing zeros as Go's time.RFC3339Nano (containerd) does."""
    digits = f"{ts_ns % 1_000_000_000:09d}"
    if trim:
        digits = digits.rstrip("0")
    return time.strftime("%Y-%m-%dT%H:%M:%S", _utc(ts_ns)) + (f".{digits}" if digits else "") + "Z"


def _encode(fmt: str, ts_ns: int, stream: str, text: str) -> bytes:
    """One log line as the runtime writes it; lines past MAX_LINE_BYTES become partial pieces."""
    data = text.encode()
    pieces = [data[i : i + MAX_LINE_BYTES] for i in range(0, len(data), MAX_LINE_BYTES)] or [b""]
    out = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        if fmt == "cri":
            tag = b"F" if last else b"P"
            out.append(b"%s %s %s %s\n" % (_rfc3339(ts_ns, trim=True).encode(), stream.encode(), tag, piece))
        else:
            log = piece.decode(errors="replace") + ("\n" if last else "")
            out.append(orjson.dumps({"log": log, "stream": stream, "time": _rfc3339(ts_ns, trim=False)}))
            out.append(b"\n")
    return b"".join(out)


# --- shop/web: nginx ------------------------------------------------------------------------------

_WEB_PATHS = (
    "/",
    "/products",
    "/products/{id}",
    "/products/{id}/reviews",
    "/cart",
    "/checkout",
    "/static/app.{hash}.js",
    "/static/style.{hash}.css",
    "/api/cart",
    "/healthz",
)
_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "kube-probe/1.31",
    "curl/8.5.0",
)


def _web(rng: random.Random, n: int) -> Event:
    client = f"10.244.{rng.randint(0, 3)}.{rng.randint(2, 254)}"
    path = rng.choice(_WEB_PATHS).format(id=rng.randint(1, 480), hash=f"{rng.getrandbits(32):08x}")
    method = "POST" if path in ("/checkout", "/api/cart") and rng.random() < 0.5 else "GET"
    agent = "kube-probe/1.31" if path == "/healthz" else rng.choice(_AGENTS)
    status = rng.choices((200, 304, 404, 502), weights=(88, 6, 4, 2))[0]
    size = 0 if status == 304 else rng.randint(180, 48_000)
    seconds = rng.lognormvariate(-4.0, 0.8) + (5.0 if status == 502 else 0.0)

    def lines(ts: int) -> list[tuple[str, str]]:
        t = _utc(ts)
        when = f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{time.strftime('%H:%M:%S', t)} +0000"
        request = f"{method} {path} HTTP/1.1"
        out = [("stdout", f'{client} - - [{when}] "{request}" {status} {size} "-" "{agent}" {seconds:.3f}')]
        if status == 502:
            out.insert(
                0,
                (
                    "stderr",
                    f"{time.strftime('%Y/%m/%d %H:%M:%S', t)} [error] 29#29: *{n + 1000} upstream timed out"
                    " (110: Connection timed out) while reading response header from upstream,"
                    f' client: {client}, server: shop.example.com, request: "{method} {path} HTTP/1.1",'
                    f' upstream: "http://10.96.41.7:8080{path}", host: "shop.example.com"',
                ),
            )
        return out

    return lines


# --- shop/api: JSON structured logs -----------------------------------------------------------------

_API_ROUTES = ("/api/cart", "/api/cart/items", "/api/products", "/api/orders", "/api/session")


def _api(rng: random.Random, n: int) -> Event:
    route = rng.choice(_API_ROUTES)
    method = rng.choice(("GET", "GET", "GET", "POST", "DELETE"))
    request_id = f"{rng.getrandbits(64):016x}"
    duration = round(rng.lognormvariate(2.3, 0.7), 1)
    kind = rng.choices(("ok", "slow", "error"), weights=(90, 7, 3))[0]
    user = rng.randint(1000, 9999)
    rows = rng.randint(1, 40)

    def lines(ts: int) -> list[tuple[str, str]]:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", _utc(ts)) + f".{_ms(ts):03d}Z"
        doc: dict[str, object]
        base: dict[str, object] = {
            "ts": when,
            "logger": "api.http",
            "request_id": request_id,
            "method": method,
            "path": route,
        }
        if kind == "error":
            doc = {
                "level": "error",
                **base,
                "msg": "request failed",
                "status": 503,
                "error": "payments: dial tcp 10.96.88.3:8443: connect: connection refused",
                "duration_ms": duration,
            }
            return [("stderr", orjson.dumps(doc).decode())]
        status = 201 if method == "POST" else (204 if method == "DELETE" else 200)
        doc = {"level": "info", **base, "msg": "request completed", "status": status, "user_id": user}
        doc["duration_ms"] = duration
        out = [("stdout", orjson.dumps(doc).decode())]
        if kind == "slow":
            slow = {"level": "warn", **base, "logger": "api.db", "msg": "slow query"}
            slow |= {"table": "cart_items", "query_ms": round(duration * 12, 1), "rows": rows}
            out.insert(0, ("stdout", orjson.dumps(slow).decode()))
        return out

    return lines


# --- payments/worker: a Python app ------------------------------------------------------------------

_TRACEBACK = (
    "Traceback (most recent call last):",
    '  File "/app/payments/worker.py", line 88, in handle',
    "    result = gateway.charge(order.card_token, order.amount)",
    '  File "/app/payments/gateway.py", line 41, in charge',
    "    resp.raise_for_status()",
    '  File "/usr/local/lib/python3.12/site-packages/httpx/_models.py", line 829, in raise_for_status',
    "    raise HTTPStatusError(message, request=request, response=self)",
    "httpx.HTTPStatusError: Server error '503 Service Unavailable' for url"
    " 'https://gateway.example.com/v1/charges'",
)


def _py_time(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", _utc(ts)) + f",{_ms(ts):03d}"


def _worker(rng: random.Random, n: int) -> Event:
    order = 10_000 + n
    amount = round(rng.uniform(3, 400), 2)
    currency = rng.choice(("EUR", "EUR", "USD", "GBP"))
    card = rng.choice(("visa", "mastercard", "amex"))
    took = rng.randint(40, 900)
    failed = n % 40 == 17

    def lines(ts: int) -> list[tuple[str, str]]:
        if failed:
            head = f"{_py_time(ts)} ERROR payments.worker: charge failed for order {order}, will retry"
            return [("stderr", head), *(("stderr", line) for line in _TRACEBACK)]
        if n % 25 == 3:
            return [("stdout", f"{_py_time(ts)} INFO payments.worker: settlement batch {n // 25} closed")]
        return [
            (
                "stdout",
                f"{_py_time(ts)} INFO payments.worker: charged order {order}"
                f" amount={amount:.2f} {currency} card={card} in {took}ms",
            )
        ]

    return lines


def _long_line(rng: random.Random, n: int) -> Event:
    """A debug dump longer than MAX_LINE_BYTES: the runtime writes it as P, P, ..., F pieces."""
    charges = [
        {"order": 10_000 + i, "amount": round(rng.uniform(3, 400), 2), "status": "settled"}
        for i in range(700)
    ]
    payload = orjson.dumps({"batch": n, "charges": charges}).decode()

    def lines(ts: int) -> list[tuple[str, str]]:
        return [("stdout", f"{_py_time(ts)} DEBUG payments.worker: settlement export payload={payload}")]

    return lines


# --- kube-system/coredns -----------------------------------------------------------------------------

_DNS_NAMES = (
    ("A", "api.shop.svc.cluster.local.", "NOERROR"),
    ("AAAA", "api.shop.svc.cluster.local.", "NOERROR"),
    ("A", "payments.payments.svc.cluster.local.", "NOERROR"),
    ("A", "gateway.example.com.", "NOERROR"),
    ("A", "redis.shop.svc.cluster.local.", "NOERROR"),
    ("A", "api.shop.svc.cluster.local.shop.svc.cluster.local.", "NXDOMAIN"),
    ("SRV", "_http._tcp.web.shop.svc.cluster.local.", "NOERROR"),
)


def _coredns(rng: random.Random, n: int) -> Event:
    qtype, name, rcode = rng.choice(_DNS_NAMES)
    client = f"10.244.{rng.randint(0, 3)}.{rng.randint(2, 254)}:{rng.randint(32768, 60999)}"
    qid = rng.randint(1, 65535)
    took = rng.lognormvariate(-8.5, 1.0)
    size = rng.randint(90, 180)

    def lines(ts: int) -> list[tuple[str, str]]:
        flags = "qr,aa,rd" if name.endswith(".cluster.local.") else "qr,rd,ra"
        return [
            (
                "stdout",
                f'[INFO] {client} - {qid} "{qtype} IN {name} udp {len(name) + 17} false 512"'
                f" {rcode} {flags} {size} {took:.6f}s",
            )
        ]

    return lines


DEMO_PODS: tuple[DemoPod, ...] = (
    DemoPod("shop", "web-7d9f8-abcde", "nginx", "cri", _web, (1, 2, 2, 3, 4)),
    DemoPod("shop", "api-5c6b7d9f4-q8x2m", "api", "docker", _api, (0, 1, 1, 2, 3)),
    DemoPod("payments", "worker-6f8b9c7d5-k2v9p", "worker", "cri", _worker, (0, 0, 1, 1, 2)),
    DemoPod("kube-system", "coredns-5d78c9869d-xk2pq", "coredns", "cri", _coredns, (0, 1, 2, 3)),
)


def _epoch_ns(when: datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return calendar.timegm(when.utctimetuple()) * 1_000_000_000 + when.microsecond * 1000


def _history(pod: DemoPod, rng: random.Random, lines_per_pod: int, end_ns: int) -> bytes:
    """The pod's log, at least ``lines_per_pod`` lines, the last one at ``end_ns``."""
    events: list[Event] = []
    counts: list[int] = []
    while sum(counts) < lines_per_pod:
        n = len(events)
        if pod.events is _worker and n == lines_per_pod // 2:
            event = _long_line(rng, n)
        else:
            event = pod.events(rng, n)
        events.append(event)
        counts.append(len(event(0)))
    # Events at random gaps (about 3 s a line), scaled so the history spans the last few minutes and
    # the last event's last line lands exactly on end_ns.
    last_ts = end_ns - (counts[-1] - 1) * _LINE_STEP_NS
    gaps = [rng.expovariate(1.0) * c for c in counts[:-1]]
    span_ns = 3_000_000_000 * lines_per_pod
    scale = span_ns / (sum(gaps) or 1.0)
    t = float(last_ts - span_ns)
    prev = 0
    out = []
    for i, event in enumerate(events):
        final = i == len(events) - 1
        ts = last_ts if final else max(int(t) + rng.randrange(1000), prev + _LINE_STEP_NS)
        ts = min(ts, last_ts)  # never after the end, even after many tiny gaps
        for j, (stream, text) in enumerate(event(ts)):
            prev = ts + j * _LINE_STEP_NS
            out.append(_encode(pod.format, prev, stream, text))
        if not final:
            t += gaps[i] * scale
    return b"".join(out)


def write_demo_logs(
    folder: Path, *, lines_per_pod: int = 200, seed: int = 0, now: datetime | None = None
) -> list[Path]:
    """Write (replace) one log file per demo pod in ``folder``; returns their paths.

    Each file holds at least ``lines_per_pod`` lines (a traceback may add a few), with timestamps
    spread over about ``3 * lines_per_pod`` seconds and the last one at ``now`` (default: the
    current time; naive datetimes are taken as UTC).
    """
    if lines_per_pod < 1:
        raise ValueError("lines_per_pod must be at least 1")
    end_ns = _epoch_ns(now if now is not None else datetime.now(UTC))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for pod in DEMO_PODS:
        rng = random.Random(f"{seed}/{pod.namespace}/{pod.pod}")
        path = folder / pod.file_name(seed)
        path.write_bytes(_history(pod, rng, lines_per_pod, end_ns))
        paths.append(path)
    return paths


def _append(chunks: dict[Path, bytes]) -> None:
    for path, data in chunks.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as fh:
            fh.write(data)


async def run_demo_writer(
    folder: Path,
    stop: asyncio.Event,
    interval: float = 1.0,
    *,
    seed: int = 0,
    clock: Callable[[], datetime] | None = None,
) -> None:
    """Append lines to the demo files in ``folder`` every ``interval`` seconds until ``stop`` is set.

    Each pod writes a few events per second of ``clock`` time (default clock: the current UTC time),
    dated between the previous tick and this one. Files that do not exist yet are created; file
    writes run in a worker thread.
    """
    now = clock or (lambda: datetime.now(UTC))
    rngs = {pod: random.Random(f"{seed}/{pod.namespace}/{pod.pod}/live") for pod in DEMO_PODS}
    counters = dict.fromkeys(DEMO_PODS, 100_000)
    due = dict.fromkeys(DEMO_PODS, 0.0)  # events owed, fractional
    last_ns = dict.fromkeys(DEMO_PODS, 0)
    prev_ns = _epoch_ns(now()) - int(interval * 1e9)
    while not stop.is_set():
        tick_ns = _epoch_ns(now())
        elapsed_ns = min(max(tick_ns - prev_ns, 0), 10_000_000_000)  # a suspended laptop: no flood
        chunks: dict[Path, bytes] = {}
        for pod in DEMO_PODS:
            rng = rngs[pod]
            due[pod] += rng.choice(pod.live_events_per_second) * elapsed_ns / 1e9
            count = int(due[pod])
            due[pod] -= count
            data = []
            for k in range(count):
                event = pod.events(rng, counters[pod])
                counters[pod] += 1
                ts = max(tick_ns - elapsed_ns * (count - k - 1) // count, last_ns[pod] + _LINE_STEP_NS)
                for j, (stream, text) in enumerate(event(ts)):
                    last_ns[pod] = ts + j * _LINE_STEP_NS
                    data.append(_encode(pod.format, last_ns[pod], stream, text))
            if data:
                chunks[folder / pod.file_name(seed)] = b"".join(data)
        prev_ns = tick_ns
        if chunks:
            await asyncio.to_thread(_append, chunks)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


DEMO_RECORDS = """\
# kubeobs one-machine mode: the objects the DNS server answers for, as Kubernetes would hold them
# (what `kubectl get svc,endpointslices,pods -A -o yaml` prints works too). Edit and save: the server
# reloads this file within a second or two.
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
  - {name: metrics, port: 9153, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIPs: [10.96.12.7, "fd00:10:96::c07"]
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  clusterIP: 10.96.40.2
  ports: [{name: http, port: 8080, protocol: TCP}, {name: grpc, port: 9090, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: payments}
spec:
  clusterIP: None
  ports: [{name: postgres, port: 5432, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-x7k2p
  namespace: payments
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
endpoints:
- {addresses: [10.244.1.17], hostname: db-0, conditions: {ready: true}}
- {addresses: [10.244.2.23], hostname: db-1, conditions: {ready: true}}
- {addresses: [10.244.3.9], hostname: db-2, conditions: {ready: false}}
ports: [{name: postgres, port: 5432, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: billing, namespace: payments}
spec: {type: ExternalName, externalName: billing.example.com}
---
apiVersion: v1
kind: Pod
metadata: {name: worker-6f8b9c7d5-k2v9p, namespace: payments}
spec: {hostname: worker, subdomain: db}
status: {podIP: 10.244.1.30, podIPs: [{ip: 10.244.1.30}]}
"""


def write_demo_records(path: Path) -> None:
    """The demo cluster's services, endpoints and pods for the DNS server (one-machine mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DEMO_RECORDS, encoding="utf-8")
