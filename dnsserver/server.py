"""The DNS server: UDP and TCP listeners on one port, and the chain that answers a query.

The chain, in this fixed order (CoreDNS's ``plugin.cfg`` order for the plugins it mirrors)::

    errors (FORMERR / NOTIMP / REFUSED)  ->  kubernetes (the cluster zone and its reverse names)
      ->  cache (forwarded answers)  ->  forward (upstreams)

Answers of the cluster zone are computed once per question and kept as wire bytes (:class:`Answers`,
invalidated whenever the zone changes), so a cluster name costs a dict lookup and a few byte splices,
like a cache hit. Names in the zone are never forwarded. Before the zone's first sync they get SERVFAIL.
Names outside it go to the upstreams (REFUSED when there are none).

Backpressure: a UDP query that needs an upstream becomes a task; at most ``max_pending`` of them exist,
further ones are dropped and counted (``kubeobs_dns_dropped_total{reason="overload"}``), as a real DNS
server sheds load. A TCP connection answers its queries in order, one at a time, and is closed after
``tcp_idle_timeout`` seconds without a query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

from dnslib import QTYPE, RCODE, RR

from dnsserver.forward import ForwardError, ForwardOverloaded
from dnsserver.metrics import DnsStats
from dnsserver.wire import (
    MAX_UDP_DEFAULT,
    Prepared,
    Query,
    QueryError,
    error_response,
    name_of,
    parse_query,
    prepare,
    qtype_name,
    rcode_response,
)
from dnsserver.zone import Answer, ClusterZone

log = logging.getLogger(__name__)

RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
MAX_ANSWERS = 200_000  # compiled answers kept; beyond, the table starts over (random NXDOMAIN names)
_REFUSED_TYPES = {int(QTYPE.AXFR), int(QTYPE.IXFR)}
_REVERSE = ("in-addr.arpa.", "ip6.arpa.")


class Upstream(Protocol):
    async def forward(self, query: bytes, *, tcp: bool = False) -> bytes: ...


class Cache(Protocol):
    def lookup(self, query: bytes, key: bytes) -> tuple[bytes, bool] | None: ...

    def put(self, key: bytes, response: bytes) -> None: ...


class Answers:
    """Questions of the cluster zone answered as prepared wire bytes, per EDNS or not."""

    def __init__(self, zone: ClusterZone, *, ready: Callable[[], bool]) -> None:
        self.zone = zone
        self.ready = ready
        self.plain: dict[bytes, Prepared] = {}
        self.edns: dict[bytes, Prepared] = {}
        self.generation = zone.generation

    def swap(self, zone: ClusterZone) -> None:
        """Answer from another zone from now on (a reloaded records file)."""
        self.zone = zone
        self.plain = {}
        self.edns = {}
        self.generation = zone.generation

    def prepared(self, q: Query) -> Prepared | None:
        """The prepared answer for an in-zone question (computing it on first use); None when the name
        is not the zone's (a reverse name of no service or endpoint, or outside the zone)."""
        zone = self.zone
        if zone.generation != self.generation:
            self.plain.clear()
            self.edns.clear()
            self.generation = zone.generation
        table = self.edns if q.edns else self.plain
        prep = table.get(q.key)
        if prep is not None:
            return prep
        name = name_of(q.key)
        answer: Answer | None
        if zone.in_zone(name):
            answer = zone.lookup(name, q.qtype)
        elif name.endswith(_REVERSE) and q.qtype in (QTYPE.PTR, QTYPE.ANY):
            answer = zone.lookup_ptr(name)
            if answer is None:
                return None
        else:
            return None
        ttl = zone.ttl

        def rrs(items: list[tuple[str, int, Any]]) -> list[RR]:
            return [RR(n, t, ttl=ttl, rdata=rd) for n, t, rd in items]

        prep = prepare(
            q.key,
            answer.rcode,
            rrs(answer.answer),
            rrs(answer.authority),
            rrs(answer.additional),
            edns=bool(q.edns),
            authoritative=answer.authoritative,
        )
        if len(table) >= MAX_ANSWERS:
            table.clear()
        table[q.key] = prep
        return prep


class Resolver:
    """The chain (see the module docstring) for one query; used by both listeners."""

    def __init__(
        self,
        answers: Answers,
        stats: DnsStats,
        *,
        upstream: Upstream | None = None,
        cache: Cache | None = None,
        max_pending: int = 1000,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.answers = answers
        self.stats = stats
        self.upstream = upstream
        self.cache = cache
        self.max_pending = max_pending
        self.pending: set[asyncio.Task[None]] = set()
        self.clock = clock

    def local(self, data: bytes, q: Query, limit: int, proto: str, family: str, t0: float) -> bytes | None:
        """The answer when it needs no upstream (zone, errors, cache hit); None: forward it."""
        stats = self.stats
        if q.qclass != 1 or q.qtype in _REFUSED_TYPES:  # not IN; zone transfers
            out = rcode_response(data, q, RCODE.REFUSED)
            stats.record(
                proto, family, qtype_name(q.qtype), "REFUSED", "", len(data), len(out), self.clock() - t0
            )
            return out
        prep = self.answers.prepared(q)
        if prep is not None:
            if not self.answers.ready():
                out = rcode_response(data, q, RCODE.SERVFAIL)
                stats.record(
                    proto,
                    family,
                    qtype_name(q.qtype),
                    "SERVFAIL",
                    "kubernetes",
                    len(data),
                    len(out),
                    self.clock() - t0,
                )
                return out
            out = prep.assemble(data, q, limit)
            stats.record(
                proto,
                family,
                qtype_name(q.qtype),
                RCODE_NAMES.get(prep.rcode, str(prep.rcode)),
                "kubernetes",
                len(data),
                len(out),
                self.clock() - t0,
            )
            return out
        if self.upstream is None:
            out = rcode_response(data, q, RCODE.REFUSED)
            stats.record(
                proto, family, qtype_name(q.qtype), "REFUSED", "", len(data), len(out), self.clock() - t0
            )
            return out
        if self.cache is not None:
            found = self.cache.lookup(data, q.key)
            if found is not None:
                hit, stale = found
                if stale:  # serve-stale: answer now, refresh from the upstreams behind it
                    self._refresh(data, q)
                out = _fit(hit, data, q, limit)
                stats.record(
                    proto,
                    family,
                    qtype_name(q.qtype),
                    RCODE_NAMES.get(hit[3] & 0xF, "OTHER"),
                    "cache",
                    len(data),
                    len(out),
                    self.clock() - t0,
                )
                return out
        return None

    def _refresh(self, data: bytes, q: Query) -> None:
        if len(self.pending) >= self.max_pending:
            return
        task = asyncio.create_task(self._fetch(data, q))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _fetch(self, data: bytes, q: Query) -> None:
        assert self.upstream is not None and self.cache is not None
        with contextlib.suppress(ForwardError):
            self.cache.put(q.key, await self.upstream.forward(data))

    async def forwarded(self, data: bytes, q: Query, limit: int, proto: str, family: str, t0: float) -> bytes:
        assert self.upstream is not None
        plugin = "forward"
        try:
            resp = await self.upstream.forward(data, tcp=proto == "tcp")
        except ForwardOverloaded:
            out = rcode_response(data, q, RCODE.REFUSED, ra=True)
        except ForwardError:
            out = rcode_response(data, q, RCODE.SERVFAIL, ra=True)
        else:
            if self.cache is not None:
                self.cache.put(q.key, resp)
            out = _fit(resp, data, q, limit)
        self.stats.record(
            proto,
            family,
            qtype_name(q.qtype),
            RCODE_NAMES.get(out[3] & 0xF, "OTHER"),
            plugin,
            len(data),
            len(out),
            self.clock() - t0,
        )
        return out


def _fit(resp: bytes, data: bytes, q: Query, limit: int) -> bytes:
    """``resp`` with the query's ID, or its truncated form (TC, question only) when over ``limit``."""
    out = data[:2] + resp[2:]
    if limit and len(out) > limit:
        flags = (resp[2] << 8 | resp[3]) | 0x0200
        return data[:2] + struct.pack("!HHHHH", flags, 1, 0, 0, 0) + data[12 : q.qend]
    return out


class UdpServer(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver, family: str) -> None:
        self.resolver = resolver
        self.family = family
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass

    def datagram_received(self, data: bytes, addr: Any) -> None:
        r = self.resolver
        t0 = r.clock()
        transport = self.transport
        assert transport is not None
        try:
            q = parse_query(data)
        except QueryError as e:
            self._error(data, addr, e, t0)
            return
        limit = q.edns if q.edns else MAX_UDP_DEFAULT
        try:
            out = r.local(data, q, limit, "udp", self.family, t0)
        except Exception:
            r.stats.panics += 1
            log.exception("answering %r", data[:64])
            transport.sendto(rcode_response(data, q, RCODE.SERVFAIL), addr)
            return
        if out is not None:
            transport.sendto(out, addr)
            return
        if len(r.pending) >= r.max_pending:
            r.stats.drop("overload")
            return
        task = asyncio.create_task(self._forward(data, q, limit, addr, t0))
        r.pending.add(task)
        task.add_done_callback(r.pending.discard)

    async def _forward(self, data: bytes, q: Query, limit: int, addr: Any, t0: float) -> None:
        try:
            out = await self.resolver.forwarded(data, q, limit, "udp", self.family, t0)
        except Exception:
            self.resolver.stats.panics += 1
            log.exception("forwarding %r", data[:64])
            out = rcode_response(data, q, RCODE.SERVFAIL)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(out, addr)

    def _error(self, data: bytes, addr: Any, e: QueryError, t0: float) -> None:
        r = self.resolver
        if e.rcode is None or len(data) < 4:
            r.stats.drop("malformed")
            return
        out = error_response(data, e.rcode)
        r.stats.record(
            "udp",
            self.family,
            "other",
            RCODE_NAMES.get(e.rcode, "OTHER"),
            "",
            len(data),
            len(out),
            r.clock() - t0,
        )
        assert self.transport is not None
        self.transport.sendto(out, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)


async def _tcp_client(
    resolver: Resolver, idle: float, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    sock = writer.get_extra_info("socket")
    family = "2" if sock is not None and sock.family == socket.AF_INET6 else "1"
    try:
        while True:
            try:
                async with asyncio.timeout(idle):
                    head = await reader.readexactly(2)
                    data = await reader.readexactly(struct.unpack("!H", head)[0])
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return
            t0 = resolver.clock()
            try:
                q = parse_query(data)
            except QueryError as e:
                if e.rcode is None or len(data) < 4:
                    resolver.stats.drop("malformed")
                    return  # nothing sensible to answer: close, as a malformed stream can't be resynced
                out = error_response(data, e.rcode)
                resolver.stats.record(
                    "tcp",
                    family,
                    "other",
                    RCODE_NAMES.get(e.rcode, "OTHER"),
                    "",
                    len(data),
                    len(out),
                    resolver.clock() - t0,
                )
            else:
                try:
                    local = resolver.local(data, q, 0, "tcp", family, t0)
                    out = (
                        local
                        if local is not None
                        else await resolver.forwarded(data, q, 0, "tcp", family, t0)
                    )
                except Exception:
                    resolver.stats.panics += 1
                    log.exception("answering %r over TCP", data[:64])
                    out = rcode_response(data, q, RCODE.SERVFAIL)
            writer.write(struct.pack("!H", len(out)) + out)
            await writer.drain()
    except ConnectionError:
        return
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class Listeners:
    """The UDP endpoint and TCP server on one address; :meth:`close` stops both."""

    def __init__(self, udp: asyncio.DatagramTransport, tcp: asyncio.Server) -> None:
        self.udp = udp
        self.tcp = tcp

    @property
    def port(self) -> int:
        return int(self.udp.get_extra_info("sockname")[1])

    async def close(self) -> None:
        self.tcp.close()
        self.udp.close()
        with contextlib.suppress(Exception):
            await self.tcp.wait_closed()


async def listen(resolver: Resolver, host: str, port: int, *, tcp_idle_timeout: float = 10.0) -> Listeners:
    """Bind UDP and TCP on ``host:port`` (port 0: a free port, the same for both)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    fam_label = "2" if family == socket.AF_INET6 else "1"
    for _ in range(20):
        udp, _proto = await loop.create_datagram_endpoint(
            lambda: UdpServer(resolver, fam_label), local_addr=(host, port), family=family
        )
        bound = udp.get_extra_info("sockname")[1]
        sock = udp.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        try:
            tcp = await asyncio.start_server(
                lambda r, w: _tcp_client(resolver, tcp_idle_timeout, r, w),
                host,
                bound,
                family=family,
                reuse_address=True,
            )
        except OSError:
            udp.close()
            if port:
                raise
            continue  # the free UDP port is taken for TCP: pick another
        return Listeners(udp, tcp)
    raise OSError(f"no port free for both UDP and TCP on {host}")
