"""100,000 random and mutated packets against the running DNS server: it never crashes, never answers
with something that does not parse, and keeps answering good queries in between.

Each fuzz packet is followed by a good probe query; replies read until the probe's answer are the fuzz
packet's (none when it was dropped). The packets come from a seeded generator, so a failure repeats.
"""

from __future__ import annotations

import random
import socket
import struct
from pathlib import Path

import dns.exception
import dns.message
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnsserver.metrics import DnsStats
from dnsserver.records import load_records
from dnsserver.server import Answers, Resolver
from dnsserver.wire import MAX_UDP_DEFAULT, QueryError, parse_query
from dnsserver.zone import ClusterZone
from tests.support.dns import start_dns_server

RECORDS = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec: {clusterIPs: [10.96.0.10, "fd00::10"], ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: ns}
spec: {clusterIP: None, ports: [{name: pg, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: ns, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.5], hostname: db-0}, {addresses: [10.1.0.6]}]
ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: ns}
spec: {type: ExternalName, externalName: example.com}
"""
NAMES = [
    "web.ns.svc.cluster.local",
    "WEB.NS.svc.cluster.local",
    "db.ns.svc.cluster.local",
    "db-0.db.ns.svc.cluster.local",
    "_pg._tcp.db.ns.svc.cluster.local",
    "_http._tcp.web.ns.svc.cluster.local",
    "ext.ns.svc.cluster.local",
    "nope.ns.svc.cluster.local",
    "cluster.local",
    "dns-version.cluster.local",
    "10-1-2-3.ns.pod.cluster.local",
    "10.0.96.10.in-addr.arpa",
    "example.org",
]
TYPES = ["A", "AAAA", "SRV", "PTR", "TXT", "SOA", "NS", "CNAME", "MX", "ANY", "AXFR"]
PACKETS = 100_000


def seeds(rng: random.Random) -> list[bytes]:
    out = []
    for name in NAMES:
        for t in TYPES:
            for payload in (None, 1232):
                m = dns.message.make_query(name, t, use_edns=payload is not None, payload=payload or 512)
                m.id = rng.randrange(65536)
                out.append(m.to_wire())
    return out


def mutate(rng: random.Random, base: list[bytes]) -> bytes:
    kind = rng.randrange(8)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 600))
    b = bytearray(rng.choice(base))
    if kind == 1:  # flip bits
        for _ in range(rng.randrange(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == 2:  # cut short
        del b[rng.randrange(len(b)) :]
    elif kind == 3:  # header counts and flags at random
        b[2:12] = rng.randbytes(10)
    elif kind == 4:  # a label length byte made wrong (pointers, long labels)
        b[12] = rng.choice([0, 63, 64, 0xC0, 0xFF, rng.randrange(256)])
    elif kind == 5:  # junk appended (as a bogus additional record)
        b[10:12] = struct.pack("!H", rng.randrange(1, 4))
        b += rng.randbytes(rng.randrange(1, 64))
    elif kind == 6:  # random bytes spliced into the middle
        i = rng.randrange(len(b))
        b[i:i] = rng.randbytes(rng.randrange(1, 32))
    else:  # an enormous name: many short labels
        b[12:] = b"\x01a" * rng.randrange(100, 200) + b"\x00\x00\x01\x00\x01"
    return bytes(b)


def _records(tmp_path: Path) -> Path:
    path = tmp_path / "records.yaml"
    path.write_text(RECORDS)
    return path


@pytest.mark.slow
def test_hundred_thousand_fuzz_packets_over_udp(tmp_path: Path) -> None:
    server = start_dns_server(tmp_path, "--records", str(_records(tmp_path)))
    rng = random.Random(20261126)
    base = seeds(rng)
    probe = dns.message.make_query("kubeobs-fuzz-probe.ns.svc.cluster.local", "A")  # in no seed
    probe_question = probe.to_wire()[12:]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2.0)
    sock.connect(("127.0.0.1", server.port))
    answered = dropped = 0
    rcodes: dict[int, int] = {}
    try:
        for n in range(PACKETS):
            packet = mutate(rng, base)
            probe.id = n % 65536
            sock.send(packet)
            sock.send(probe.to_wire())
            replies = []
            while True:
                try:
                    reply = sock.recv(65535)
                except TimeoutError:
                    pytest.fail(
                        f"packet {n} ({packet.hex()}): no answer to the probe; {server.stderr()[-2000:]}"
                    )
                if (
                    reply[:2] == probe.id.to_bytes(2, "big")
                    and reply[12 : 12 + len(probe_question)] == probe_question
                ):
                    assert dns.message.from_wire(reply).rcode() == dns.rcode.NXDOMAIN
                    break
                replies.append(reply)
            assert len(replies) <= 1, f"packet {n} ({packet.hex()}): {len(replies)} replies"
            for reply in replies:
                try:
                    msg = dns.message.from_wire(reply)
                except dns.exception.DNSException as e:
                    pytest.fail(f"packet {n} ({packet.hex()}): reply does not parse ({e}): {reply.hex()}")
                assert reply[:2] == packet[:2], f"packet {n}: reply ID differs"
                rcodes[msg.rcode()] = rcodes.get(msg.rcode(), 0) + 1
            answered += len(replies)
            dropped += not replies
    finally:
        sock.close()
    metrics = server.metrics()
    server.stop()
    assert answered + dropped == PACKETS
    assert answered > PACKETS // 2, (answered, dropped)
    assert rcodes.get(dns.rcode.FORMERR, 0) > 1000  # the malformed ones were told so
    assert metrics.get("coredns_panics_total", 0) == 0
    print(f"fuzz: {answered} answered, {dropped} dropped; rcodes {rcodes}")


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=700))
def test_any_bytes_get_a_parsable_answer_or_are_dropped(data: bytes) -> None:
    """The chain in process: arbitrary bytes either raise QueryError or get a reply that parses."""
    check_chain(data)


_ZONE = ClusterZone()


def check_chain(data: bytes) -> None:
    try:
        q = parse_query(data)
    except QueryError as e:
        assert e.rcode is None or 0 < e.rcode < 16
        return
    resolver = Resolver(Answers(_ZONE, ready=lambda: True), DnsStats("dns://test"))
    out = resolver.local(data, q, q.edns or MAX_UDP_DEFAULT, "udp", "1", 0.0)
    assert out is not None  # no upstream: everything is answered locally
    dns.message.from_wire(out)


@pytest.fixture(autouse=True, scope="module")
def _zone_records(tmp_path_factory: pytest.TempPathFactory) -> None:
    if not _ZONE.services:
        load_records(_records(tmp_path_factory.mktemp("zone")), _ZONE)
