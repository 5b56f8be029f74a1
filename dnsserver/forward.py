"""Forward queries to upstream resolvers, like CoreDNS ``forward``.

Interface::

    forwarder = Forwarder([("10.0.0.2", 53), ("10.0.0.3", 53)], policy="random", timeout=2.0,
                          max_concurrent=1000, health_check_interval=0.5, max_fails=2)
    task = asyncio.create_task(forwarder.run())         # health checks; cancel it on shutdown
    try:
        reply = await forwarder.forward(query, tcp=False)  # raw wire in, raw wire out, same ID
    except ForwardOverloaded:
        ...  # answer REFUSED (CoreDNS does)
    except ForwardError:
        ...  # answer SERVFAIL
    registry.register(forwarder)                        # metrics, see below

Behaviour:

* Upstreams are ``(IP, port)``, IPv4 or IPv6 literals (as in CoreDNS); a host name would be resolved
  again on every exchange.
* Transport: UDP first, one connected socket per exchange; a reply with TC set is asked again over TCP
  (2-byte length prefix) to the same upstream. ``tcp=True`` (the client asked over TCP) goes upstream
  over TCP directly.
* Replies are accepted only if they are responses with the query's ID and question (name compared
  case-insensitively, type and class exactly); anything else arriving on the socket is ignored and
  counted. The upstream's reply is returned as it is, whatever its rcode (SERVFAIL included).
* Deadlines: ``timeout`` bounds a whole :meth:`Forwarder.forward` call. Each exchange with one upstream
  gets at most ``attempt_timeout`` (default ``timeout / 2``, as CoreDNS tries an upstream for 2 s within
  a 5 s budget); on a timeout or a network error the next upstream is tried, cycling through the list,
  until the deadline or ``2 * len(upstreams)`` exchanges.
* Health: each failed exchange adds one to the upstream's consecutive failures (a reply resets them).
  At ``max_fails`` (0 disables this) it is marked down and :meth:`Forwarder.run` sends it a ``. IN NS``
  query every ``health_check_interval`` until any reply comes back (any rcode counts, as in CoreDNS),
  which marks it up. Down upstreams are skipped while any upstream is up; if all are down, all are tried
  anyway in random order (counted in ``coredns_forward_healthcheck_broken_total``). A down upstream
  only comes back through ``run()`` (or by answering while all are down), so keep ``run()`` running.
* Policies pick the order for each query among the up upstreams: ``sequential`` (configured order),
  ``random`` (shuffled), ``round_robin`` (rotated by one per query).
* ``max_concurrent`` bounds the :meth:`Forwarder.forward` calls in flight; one more raises
  :class:`ForwardOverloaded` at once (counted).
* ``now`` (monotonic seconds) is the clock for deadlines and latencies; the waits themselves are
  asyncio timeouts, so give it ``time.monotonic`` (the default) or a clock that agrees with the loop's.

Metrics (:meth:`Forwarder.collect`; CoreDNS names so CoreDNS dashboards work; ``to`` is ``HOST:PORT``, an IPv6
host in brackets):

==============================================================  =======================================
coredns_proxy_request_duration_seconds{proxy_name,to,rcode}     histogram of exchanges that got a reply
coredns_proxy_healthcheck_failures_total{proxy_name,to}         failed health checks
coredns_forward_healthcheck_broken_total                        queries that found all upstreams down
coredns_forward_max_concurrent_rejects_total                    queries refused over max_concurrent
coredns_forward_requests_total{to}                              exchanges sent (a TCP retry counts too)
coredns_forward_responses_total{to,rcode}                       replies accepted
kubeobs_dns_forward_mismatched_responses_total{to}              datagrams/replies ignored (not ours)
==============================================================  =======================================

``proxy_name`` is always ``forward``. The histogram uses CoreDNS's buckets (0.00025 * 2^n s, n < 16).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from dnsserver.wire import HEADER, WireError, question_key

log = logging.getLogger(__name__)

Policy = Literal["sequential", "random", "round_robin"]
PROXY_NAME: Final = "forward"
DURATION_BUCKETS: Final[tuple[float, ...]] = tuple(0.00025 * 2**n for n in range(16))
"""CoreDNS ``prometheus.ExponentialBuckets(0.00025, 2, 16)``."""
RCODE_NAMES: Final = (
    "NOERROR",
    "FORMERR",
    "SERVFAIL",
    "NXDOMAIN",
    "NOTIMP",
    "REFUSED",
    "YXDOMAIN",
    "YXRRSET",
    "NXRRSET",
    "NOTAUTH",
    "NOTZONE",
)
_HEALTH_QUESTION: Final = b"\x00\x00\x02\x00\x01"  # . IN NS
_U16: Final = struct.Struct(">H")


class ForwardError(Exception):
    """No upstream answered in time, or the query cannot be forwarded; the caller answers SERVFAIL."""


class ForwardOverloaded(ForwardError):
    """``max_concurrent`` queries are already in flight; the caller answers REFUSED (as CoreDNS does)."""


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def rcode_name(rcode: int) -> str:
    """The mnemonic of a header rcode (0-15), or its number."""
    return RCODE_NAMES[rcode] if rcode < len(RCODE_NAMES) else str(rcode)


def reply_matches(reply: bytes, query_id: bytes, qkey: bytes) -> bool:
    """True if ``reply`` is a response with ID ``query_id`` and question key ``qkey``."""
    if len(reply) < HEADER or reply[0:2] != query_id or not reply[2] & 0x80:
        return False
    try:
        return question_key(reply) == qkey
    except WireError:
        return False


class _Histogram:
    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * len(DURATION_BUCKETS)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        i = bisect_left(DURATION_BUCKETS, seconds)
        if i < len(self.buckets):
            self.buckets[i] += 1
        self.count += 1
        self.total += seconds


@dataclass(slots=True)
class _Upstream:
    host: str
    port: int
    name: str
    fails: int = 0
    down: bool = False
    requests: int = 0
    mismatched: int = 0
    healthcheck_failures: int = 0
    responses: dict[str, int] = field(default_factory=dict)
    durations: dict[str, _Histogram] = field(default_factory=dict)

    def mismatch(self) -> None:
        self.mismatched += 1


class _UdpClient(asyncio.DatagramProtocol):
    """Receives on a connected UDP socket until a datagram matches the query."""

    def __init__(self, query_id: bytes, qkey: bytes, on_mismatch: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        self.reply: asyncio.Future[bytes] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._query_id = query_id
        self._qkey = qkey
        self._on_mismatch = on_mismatch

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if self.reply.done():
            return
        if reply_matches(data, self._query_id, self._qkey):
            self.reply.set_result(data)
        else:
            self._on_mismatch()

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc or ConnectionError("UDP socket closed"))
        if not self.closed.done():
            self.closed.set_result(None)


async def udp_exchange(
    host: str, port: int, query: bytes, qkey: bytes, on_mismatch: Callable[[], None]
) -> bytes:
    """Send ``query`` from a fresh connected UDP socket and wait for the matching reply (no timeout:
    wrap it in one). The socket is closed on return, error and cancellation."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _UdpClient(query[0:2], qkey, on_mismatch), remote_addr=(host, port)
    )
    try:
        transport.sendto(query)
        return await proto.reply
    finally:
        if not proto.reply.done():
            proto.reply.cancel()
        transport.close()
        await proto.closed


async def tcp_exchange(
    host: str, port: int, query: bytes, qkey: bytes, on_mismatch: Callable[[], None]
) -> bytes:
    """Send ``query`` over a fresh TCP connection (2-byte length prefix) and read one reply (no timeout:
    wrap it in one). A reply that does not match the query raises ``ConnectionError``."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(_U16.pack(len(query)) + query)
        await writer.drain()
        (length,) = _U16.unpack(await reader.readexactly(2))
        reply = await reader.readexactly(length)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if not reply_matches(reply, query[0:2], qkey):
        on_mismatch()
        raise ConnectionError("TCP reply does not match the query")
    return reply


class Forwarder:
    """Forwards queries for names outside the cluster zones to upstream resolvers (CoreDNS ``forward``).

    See the module docstring for the behaviour, the configuration and the metrics.
    """

    def __init__(
        self,
        upstreams: Sequence[tuple[str, int]],
        *,
        policy: Policy = "random",
        timeout: float = 2.0,
        max_concurrent: int = 1000,
        health_check_interval: float = 0.5,
        max_fails: int = 2,
        attempt_timeout: float | None = None,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        if not upstreams:
            raise ValueError("at least one upstream is needed")
        if policy not in ("sequential", "random", "round_robin"):
            raise ValueError(f"unknown policy {policy!r}")
        if timeout <= 0 or health_check_interval <= 0 or max_concurrent < 1 or max_fails < 0:
            raise ValueError(
                "timeout and health_check_interval must be > 0, max_concurrent >= 1, max_fails >= 0"
            )
        self._upstreams = [_Upstream(host, port, _host_port(host, port)) for host, port in upstreams]
        self._policy = policy
        self._timeout = timeout
        self._attempt_timeout = timeout / 2 if attempt_timeout is None else min(attempt_timeout, timeout)
        self._max_attempts = 2 * len(self._upstreams)
        self._max_concurrent = max_concurrent
        self._health_check_interval = health_check_interval
        self._max_fails = max_fails
        self._now = now
        self._rng = random.Random()
        self._round_robin = 0
        self._inflight = 0
        self._rejects = 0
        self._broken = 0

    @property
    def inflight(self) -> int:
        """:meth:`forward` calls in progress."""
        return self._inflight

    def upstream_status(self) -> dict[str, bool]:
        """``{"HOST:PORT": up}`` for every upstream, in configured order."""
        return {u.name: not u.down for u in self._upstreams}

    async def run(self) -> None:
        """Health-check the upstreams marked down, every ``health_check_interval``, until cancelled."""
        while True:
            down = [u for u in self._upstreams if u.down]
            if down:
                async with asyncio.TaskGroup() as group:
                    for upstream in down:
                        group.create_task(self._health_check(upstream))
            await asyncio.sleep(self._health_check_interval)

    async def _health_check(self, upstream: _Upstream) -> None:
        query = _U16.pack(self._rng.getrandbits(16)) + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        query += _HEALTH_QUESTION
        try:
            async with asyncio.timeout(self._attempt_timeout):
                await udp_exchange(upstream.host, upstream.port, query, _HEALTH_QUESTION, upstream.mismatch)
        except (TimeoutError, OSError) as exc:
            upstream.healthcheck_failures += 1
            log.debug("health check of upstream %s failed: %r", upstream.name, exc)
            return
        except Exception:  # keep run() alive: a dead checker would leave the upstream down for good
            upstream.healthcheck_failures += 1
            log.exception("health check of upstream %s failed unexpectedly", upstream.name)
            return
        if upstream.down:
            log.info("upstream %s answers health checks again: up", upstream.name)
        upstream.fails = 0
        upstream.down = False

    async def forward(self, query: bytes, *, tcp: bool = False) -> bytes:
        """Send the raw wire query upstream, return the raw wire response (the reply's ID equals the
        query's ID).

        Raises :class:`ForwardError` when no upstream answered in time, all tried upstreams failed or
        the query is not a single-question message; :class:`ForwardOverloaded` (a subclass) when
        ``max_concurrent`` queries are in flight already.
        """
        if self._inflight >= self._max_concurrent:
            self._rejects += 1
            raise ForwardOverloaded(f"{self._max_concurrent} queries in flight already")
        try:
            qkey = question_key(query)
        except WireError as exc:
            raise ForwardError(f"cannot forward the query: {exc}") from exc
        if len(query) > 0xFFFF:
            raise ForwardError("query longer than 65535 bytes")
        self._inflight += 1
        try:
            return await self._forward(query, qkey, tcp)
        finally:
            self._inflight -= 1

    def _candidates(self) -> list[_Upstream]:
        up = [u for u in self._upstreams if not u.down]
        if not up:
            self._broken += 1
            up = list(self._upstreams)
            self._rng.shuffle(up)
            return up
        if self._policy == "random":
            self._rng.shuffle(up)
        elif self._policy == "round_robin":
            start = self._round_robin % len(up)
            self._round_robin = (start + 1) % len(up)
            up = up[start:] + up[:start]
        return up

    async def _forward(self, query: bytes, qkey: bytes, tcp: bool) -> bytes:
        candidates = self._candidates()
        deadline = self._now() + self._timeout
        errors: list[str] = []
        for attempt in range(self._max_attempts):
            if deadline - self._now() <= 0:
                break
            upstream = candidates[attempt % len(candidates)]
            try:
                return await self._exchange(upstream, query, qkey, tcp, deadline)
            except (TimeoutError, OSError, EOFError) as exc:
                errors.append(f"{upstream.name}: {exc!r}")
                self._failed(upstream)
        raise ForwardError(f"no upstream answered within {self._timeout} s: {'; '.join(errors) or 'no try'}")

    async def _exchange(
        self, upstream: _Upstream, query: bytes, qkey: bytes, tcp: bool, deadline: float
    ) -> bytes:
        if not tcp:
            reply = await self._timed(upstream, udp_exchange, query, qkey, deadline)
            if not reply[2] & 0x02:
                return reply
        return await self._timed(upstream, tcp_exchange, query, qkey, deadline)

    async def _timed(
        self,
        upstream: _Upstream,
        exchange: Callable[[str, int, bytes, bytes, Callable[[], None]], Awaitable[bytes]],
        query: bytes,
        qkey: bytes,
        deadline: float,
    ) -> bytes:
        start = self._now()
        wait = min(self._attempt_timeout, deadline - start)
        if wait <= 0:
            raise TimeoutError("deadline reached")
        upstream.requests += 1
        async with asyncio.timeout(wait):
            reply = await exchange(upstream.host, upstream.port, query, qkey, upstream.mismatch)
        rcode = rcode_name(reply[3] & 0x0F)
        upstream.responses[rcode] = upstream.responses.get(rcode, 0) + 1
        histogram = upstream.durations.get(rcode)
        if histogram is None:
            histogram = upstream.durations[rcode] = _Histogram()
        histogram.observe(self._now() - start)
        if upstream.down:
            log.info("upstream %s answered: up", upstream.name)
        upstream.fails = 0
        upstream.down = False
        return reply

    def _failed(self, upstream: _Upstream) -> None:
        if self._max_fails == 0:
            return
        upstream.fails += 1
        if upstream.fails >= self._max_fails and not upstream.down:
            upstream.down = True
            log.warning("upstream %s failed %d times in a row: down", upstream.name, upstream.fails)

    def collect(self) -> Iterable[Metric]:
        """Metric families with CoreDNS names (see the module docstring)."""
        duration = HistogramMetricFamily(
            "coredns_proxy_request_duration_seconds",
            "Histogram of the time each request took.",
            labels=["proxy_name", "to", "rcode"],
        )
        hc_failures = CounterMetricFamily(
            "coredns_proxy_healthcheck_failures",
            "Counter of the number of failed healthchecks.",
            labels=["proxy_name", "to"],
        )
        requests = CounterMetricFamily(
            "coredns_forward_requests", "Counter of requests made per upstream.", labels=["to"]
        )
        responses = CounterMetricFamily(
            "coredns_forward_responses", "Counter of responses received per upstream.", labels=["to", "rcode"]
        )
        mismatched = CounterMetricFamily(
            "kubeobs_dns_forward_mismatched_responses",
            "Datagrams and replies from an upstream ignored because their ID or question did not match.",
            labels=["to"],
        )
        for u in self._upstreams:
            for rcode, hist in sorted(u.durations.items()):
                cumulative = 0
                buckets: list[tuple[str, float]] = []
                for bound, n in zip(DURATION_BUCKETS, hist.buckets, strict=True):
                    cumulative += n
                    buckets.append((repr(bound), cumulative))
                buckets.append(("+Inf", hist.count))
                duration.add_metric([PROXY_NAME, u.name, rcode], buckets, hist.total)
            hc_failures.add_metric([PROXY_NAME, u.name], u.healthcheck_failures)
            requests.add_metric([u.name], u.requests)
            for rcode, n in sorted(u.responses.items()):
                responses.add_metric([u.name, rcode], n)
            mismatched.add_metric([u.name], u.mismatched)
        broken = CounterMetricFamily(
            "coredns_forward_healthcheck_broken",
            "Counter of the number of complete failures of the healthchecks.",
        )
        broken.add_metric([], self._broken)
        rejects = CounterMetricFamily(
            "coredns_forward_max_concurrent_rejects",
            "Counter of the number of queries rejected because the concurrent queries were at maximum.",
        )
        rejects.add_metric([], self._rejects)
        return [duration, hc_failures, broken, rejects, requests, responses, mismatched]
