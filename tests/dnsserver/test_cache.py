"""The response cache: synthetic answers built with dnslib under a fake clock, and real answers from knotd
(fetched through the forwarder) fed into it."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, SOA, A, DNSRecord
from prometheus_client import CollectorRegistry, generate_latest

from dnsserver.cache import STALE_TTL, ResponseCache
from dnsserver.forward import Forwarder
from dnsserver.wire import WireError, question_key
from tests.dnsserver.test_forward import promtool_check, sample
from tests.support.knot import BIG_TXT_COUNT, SOA_MINIMUM, WWW_A, ZONE, Knot, query_wire, start_knot

SERVER = "dns://:5353"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def knot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Knot]:
    server = start_knot(tmp_path_factory.mktemp("knot-cache"))
    yield server
    server.stop()


def a_response(name: str = "www.example.org", *, ttls: tuple[int, ...] = (300,), qid: int = 1) -> bytes:
    q = DNSRecord.question(name, "A")
    q.header.id = qid
    r = q.reply()  # AA set by dnslib
    for i, ttl in enumerate(ttls):
        r.add_answer(RR(name, QTYPE.A, rdata=A(f"192.0.2.{i + 1}"), ttl=ttl))
    wire = bytes(r.pack())
    return wire


def denial(
    name: str = "nope.example.org",
    *,
    rcode: int = RCODE.NXDOMAIN,
    soa_ttl: int = 300,
    minimum: int = 60,
    qtype: str = "A",
    with_soa: bool = True,
) -> bytes:
    q = DNSRecord.question(name, qtype)
    r = q.reply()
    r.header.rcode = rcode
    if with_soa:
        soa = SOA("ns1.example.org", "hostmaster.example.org", (1, 3600, 600, 86400, minimum))
        r.add_auth(RR("example.org", QTYPE.SOA, rdata=soa, ttl=soa_ttl))
    wire = bytes(r.pack())
    return wire


def ttls(response: bytes) -> list[int]:
    rec = DNSRecord.parse(response)
    return [rr.ttl for rr in rec.rr + rec.auth + rec.ar if rr.rtype != QTYPE.OPT]


def put_and_key(cache: ResponseCache, response: bytes) -> bytes:
    key = question_key(response)
    cache.put(key, response)
    return key


def test_question_key_is_lowercased_name_type_and_class() -> None:
    q = query_wire("WwW.ExAmple.ORG", "AAAA")
    assert question_key(q) == b"\x03www\x07example\x03org\x00" + b"\x00\x1c\x00\x01"
    assert question_key(q) == question_key(query_wire("www.example.org", "AAAA"))
    for bad in (b"", q[:20], b"\x00\x01\x01\x00\x00\x02" + q[6:], q[:12] + b"\xc0\x0c\x00\x01\x00\x01"):
        with pytest.raises(WireError):
            question_key(bad)


def test_hit_has_the_query_id_its_case_and_decremented_ttls(clock: FakeClock) -> None:
    cache = ResponseCache(now=clock, server=SERVER)
    key = put_and_key(cache, a_response(ttls=(300, 200)))
    clock.advance(100.6)
    query = query_wire("WWW.Example.ORG", qid=0xABCD)
    hit = cache.get(query, key)
    assert hit is not None
    rec = DNSRecord.parse(hit)
    assert rec.header.id == 0xABCD
    assert str(rec.q.qname) == "WWW.Example.ORG."
    assert rec.header.aa == 0  # cached data is not authoritative
    assert rec.header.rd == 1
    assert [str(rr.rdata) for rr in rec.rr] == ["192.0.2.1", "192.0.2.2"]
    assert ttls(hit) == [100, 100]  # min TTL 200, 100 whole seconds in the cache
    # Owner names compressed onto the question name show the client's case.
    assert [str(rr.rname) for rr in rec.rr] == ["WWW.Example.ORG."] * 2

    clock.advance(99.0)
    assert ttls(cache.get(query, key) or b"") == [1, 1]
    clock.advance(1.0)
    assert cache.get(query, key) is None  # expired, no serve-stale
    assert len(cache) == 0
    assert sample(cache, "coredns_cache_requests_total", {"server": SERVER}) == 3
    assert sample(cache, "coredns_cache_hits_total", {"server": SERVER, "type": "success"}) == 2
    assert sample(cache, "coredns_cache_misses_total", {"server": SERVER}) == 1


def test_miss_and_rd_cd_copied_from_the_query(clock: FakeClock) -> None:
    cache = ResponseCache(now=clock)
    query = query_wire("www.example.org")
    assert cache.get(query, question_key(query)) is None
    key = put_and_key(cache, a_response())
    q = DNSRecord.parse(query)
    q.header.rd = 0
    q.header.cd = 1
    rec = DNSRecord.parse(cache.get(bytes(q.pack()), key) or b"")
    assert (rec.header.rd, rec.header.cd) == (0, 1)
    with pytest.raises(ValueError):
        cache.get(query_wire("www.example.org", "AAAA"), key)  # key not built from this query


def test_ttl_caps_and_floor(clock: FakeClock) -> None:
    capped = ResponseCache(now=clock, max_ttl=60)
    key = put_and_key(capped, a_response(ttls=(3000,)))
    assert ttls(capped.get(query_wire("www.example.org"), key) or b"") == [60]
    clock.advance(60)
    assert capped.get(query_wire("www.example.org"), key) is None

    floored = ResponseCache(now=clock, min_ttl=10)
    key = put_and_key(floored, a_response(ttls=(2,)))
    assert ttls(floored.get(query_wire("www.example.org"), key) or b"") == [10]

    zero = ResponseCache(now=clock)
    put_and_key(zero, a_response(ttls=(0,)))
    assert len(zero) == 0  # TTL 0 may not be cached


def test_negative_caching_uses_the_soa_minimum(clock: FakeClock) -> None:
    cache = ResponseCache(now=clock, server=SERVER)
    nx = put_and_key(cache, denial(soa_ttl=300, minimum=60))
    nodata = put_and_key(cache, denial("www.example.org", rcode=RCODE.NOERROR, qtype="AAAA", soa_ttl=30))
    assert len(cache) == 2
    assert sample(cache, "coredns_cache_entries", {"server": SERVER, "type": "denial"}) == 2
    assert sample(cache, "coredns_cache_entries", {"server": SERVER, "type": "success"}) == 0

    hit = cache.get(query_wire("NOPE.example.org", qid=5), nx)
    assert hit is not None
    rec = DNSRecord.parse(hit)
    assert rec.header.rcode == RCODE.NXDOMAIN and rec.header.id == 5
    assert ttls(hit) == [60]  # min(SOA TTL 300, MINIMUM 60)
    assert ttls(cache.get(query_wire("www.example.org", "AAAA"), nodata) or b"") == [30]  # SOA TTL 30 < 60
    assert sample(cache, "coredns_cache_hits_total", {"server": SERVER, "type": "denial"}) == 2

    clock.advance(30)
    assert cache.get(query_wire("www.example.org", "AAAA"), nodata) is None
    assert ttls(cache.get(query_wire("nope.example.org"), nx) or b"") == [30]
    clock.advance(30)
    assert cache.get(query_wire("nope.example.org"), nx) is None

    capped = ResponseCache(now=clock, max_negative_ttl=5)
    key = put_and_key(capped, denial(soa_ttl=300, minimum=60))
    assert ttls(capped.get(query_wire("nope.example.org"), key) or b"") == [5]

    put_and_key(capped, denial("nosoa.example.org", with_soa=False))  # RFC 2308: no SOA, no caching
    assert len(capped) == 1


def test_capacity_evicts_the_least_recently_used(clock: FakeClock) -> None:
    cache = ResponseCache(now=clock, capacity=2, server=SERVER)
    k1 = put_and_key(cache, a_response("one.example.org"))
    k2 = put_and_key(cache, denial("two.example.org"))
    assert cache.get(query_wire("one.example.org"), k1) is not None  # one is now more recent than two
    k3 = put_and_key(cache, a_response("three.example.org"))
    assert len(cache) == 2
    assert cache.get(query_wire("two.example.org"), k2) is None
    assert cache.get(query_wire("one.example.org"), k1) is not None
    assert cache.get(query_wire("three.example.org"), k3) is not None
    assert sample(cache, "coredns_cache_evictions_total", {"server": SERVER, "type": "denial"}) == 1
    assert sample(cache, "coredns_cache_evictions_total", {"server": SERVER, "type": "success"}) == 0
    assert sample(cache, "coredns_cache_entries", {"server": SERVER, "type": "success"}) == 2

    put_and_key(cache, a_response("one.example.org", ttls=(7,)))  # replacing is not evicting
    assert len(cache) == 2
    assert ttls(cache.get(query_wire("one.example.org"), k1) or b"") == [7]
    assert sample(cache, "coredns_cache_evictions_total", {"server": SERVER, "type": "success"}) == 0


def test_serve_stale_window(clock: FakeClock) -> None:
    cache = ResponseCache(now=clock, serve_stale=10, server=SERVER)
    key = put_and_key(cache, a_response(ttls=(20,)))
    query = query_wire("www.example.org", qid=9)
    clock.advance(19.5)
    assert cache.lookup(query, key) is not None
    assert ttls(cache.get(query, key) or b"") == [1]
    clock.advance(0.5)  # expired: stale answers for 10 more seconds, TTL 30
    found = cache.lookup(query, key)
    assert found is not None and found[1] is True
    assert ttls(found[0]) == [STALE_TTL]
    assert DNSRecord.parse(found[0]).header.id == 9
    clock.advance(9.9)
    assert ttls(cache.get(query, key) or b"") == [STALE_TTL]
    assert sample(cache, "coredns_cache_served_stale_total", {"server": SERVER}) == 2
    clock.advance(0.1)
    assert cache.get(query, key) is None
    assert len(cache) == 0
    assert sample(cache, "coredns_cache_served_stale_total", {"server": SERVER}) == 2

    fresh = ResponseCache(now=clock)  # serve_stale=0: nothing after expiry
    key = put_and_key(fresh, a_response(ttls=(20,)))
    clock.advance(20)
    assert fresh.get(query, key) is None


def test_failures_and_truncated_answers_are_never_cached(clock: FakeClock) -> None:
    cache = ResponseCache(now=clock)
    for rcode in (RCODE.SERVFAIL, RCODE.REFUSED, RCODE.FORMERR, RCODE.NOTIMP):
        r = DNSRecord.parse(a_response())
        r.header.rcode = rcode
        put_and_key(cache, bytes(r.pack()))
        put_and_key(cache, denial(rcode=rcode))
    tc = DNSRecord.parse(a_response())
    tc.header.tc = 1
    put_and_key(cache, bytes(tc.pack()))
    not_a_response = DNSRecord.parse(a_response())
    not_a_response.header.qr = 0
    put_and_key(cache, bytes(not_a_response.pack()))
    good = a_response()
    cache.put(question_key(query_wire("other.example.org")), good)  # question does not match the key
    cache.put(question_key(good), good[:-3])  # cut short
    cache.put(question_key(good), good + b"\x00")  # trailing garbage
    assert len(cache) == 0
    cache.put(question_key(good), good)
    assert len(cache) == 1


def test_edns_opt_is_added_only_for_edns_queries(clock: FakeClock) -> None:
    cache = ResponseCache(now=clock)
    upstream = DNSRecord.parse(a_response())
    upstream.add_ar(EDNS0(udp_len=4096))
    key = put_and_key(cache, bytes(upstream.pack()))

    plain = DNSRecord.parse(cache.get(query_wire("www.example.org"), key) or b"")
    assert plain.ar == []
    q = DNSRecord.question("www.example.org", "A")
    q.add_ar(EDNS0(udp_len=1400, flags="do"))
    hit = DNSRecord.parse(cache.get(bytes(q.pack()), key) or b"")
    assert [rr.rtype for rr in hit.ar] == [QTYPE.OPT]
    assert hit.ar[0].rclass == 1232
    assert hit.ar[0].edns_do == 1
    assert [str(rr.rdata) for rr in hit.rr] == ["192.0.2.1"]


async def test_real_knot_answers_through_the_cache(knot: Knot, clock: FakeClock) -> None:
    fwd = Forwarder([knot.addr()])
    cache = ResponseCache(now=clock, server=SERVER)
    names = [
        ("www." + ZONE, "A"),
        ("www." + ZONE, "AAAA"),
        ("alias." + ZONE, "A"),
        ("nope." + ZONE, "A"),
        ("www." + ZONE, "MX"),
        ("big." + ZONE, "TXT"),
    ]

    upstream = [await fwd.forward(query_wire(n, t, qid=i, edns=True)) for i, (n, t) in enumerate(names)]
    for response in upstream:
        cache.put(question_key(response), response)
    assert len(cache) == len(names)
    assert sample(cache, "coredns_cache_entries", {"server": SERVER, "type": "success"}) == 4
    assert sample(cache, "coredns_cache_entries", {"server": SERVER, "type": "denial"}) == 2

    clock.advance(10)
    for (name, qtype), response in zip(names, upstream, strict=True):
        query = query_wire(name.upper(), qtype, qid=0x7777)
        hit = cache.get(query, question_key(query))
        assert hit is not None, name
        got, want = DNSRecord.parse(hit), DNSRecord.parse(response)
        assert got.header.id == 0x7777
        assert str(got.q.qname) == name.upper()
        assert got.header.rcode == want.header.rcode
        assert [(str(r.rname).lower(), r.rtype, str(r.rdata).lower()) for r in got.rr] == [
            (str(r.rname).lower(), r.rtype, str(r.rdata).lower()) for r in want.rr
        ]
        assert [(str(r.rname).lower(), str(r.rdata).lower()) for r in got.auth] == [
            (str(r.rname).lower(), str(r.rdata).lower()) for r in want.auth
        ]
        assert got.ar == []  # the upstream's OPT is not replayed to a query without EDNS
        want_ttl = min(ttls(response))
        assert set(ttls(hit)) == {want_ttl - 10}, name
        if want.header.rcode == RCODE.NXDOMAIN or not want.rr:
            assert want_ttl == SOA_MINIMUM
        else:
            assert want_ttl == 300
    big = DNSRecord.parse(cache.get(query_wire("big." + ZONE, "TXT"), question_key(upstream[-1])) or b"")
    assert len(big.rr) == BIG_TXT_COUNT
    www = DNSRecord.parse(cache.get(query_wire("www." + ZONE), question_key(upstream[0])) or b"")
    assert [str(r.rdata) for r in www.rr] == [WWW_A]


def test_cache_metrics_pass_promtool(clock: FakeClock) -> None:
    cache = ResponseCache(now=clock, capacity=1, server=SERVER, serve_stale=5)
    key = put_and_key(cache, a_response(ttls=(1,)))
    cache.get(query_wire("www.example.org"), key)
    clock.advance(2)
    cache.get(query_wire("www.example.org"), key)
    put_and_key(cache, denial())
    cache.get(query_wire("missing.example.org"), question_key(query_wire("missing.example.org")))
    registry = CollectorRegistry()
    registry.register(cache)
    text = generate_latest(registry)
    promtool_check(text)
    body = text.decode()
    for line in (
        f'coredns_cache_entries{{server="{SERVER}",type="denial"}} 1.0',
        f'coredns_cache_requests_total{{server="{SERVER}"}} 3.0',
        f'coredns_cache_hits_total{{server="{SERVER}",type="success"}} 2.0',
        f'coredns_cache_misses_total{{server="{SERVER}"}} 1.0',
        f'coredns_cache_served_stale_total{{server="{SERVER}"}} 1.0',
        f'coredns_cache_evictions_total{{server="{SERVER}",type="success"}} 1.0',
    ):
        assert line in body.splitlines(), line


def test_invalid_configuration_is_rejected() -> None:
    with pytest.raises(ValueError):
        ResponseCache(capacity=0)
    with pytest.raises(ValueError):
        ResponseCache(serve_stale=-1)


def test_put_survives_corrupted_responses(clock: FakeClock) -> None:
    """Bit flips and cuts anywhere in real answers: put never raises, get of what was stored works."""
    rng = random.Random(1234)
    originals = [a_response(ttls=(300, 60)), denial(), denial("www.example.org", rcode=RCODE.NOERROR)]
    cache = ResponseCache(now=clock, capacity=100)
    stored = 0
    for i in range(3000):
        wire = bytearray(rng.choice(originals))
        for _ in range(rng.randint(1, 3)):
            wire[rng.randrange(len(wire))] ^= 1 << rng.randrange(8)
        if i % 7 == 0:
            del wire[rng.randrange(len(wire)) :]
        try:
            key = question_key(bytes(wire))
        except WireError:
            continue
        cache.put(key, bytes(wire))
        if cache.lookup(bytes(wire[:12]) + key, key) is not None:
            stored += 1
    assert stored > 0
