"""The query fast path and response assembly on bytes, checked with an independent parser (dnspython)."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dnslib import QTYPE, RCODE, RR, A

from dnsserver.wire import (
    EDNS_PAYLOAD,
    QueryError,
    error_response,
    name_of,
    parse_query,
    prepare,
    rcode_response,
)


def wire(name: str, rdtype: str = "A", *, payload: int | None = None, rd: bool = True) -> bytes:
    m = dns.message.make_query(name, rdtype, use_edns=payload is not None, payload=payload or 512)
    if not rd:
        m.flags &= ~dns.flags.RD
    return m.to_wire()


def test_parse_plain_query() -> None:
    q = parse_query(wire("Web.NS.svc.Cluster.Local", "SRV"))
    assert q.qtype == QTYPE.SRV and q.qclass == 1 and q.rd and q.edns == 0
    assert name_of(q.key) == "web.ns.svc.cluster.local."


def test_parse_edns_payload_floor_512() -> None:
    assert parse_query(wire("a.b", payload=4096)).edns == 4096
    assert parse_query(wire("a.b", payload=100)).edns == 512


@pytest.mark.parametrize(
    ("data", "rcode"),
    [
        (b"\x00\x01", None),  # shorter than a header: dropped
        (struct.pack("!HHHHHH", 1, 0x8000, 1, 0, 0, 0), None),  # a response
        (struct.pack("!HHHHHH", 1, 0x1000, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01", RCODE.NOTIMP),  # STATUS
        (struct.pack("!HHHHHH", 1, 0, 0, 0, 0, 0), RCODE.FORMERR),  # no question
        (struct.pack("!HHHHHH", 1, 0, 2, 0, 0, 0) + b"\x00\x00\x01\x00\x01" * 2, RCODE.REFUSED),
        (struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x03ab", RCODE.FORMERR),  # name runs off
        (struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01", RCODE.FORMERR),
        (struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x01a\x00\x00", RCODE.FORMERR),  # no class
        (
            struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 1) + b"\x01a\x00\x00\x01\x00\x01" + b"\x00\x00\x29",
            RCODE.FORMERR,
        ),
        (struct.pack("!HHHHHH", 1, 0, 1, 1, 0, 0) + b"\x01a\x00\x00\x01\x00\x01", RCODE.FORMERR),
        (
            struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01",
            RCODE.FORMERR,
        ),
    ],
)
def test_malformed_queries_are_classified(data: bytes, rcode: int | None) -> None:
    with pytest.raises(QueryError) as e:
        parse_query(data)
    assert e.value.rcode == rcode
    if rcode is not None:
        resp = dns.message.from_wire(error_response(data, rcode))
        assert resp.rcode() == rcode and resp.id == 1


def test_assemble_echoes_id_case_and_rd() -> None:
    q_wire = wire("WeB.Ns.Svc.Cluster.Local", rd=False)
    q = parse_query(q_wire)
    prep = prepare(
        q.key,
        RCODE.NOERROR,
        [RR("web.ns.svc.cluster.local.", QTYPE.A, ttl=5, rdata=A("10.0.0.1"))],
        [],
        [],
        edns=False,
    )
    out = prep.assemble(q_wire, q, 512)
    m = dns.message.from_wire(out)
    assert m.id == dns.message.from_wire(q_wire).id
    assert str(m.question[0].name) == "WeB.Ns.Svc.Cluster.Local."  # the question's case, byte for byte
    assert out[12 : q.qend] == q_wire[12 : q.qend]
    assert not m.flags & dns.flags.RD and m.flags & dns.flags.AA and m.flags & dns.flags.QR
    assert [str(rd) for rd in m.answer[0]] == ["10.0.0.1"] and m.answer[0].ttl == 5
    q2_wire = wire("web.ns.svc.cluster.local")
    q2 = parse_query(q2_wire)
    assert dns.message.from_wire(prep.assemble(q2_wire, q2, 512)).flags & dns.flags.RD


def test_edns_answer_carries_opt_and_truncates_over_limit() -> None:
    q_wire = wire("big.ns.svc.cluster.local", payload=1232)
    q = parse_query(q_wire)
    answers = [
        RR("big.ns.svc.cluster.local.", QTYPE.A, ttl=5, rdata=A(f"10.0.{i // 256}.{i % 256}"))
        for i in range(100)
    ]
    prep = prepare(q.key, RCODE.NOERROR, answers, [], [], edns=True)
    whole = dns.message.from_wire(prep.assemble(q_wire, q, 4096))
    assert len(whole.answer[0]) == 100 and whole.edns == 0 and whole.payload == EDNS_PAYLOAD
    cut_wire = prep.assemble(q_wire, q, 512)
    assert len(cut_wire) <= 512
    cut = dns.message.from_wire(cut_wire)
    assert cut.flags & dns.flags.TC and not cut.answer and cut.edns == 0


def test_rcode_response_keeps_question_and_opt() -> None:
    q_wire = wire("example.org", payload=1232)
    q = parse_query(q_wire)
    m = dns.message.from_wire(rcode_response(q_wire, q, RCODE.REFUSED))
    assert m.rcode() == dns.rcode.REFUSED and str(m.question[0].name) == "example.org." and m.edns == 0
