"""The forwarder against real upstreams: a knotd serving ``example.test.`` and tiny asyncio DNS servers
that stay silent, answer SERVFAIL or send garbage. Also home of the knotd helpers test_cache.py uses.

knotd is started from a config in a temp dir on free loopback ports and stopped by PID; if it does not
start and answer, the fixture raises (the test fails, it is never skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

import pytest
from dnslib import AAAA, QTYPE, RCODE, RR, TXT, A, DNSRecord
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from dnsserver.forward import Forwarder, ForwardError, ForwardOverloaded
from tests.support.knot import (
    BIG_TXT_COUNT,
    WWW_A,
    WWW_AAAA,
    ZONE,
    Knot,
    query_wire,
    start_knot,
    sync_query,
)


@pytest.fixture(scope="module")
def knot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Knot]:
    """One knotd on two ports (two upstream addresses, one zone) for this module's tests."""
    server = start_knot(tmp_path_factory.mktemp("knot"), nports=2)
    yield server
    server.stop()


# ---------------------------------------------------------------- tiny test servers

Handler = Callable[[bytes, str], list[bytes]]


class _ResponderUdp(asyncio.DatagramProtocol):
    def __init__(self, owner: Responder) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.owner.received.append(("udp", data))
        assert self.transport is not None
        for out in self.owner.handler(data, "udp"):
            self.transport.sendto(out, addr)


@dataclass
class Responder:
    """A DNS server on 127.0.0.1 that answers with ``handler(query, "udp"|"tcp")`` (a list of replies,
    empty to stay silent); ``received`` lists ``(transport, query)``."""

    handler: Handler
    received: list[tuple[str, bytes]] = field(default_factory=list)
    port: int = 0
    _udp: asyncio.DatagramTransport | None = None
    _tcp: asyncio.Server | None = None

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"

    def queries(self, qtype: str | None = None) -> list[tuple[str, DNSRecord]]:
        out = [(proto, DNSRecord.parse(q)) for proto, q in self.received]
        return [(p, r) for p, r in out if qtype is None or QTYPE[r.q.qtype] == qtype]

    async def start(self, tcp: bool) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(50):
            transport, _proto = await loop.create_datagram_endpoint(
                lambda: _ResponderUdp(self), local_addr=("127.0.0.1", 0)
            )
            self._udp = transport
            self.port = transport.get_extra_info("sockname")[1]
            if not tcp:
                return
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, "127.0.0.1", self.port)
            except OSError:
                transport.close()
                continue
            return
        raise RuntimeError("no port for the responder")

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack(">H", await reader.readexactly(2))
                data = await reader.readexactly(length)
                self.received.append(("tcp", data))
                for out in self.handler(data, "tcp"):
                    writer.write(struct.pack(">H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()


StartResponder = Callable[..., Awaitable[Responder]]


@pytest.fixture
async def responders() -> AsyncIterator[StartResponder]:
    """``await start(handler, tcp=False)`` starts a :class:`Responder`; all are closed after the test."""
    started: list[Responder] = []

    async def start(handler: Handler, *, tcp: bool = False) -> Responder:
        responder = Responder(handler)
        started.append(responder)
        await responder.start(tcp)
        return responder

    yield start
    for responder in started:
        await responder.close()


def silent(_query: bytes, _proto: str) -> list[bytes]:
    return []


def answer_a(ip: str) -> Handler:
    """Answer every query NOERROR; A queries get ``ip``."""

    def handler(query: bytes, _proto: str) -> list[bytes]:
        rec = DNSRecord.parse(query)
        reply = rec.reply()
        if rec.q.qtype == QTYPE.A:
            reply.add_answer(RR(rec.q.qname, QTYPE.A, rdata=A(ip), ttl=60))
        return [reply.pack()]

    return handler


def closed_udp_port() -> tuple[str, int]:
    """A loopback UDP port nobody listens on (sending there gets ICMP port unreachable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return ("127.0.0.1", port)


# ---------------------------------------------------------------- helpers


def sample(collector: Collector, name: str, labels: dict[str, str] | None = None) -> float:
    registry = CollectorRegistry()
    registry.register(collector)
    value = registry.get_sample_value(name, labels or {})
    assert value is not None, f"no sample {name}{labels}"
    return value


def requests_to(fwd: Forwarder, name: str) -> int:
    return int(sample(fwd, "coredns_forward_requests_total", {"to": name}))


async def wait_until(predicate: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


def promtool_check(text: bytes) -> None:
    """``promtool check metrics`` (the Prometheus linter) must accept the exposition."""
    result = subprocess.run(
        ["/usr/bin/promtool", "check", "metrics"], input=text, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------- tests against knotd


def test_knot_truncates_the_big_txt_set_over_udp_without_edns(knot: Knot) -> None:
    """Precondition of the TC tests: the upstream itself truncates, and has the full set over TCP."""
    udp = sync_query(knot.ports[0], query_wire("big." + ZONE, "TXT"))
    assert udp is not None
    assert DNSRecord.parse(udp).header.tc == 1
    tcp = sync_query(knot.ports[0], query_wire("big." + ZONE, "TXT"), tcp=True)
    assert tcp is not None and len(tcp) > 512
    assert len(DNSRecord.parse(tcp).rr) == BIG_TXT_COUNT


async def test_a_answer_is_forwarded_with_id_and_question_preserved(knot: Knot) -> None:
    fwd = Forwarder([knot.addr()], timeout=2.0)
    reply = await fwd.forward(query_wire("WwW.ExAmple.TEST", qid=0xBEEF))
    rec = DNSRecord.parse(reply)
    assert rec.header.id == 0xBEEF
    assert str(rec.q.qname) == "WwW.ExAmple.TEST."
    assert rec.q.qtype == QTYPE.A
    assert rec.header.rcode == RCODE.NOERROR
    assert [str(rr.rdata) for rr in rec.rr] == [WWW_A]

    aaaa = DNSRecord.parse(await fwd.forward(query_wire("www." + ZONE, "AAAA", qid=7)))
    assert [rr.rdata for rr in aaaa.rr] == [AAAA(WWW_AAAA)]
    cname = DNSRecord.parse(await fwd.forward(query_wire("alias." + ZONE, qid=8)))
    assert [(QTYPE[rr.rtype], str(rr.rdata)) for rr in cname.rr] == [("CNAME", "www." + ZONE), ("A", WWW_A)]
    nx = DNSRecord.parse(await fwd.forward(query_wire("nope." + ZONE, qid=9)))
    assert nx.header.rcode == RCODE.NXDOMAIN and nx.header.id == 9

    assert requests_to(fwd, knot.name()) == 4
    assert sample(fwd, "coredns_forward_responses_total", {"to": knot.name(), "rcode": "NOERROR"}) == 3
    assert sample(fwd, "coredns_forward_responses_total", {"to": knot.name(), "rcode": "NXDOMAIN"}) == 1
    labels = {"proxy_name": "forward", "to": knot.name(), "rcode": "NOERROR"}
    assert sample(fwd, "coredns_proxy_request_duration_seconds_count", labels) == 3


async def test_truncated_udp_answer_is_retried_over_tcp(knot: Knot) -> None:
    fwd = Forwarder([knot.addr()])
    reply = await fwd.forward(query_wire("big." + ZONE, "TXT", qid=0x4242))
    rec = DNSRecord.parse(reply)
    assert rec.header.tc == 0 and rec.header.id == 0x4242
    assert len(reply) > 512
    assert sorted(str(rr.rdata) for rr in rec.rr) == [f'"{"t" * 60} {i:02d}"' for i in range(BIG_TXT_COUNT)]
    assert all(isinstance(rr.rdata, TXT) for rr in rec.rr)
    assert requests_to(fwd, knot.name()) == 2  # the UDP exchange, then the TCP one


async def test_client_tcp_query_goes_upstream_over_tcp(knot: Knot, responders: StartResponder) -> None:
    fwd = Forwarder([knot.addr()])
    rec = DNSRecord.parse(await fwd.forward(query_wire("big." + ZONE, "TXT"), tcp=True))
    assert len(rec.rr) == BIG_TXT_COUNT
    assert requests_to(fwd, knot.name()) == 1  # straight to TCP: UDP would have come back truncated

    responder = await responders(answer_a("192.0.2.7"), tcp=True)
    fwd = Forwarder([responder.addr])
    rec = DNSRecord.parse(await fwd.forward(query_wire("x.example.org"), tcp=True))
    assert [str(rr.rdata) for rr in rec.rr] == ["192.0.2.7"]
    assert [proto for proto, _ in responder.received] == ["tcp"]


async def test_tc_fallback_goes_to_tcp_on_the_same_upstream(responders: StartResponder) -> None:
    def handler(query: bytes, proto: str) -> list[bytes]:
        reply = DNSRecord.parse(query).reply()
        if proto == "udp":
            reply.header.tc = 1
        else:
            reply.add_answer(RR("x.example.org", QTYPE.A, rdata=A("192.0.2.8"), ttl=60))
        return [reply.pack()]

    responder = await responders(handler, tcp=True)
    fwd = Forwarder([responder.addr])
    rec = DNSRecord.parse(await fwd.forward(query_wire("x.example.org")))
    assert rec.header.tc == 0
    assert [str(rr.rdata) for rr in rec.rr] == ["192.0.2.8"]
    assert [proto for proto, _ in responder.received] == ["udp", "tcp"]


async def test_upstream_timeout_moves_on_to_the_next_upstream(knot: Knot, responders: StartResponder) -> None:
    blackhole = await responders(silent)
    fwd = Forwarder([blackhole.addr, knot.addr()], policy="sequential", timeout=1.0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    rec = DNSRecord.parse(await fwd.forward(query_wire("www." + ZONE)))
    elapsed = loop.time() - t0
    assert [str(rr.rdata) for rr in rec.rr] == [WWW_A]
    assert 0.45 <= elapsed < 1.0  # one attempt timeout (timeout / 2) on the silent upstream
    assert requests_to(fwd, blackhole.name) == 1
    assert requests_to(fwd, knot.name()) == 1
    assert len(blackhole.received) == 1


async def test_sequential_policy_prefers_the_first_upstream(knot: Knot) -> None:
    fwd = Forwarder([knot.addr(0), knot.addr(1)], policy="sequential")
    for i in range(10):
        await fwd.forward(query_wire("www." + ZONE, qid=i))
    assert (requests_to(fwd, knot.name(0)), requests_to(fwd, knot.name(1))) == (10, 0)


async def test_round_robin_policy_alternates(knot: Knot) -> None:
    fwd = Forwarder([knot.addr(0), knot.addr(1)], policy="round_robin")
    used: list[str] = []
    for i in range(8):
        before = {n: requests_to(fwd, n) for n in (knot.name(0), knot.name(1))}
        await fwd.forward(query_wire("www." + ZONE, qid=i))
        used += [n for n in before if requests_to(fwd, n) == before[n] + 1]
    assert used == [knot.name(0), knot.name(1)] * 4


async def test_random_policy_uses_every_upstream(knot: Knot) -> None:
    fwd = Forwarder([knot.addr(0), knot.addr(1)], policy="random")
    for i in range(64):
        await fwd.forward(query_wire("www." + ZONE, qid=i))
    counts = (requests_to(fwd, knot.name(0)), requests_to(fwd, knot.name(1)))
    assert sum(counts) == 64
    assert min(counts) > 0  # probability of failing by chance: 2 ** -63


async def test_all_upstreams_down_fails_fast(responders: StartResponder) -> None:
    loop = asyncio.get_running_loop()
    refused = Forwarder([closed_udp_port(), closed_udp_port()], timeout=2.0)
    t0 = loop.time()
    with pytest.raises(ForwardError) as info:
        await refused.forward(query_wire("www." + ZONE))
    assert loop.time() - t0 < 0.5  # ICMP port unreachable: no need to wait for the timeout
    assert not isinstance(info.value, ForwardOverloaded)
    assert not any(refused.upstream_status().values())

    blackholes = [await responders(silent), await responders(silent)]
    fwd = Forwarder([b.addr for b in blackholes], timeout=0.6, max_fails=1)
    for _ in range(2):
        t0 = loop.time()
        with pytest.raises(ForwardError):
            await fwd.forward(query_wire("www." + ZONE))
        assert 0.55 <= loop.time() - t0 < 0.9  # bounded by the timeout
    assert fwd.upstream_status() == {b.name: False for b in blackholes}
    # The second query found both down and tried them anyway.
    assert sample(fwd, "coredns_forward_healthcheck_broken_total") == 1
    assert [len(b.received) for b in blackholes] == [2, 2]  # each tried once per query


async def test_health_checks_mark_an_upstream_down_then_up(knot: Knot, responders: StartResponder) -> None:
    answering = False

    def flaky(query: bytes, proto: str) -> list[bytes]:
        return answer_a("192.0.2.99")(query, proto) if answering else []

    responder = await responders(flaky)
    fwd = Forwarder(
        [responder.addr, knot.addr()],
        policy="sequential",
        timeout=0.6,
        max_fails=2,
        health_check_interval=0.05,
    )
    checker = asyncio.create_task(fwd.run())
    try:
        for i in range(2):  # two timeouts on the first upstream, answered by the second
            rec = DNSRecord.parse(await fwd.forward(query_wire("www." + ZONE, qid=i)))
            assert [str(rr.rdata) for rr in rec.rr] == [WWW_A]
        assert fwd.upstream_status() == {responder.name: False, knot.name(): True}

        # Down: skipped, the query goes straight to the healthy upstream.
        t0 = asyncio.get_running_loop().time()
        await fwd.forward(query_wire("www." + ZONE, qid=3))
        assert asyncio.get_running_loop().time() - t0 < 0.25
        assert len(responder.queries("A")) == 2

        # Health checks (". IN NS") go to it and fail while it stays silent.
        labels = {"proxy_name": "forward", "to": responder.name}
        await wait_until(
            lambda: sample(fwd, "coredns_proxy_healthcheck_failures_total", labels) >= 2,
            "failed health checks",
        )
        checks = responder.queries("NS")
        assert checks and all(str(r.q.qname) == "." for _, r in checks)
        assert fwd.upstream_status()[responder.name] is False

        answering = True
        await wait_until(lambda: fwd.upstream_status()[responder.name], "the upstream to be marked up")
        rec = DNSRecord.parse(await fwd.forward(query_wire("www." + ZONE, qid=4)))
        assert [str(rr.rdata) for rr in rec.rr] == ["192.0.2.99"]
        assert sample(fwd, "coredns_proxy_healthcheck_failures_total", {**labels, "to": knot.name()}) == 0
    finally:
        checker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checker
    assert checker.cancelled()


async def test_only_consecutive_failures_mark_down(knot: Knot, responders: StartResponder) -> None:
    script = iter([False, True, False, True])  # per A query: does the flaky upstream answer?

    def flaky(query: bytes, proto: str) -> list[bytes]:
        return answer_a("192.0.2.99")(query, proto) if next(script) else []

    responder = await responders(flaky)
    fwd = Forwarder([responder.addr, knot.addr()], policy="sequential", timeout=0.4, max_fails=2)
    answers = []
    for i in range(4):
        rec = DNSRecord.parse(await fwd.forward(query_wire("www." + ZONE, qid=i)))
        answers.append(str(rec.rr[0].rdata))
        assert fwd.upstream_status()[responder.name], f"marked down after query {i}"
    assert answers == [WWW_A, "192.0.2.99", WWW_A, "192.0.2.99"]


async def test_max_concurrent_exceeded_is_overloaded(responders: StartResponder) -> None:
    blackhole = await responders(silent)
    fwd = Forwarder([blackhole.addr], timeout=30.0, max_concurrent=2)
    fds = open_fds()
    pending = [asyncio.create_task(fwd.forward(query_wire("www." + ZONE, qid=i))) for i in range(2)]
    await wait_until(lambda: len(blackhole.received) == 2, "two queries in flight")
    assert fwd.inflight == 2
    with pytest.raises(ForwardOverloaded):
        await fwd.forward(query_wire("www." + ZONE, qid=3))
    assert sample(fwd, "coredns_forward_max_concurrent_rejects_total") == 1
    assert len(blackhole.received) == 2  # the rejected query never went out

    for task in pending:  # cancellation releases the slots and closes the sockets
        task.cancel()
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert fwd.inflight == 0
    await wait_until(lambda: open_fds() <= fds, "the upstream sockets to be closed")
    with pytest.raises(ForwardError):  # slots free again: this one times out instead of being refused
        await Forwarder([blackhole.addr], timeout=0.2, max_concurrent=1).forward(query_wire("a.test"))


async def test_mismatched_replies_are_ignored_and_counted(responders: StartResponder) -> None:
    def tricky(query: bytes, proto: str) -> list[bytes]:
        good = answer_a("192.0.2.5")(query, proto)[0]
        wrong_id = bytes([good[0] ^ 0xFF]) + good[1:]
        other = DNSRecord.question("other.example.org")
        other.header.id = DNSRecord.parse(query).header.id
        wrong_question = other.reply().pack()
        return [b"\x00garbage", wrong_id, wrong_question, query, good]  # `query` itself: QR not set

    responder = await responders(tricky)
    fwd = Forwarder([responder.addr])
    rec = DNSRecord.parse(await fwd.forward(query_wire("x.example.org", qid=0x0101)))
    assert rec.header.id == 0x0101
    assert [str(rr.rdata) for rr in rec.rr] == ["192.0.2.5"]
    await wait_until(
        lambda: sample(fwd, "kubeobs_dns_forward_mismatched_responses_total", {"to": responder.name}) == 4,
        "four mismatches counted",
    )

    garbage = await responders(lambda _q, _p: [b"\xff" * 40])
    fwd = Forwarder([garbage.addr], timeout=0.3)
    with pytest.raises(ForwardError):
        await fwd.forward(query_wire("x.example.org"))
    assert sample(fwd, "kubeobs_dns_forward_mismatched_responses_total", {"to": garbage.name}) == 2


async def test_servfail_from_upstream_is_passed_through(responders: StartResponder) -> None:
    def servfail(query: bytes, _proto: str) -> list[bytes]:
        reply = DNSRecord.parse(query).reply()
        reply.header.rcode = RCODE.SERVFAIL
        return [reply.pack()]

    responder = await responders(servfail)
    fwd = Forwarder([responder.addr])
    rec = DNSRecord.parse(await fwd.forward(query_wire("x.example.org", qid=77)))
    assert rec.header.rcode == RCODE.SERVFAIL and rec.header.id == 77
    assert sample(fwd, "coredns_forward_responses_total", {"to": responder.name, "rcode": "SERVFAIL"}) == 1
    assert fwd.upstream_status() == {responder.name: True}  # an answer, even SERVFAIL, is healthy


async def test_malformed_query_is_a_forward_error(knot: Knot) -> None:
    fwd = Forwarder([knot.addr()])
    for bad in (b"", b"\x00" * 11, query_wire("www." + ZONE)[:20], b"\x12\x34\x01\x00\x00\x02" + b"\x00" * 6):
        with pytest.raises(ForwardError):
            await fwd.forward(bad)
    assert requests_to(fwd, knot.name()) == 0


async def test_metrics_pass_promtool(knot: Knot, responders: StartResponder) -> None:
    blackhole = await responders(silent)
    fwd = Forwarder([blackhole.addr, knot.addr()], policy="sequential", timeout=0.4, max_fails=1)
    await fwd.forward(query_wire("www." + ZONE))
    await fwd.forward(query_wire("nope." + ZONE))
    registry = CollectorRegistry()
    registry.register(fwd)
    text = generate_latest(registry)
    await asyncio.to_thread(promtool_check, text)
    body = text.decode()
    for name in (
        "coredns_proxy_request_duration_seconds_bucket",
        "coredns_proxy_healthcheck_failures_total",
        "coredns_forward_healthcheck_broken_total",
        "coredns_forward_max_concurrent_rejects_total",
        "coredns_forward_requests_total",
        "coredns_forward_responses_total",
    ):
        assert name in body, name
    le = [
        line for line in body.splitlines() if line.startswith("coredns_proxy_request_duration_seconds_bucket")
    ]
    assert len(le) == 2 * 17  # NOERROR and NXDOMAIN from knot: 16 buckets + Inf each
    assert 'le="0.00025"' in body and 'le="8.192"' in body
    assert f'coredns_forward_requests_total{{to="{blackhole.name}"}} 1.0' in body
