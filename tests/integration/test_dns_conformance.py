"""The DNS server (``python -m dnsserver``) against a real kube-apiserver v1.20.2: Kubernetes DNS-Based
Service Discovery spec 1.1.0 and CoreDNS's kubernetes-plugin behaviour, over UDP and TCP.

One namespace (unique per run) on the session apiserver holds, created before the server starts:

- ``web``: ClusterIP, named ports ``http`` 80/TCP and ``dns`` 53/UDP;
- ``db``: headless, port ``pg``; its EndpointSlice has 10.251.1.5 (ready, hostname ``db-0``), 10.251.1.6
  (ready, no hostname) and 10.251.1.7 (not ready);
- ``empty``: headless with only a not-ready endpoint; ``ext``: ExternalName ``example.com``;
- ``v6db``: headless with an ``IPv6`` EndpointSlice (fd00:251::5 hostname ``v6-0``, fd00:251::6), port
  ``http`` (dual-stack ClusterIP services need the IPv6DualStack gate, off on 1.20 with a v4-only service
  CIDR: that case is covered in one-machine ``--records`` mode at the end);
- ``sub``: headless, and pod ``pod-a`` (10.251.2.10) with ``hostname: myhost``, ``subdomain: sub`` and the
  EndpointSlice entry the endpoint controller would write for it (hostname ``myhost``);
- pod ``pod-b`` (10.251.2.11) for the pods ``verified`` mode.

:func:`test_conformance` is the table (``ROWS`` x udp/tcp): rcode, AA, the answer/authority/additional
sections as order-free sets, the echoed question (case included) and TTL 5 everywhere. The other tests
cover changes while the server runs, the pods modes, EDNS0 and truncation, malformed and zone-transfer
queries, SERVFAIL before the first sync and names outside the zone.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from tests.support.dns import (
    DnsServerProc,
    free_dns_port,
    make_query,
    metric_total,
    query,
    query_wire,
    start_dns_server,
)
from tests.support.kube.apiserver import KubeCluster
from tests.support.kube.rest import KubeRest, pod_body

ZONE = "cluster.local."
TTL = 5
SOA = f"{ZONE} SOA ns.dns.{ZONE} hostmaster.{ZONE} * 7200 1800 86400 {TTL}"
SLICES = "/apis/discovery.k8s.io/v1beta1/namespaces/{ns}/endpointslices"
PROTOS = ("udp", "tcp")
CHANGE_DEADLINE = 15.0  # for changes we only need to see eventually (the 1 s bound is asserted apart)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def rev(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer + "."


# -- Kubernetes objects -----------------------------------------------------------------------------------


def service_body(
    name: str,
    *,
    ports: list[dict[str, Any]] | None = None,
    headless: bool = False,
    external_name: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": ports or []}
    if external_name is not None:
        spec.update(type="ExternalName", externalName=external_name)
    elif headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def endpoint(ip: str, *, ready: bool = True, hostname: str | None = None) -> dict[str, Any]:
    ep: dict[str, Any] = {"addresses": [ip], "conditions": {"ready": ready}}
    if hostname:
        ep["hostname"] = hostname
    return ep


def slice_body(
    name: str,
    service: str,
    endpoints: list[dict[str, Any]],
    ports: list[dict[str, Any]],
    address_type: str = "IPv4",
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1beta1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": ports,
    }


def port(name: str, number: int, protocol: str = "TCP") -> dict[str, Any]:
    return {"name": name, "port": number, "protocol": protocol}


def create_pod(
    rest: KubeRest, ns: str, name: str, ip: str, *, hostname: str = "", subdomain: str = ""
) -> dict[str, Any]:
    body = pod_body(name, "node-a")
    if hostname:
        body["spec"]["hostname"] = hostname
    if subdomain:
        body["spec"]["subdomain"] = subdomain
    rest.create(f"/api/v1/namespaces/{ns}/pods", body)
    status = {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
    return rest.patch(f"/api/v1/namespaces/{ns}/pods/{name}/status", status)


# -- the module's cluster objects and server --------------------------------------------------------------


@dataclass
class Setup:
    cluster: KubeCluster
    rest: KubeRest
    ns: str
    server: DnsServerProc
    ctx: dict[str, str] = field(default_factory=dict)

    def fmt(self, text: str) -> str:
        return text.format(**self.ctx)

    def svc(self, name: str) -> str:
        return f"{name}.{self.ns}.svc.{ZONE}"


@pytest.fixture(scope="module")
def setup(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    rest = KubeRest.for_cluster(kube_cluster)
    ns = unique("dnsconf")
    rest.create_namespace(ns)
    services, slices = f"/api/v1/namespaces/{ns}/services", SLICES.format(ns=ns)

    web = rest.create(services, service_body("web", ports=[port("http", 80), port("dns", 53, "UDP")]))
    web_ip = web["spec"]["clusterIP"]
    assert ipaddress.ip_address(web_ip) in ipaddress.ip_network("10.96.0.0/12"), web
    rest.create(services, service_body("db", ports=[port("pg", 5432)], headless=True))
    db_eps = [
        endpoint("10.251.1.5", hostname="db-0"),
        endpoint("10.251.1.6"),
        endpoint("10.251.1.7", ready=False),
    ]
    rest.create(slices, slice_body("db-abcde", "db", db_eps, [port("pg", 5432)]))
    rest.create(services, service_body("empty", ports=[port("pg", 5432)], headless=True))
    rest.create(slices, slice_body("empty-abcde", "empty", [endpoint("10.251.1.9", ready=False)], []))
    rest.create(services, service_body("ext", external_name="example.com"))
    rest.create(services, service_body("v6db", ports=[port("http", 80)], headless=True))
    v6_eps = [endpoint("fd00:251::5", hostname="v6-0"), endpoint("fd00:251::6")]
    rest.create(slices, slice_body("v6db-abcde", "v6db", v6_eps, [port("http", 80)], "IPv6"))
    rest.create(services, service_body("sub", ports=[port("http", 80)], headless=True))
    pod_a = create_pod(rest, ns, "pod-a", "10.251.2.10", hostname="myhost", subdomain="sub")
    assert pod_a["status"]["podIP"] == "10.251.2.10"
    sub_ep = endpoint("10.251.2.10", hostname="myhost")
    sub_ep["targetRef"] = {"kind": "Pod", "namespace": ns, "name": "pod-a"}
    rest.create(slices, slice_body("sub-abcde", "sub", [sub_ep], [port("http", 80)]))
    create_pod(rest, ns, "pod-b", "10.251.2.11")

    server = start_dns_server(
        tmp_path_factory.mktemp("dns-conformance"),
        "--kubeconfig",
        str(kube_cluster.kubeconfig),
        "--zone",
        "cluster.local",
    )
    try:
        server.wait_ready(60)
        ctx = {
            "ns": ns,
            "NS": ns.upper(),
            "web_ip": web_ip,
            "web_rev": rev(web_ip),
            "db5_rev": rev("10.251.1.5"),
            "db6_rev": rev("10.251.1.6"),
            "v6_5_rev": rev("fd00:251::5"),
            "v6_6_rev": rev("fd00:251::6"),
        }
        yield Setup(kube_cluster, rest, ns, server, ctx)
    finally:
        server.stop()


# -- reading responses ----------------------------------------------------------------------------------


def rr_texts(rrsets: list[dns.rrset.RRset], *, lower: bool = True) -> set[str]:
    """``owner TYPE rdata`` per record (the SOA serial as ``*``: it is the server's to choose)."""
    out = set()
    for rrset in rrsets:
        owner = rrset.name.to_text()
        owner = owner.lower() if lower else owner
        for rd in rrset:
            text = rd.to_text()
            if rrset.rdtype == dns.rdatatype.SOA:
                parts = text.split()
                parts[2] = "*"
                text = " ".join(parts)
            out.add(f"{owner} {dns.rdatatype.to_text(rrset.rdtype)} {text}")
    return out


def rcode_of(resp: dns.message.Message) -> str:
    return dns.rcode.to_text(resp.rcode())


def ask(server: DnsServerProc, name: str, qtype: str, proto: str = "udp", **kw: Any) -> dns.message.Message:
    return query(server.port, name, qtype, tcp=proto == "tcp", **kw)


def answers(server: DnsServerProc, name: str, qtype: str, proto: str = "udp") -> set[str]:
    return rr_texts(ask(server, name, qtype, proto).answer)


def wait_until(
    probe: Callable[[], bool], what: str, within: float = CHANGE_DEADLINE, interval: float = 0.01
) -> float:
    """Poll ``probe`` until true; returns the seconds it took, fails after ``within``."""
    t0 = time.monotonic()
    while not probe():
        if time.monotonic() - t0 > within:
            raise AssertionError(f"timed out after {within:.0f} s waiting for: {what}")
        time.sleep(interval)
    return time.monotonic() - t0


# -- the table ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: str
    name: str  # template: {ns}, {NS}, {web_ip}, {web_rev}, ...
    qtype: str
    rcode: str = "NOERROR"
    answer: frozenset[str] = frozenset()  # "owner TYPE rdata" templates, owners lower-case
    soa: bool = False  # the authority section is exactly the zone's SOA (else: empty)
    additional: frozenset[str] = frozenset()  # exactly these (the OPT record aside)
    aa: bool = True


def row(
    id: str,
    name: str,
    qtype: str,
    rcode: str = "NOERROR",
    answer: tuple[str, ...] = (),
    *,
    soa: bool = False,
    additional: tuple[str, ...] = (),
    aa: bool = True,
) -> Row:
    return Row(id, name, qtype, rcode, frozenset(answer), soa, frozenset(additional), aa)


WEB = "web.{ns}.svc.cluster.local."
DB = "db.{ns}.svc.cluster.local."
V6 = "v6db.{ns}.svc.cluster.local."
WEB_A = f"{WEB} A {{web_ip}}"
DB0_A = f"db-0.{DB} A 10.251.1.5"
DB6_A = f"10-251-1-6.{DB} A 10.251.1.6"
V6_0 = f"v6-0.{V6} AAAA fd00:251::5"
V6_6 = f"fd00-251--6.{V6} AAAA fd00:251::6"

# fmt: off
ROWS = [
    # 2.2 ClusterIP services
    row("clusterip-a", WEB, "A", answer=(WEB_A,)),
    row("clusterip-aaaa-v4-only-nodata", WEB, "AAAA", soa=True),
    row("clusterip-mx-nodata", WEB, "MX", soa=True),
    row("clusterip-txt-nodata", WEB, "TXT", soa=True),
    row("clusterip-srv-tcp", "_http._tcp." + WEB, "SRV",
        answer=(f"_http._tcp.{WEB} SRV 0 100 80 {WEB}",), additional=(WEB_A,)),
    row("clusterip-srv-udp", "_dns._udp." + WEB, "SRV",
        answer=(f"_dns._udp.{WEB} SRV 0 100 53 {WEB}",), additional=(WEB_A,)),
    row("clusterip-srv-wrong-proto-nxdomain", "_http._udp." + WEB, "SRV", "NXDOMAIN", soa=True),
    row("clusterip-srv-unknown-port-nxdomain", "_nope._tcp." + WEB, "SRV", "NXDOMAIN", soa=True),
    row("clusterip-ptr", "{web_rev}", "PTR", answer=(f"{{web_rev}} PTR {WEB}",)),
    row("below-clusterip-nxdomain", "x." + WEB, "A", "NXDOMAIN", soa=True),
    # 2.4 headless services
    row("headless-a-ready-only", DB, "A", answer=(f"{DB} A 10.251.1.5", f"{DB} A 10.251.1.6")),
    row("headless-aaaa-v4-nodata", DB, "AAAA", soa=True),
    row("headless-no-ready-endpoints-nxdomain", "empty.{ns}.svc.cluster.local.", "A", "NXDOMAIN", soa=True),
    row("headless-hostname", "db-0." + DB, "A", answer=(DB0_A,)),
    row("headless-dashed-ip", "10-251-1-6." + DB, "A", answer=(DB6_A,)),
    row("headless-not-ready-dashed-nxdomain", "10-251-1-7." + DB, "A", "NXDOMAIN", soa=True),
    row("headless-hostname-ip-is-not-a-name", "10-251-1-5." + DB, "A", "NXDOMAIN", soa=True),
    row("headless-srv", "_pg._tcp." + DB, "SRV",
        answer=(f"_pg._tcp.{DB} SRV 0 50 5432 db-0.{DB}", f"_pg._tcp.{DB} SRV 0 50 5432 10-251-1-6.{DB}"),
        additional=(DB0_A, DB6_A)),
    row("headless-ptr-hostname", "{db5_rev}", "PTR", answer=(f"{{db5_rev}} PTR db-0.{DB}",)),
    row("headless-ptr-dashed", "{db6_rev}", "PTR", answer=(f"{{db6_rev}} PTR 10-251-1-6.{DB}",)),
    row("headless-v6-aaaa", V6, "AAAA", answer=(f"{V6} AAAA fd00:251::5", f"{V6} AAAA fd00:251::6")),
    row("headless-v6-a-nodata", V6, "A", soa=True),
    row("headless-v6-hostname", "v6-0." + V6, "AAAA", answer=(V6_0,)),
    row("headless-v6-dashed-ip", "fd00-251--6." + V6, "AAAA", answer=(V6_6,)),
    row("headless-v6-srv", "_http._tcp." + V6, "SRV",
        answer=(f"_http._tcp.{V6} SRV 0 50 80 v6-0.{V6}", f"_http._tcp.{V6} SRV 0 50 80 fd00-251--6.{V6}"),
        additional=(V6_0, V6_6)),
    row("headless-v6-ptr-nibbles", "{v6_5_rev}", "PTR", answer=(f"{{v6_5_rev}} PTR v6-0.{V6}",)),
    row("headless-v6-ptr-dashed", "{v6_6_rev}", "PTR", answer=(f"{{v6_6_rev}} PTR fd00-251--6.{V6}",)),
    row("pod-hostname-subdomain", "myhost.sub.{ns}.svc.cluster.local.", "A",
        answer=("myhost.sub.{ns}.svc.cluster.local. A 10.251.2.10",)),
    # 2.5 ExternalName
    row("externalname-a-cname", "ext.{ns}.svc.cluster.local.", "A",
        answer=("ext.{ns}.svc.cluster.local. CNAME example.com.",)),
    row("externalname-cname", "ext.{ns}.svc.cluster.local.", "CNAME",
        answer=("ext.{ns}.svc.cluster.local. CNAME example.com.",)),
    # 2.1 schema version; the apex
    row("dns-version-txt", "dns-version.cluster.local.", "TXT",
        answer=('dns-version.cluster.local. TXT "1.1.0"',)),
    row("dns-version-a-nodata", "dns-version.cluster.local.", "A", soa=True),
    row("apex-soa", ZONE, "SOA", answer=(SOA,)),
    row("apex-ns", ZONE, "NS", answer=(f"{ZONE} NS ns.dns.{ZONE}",)),
    row("apex-a-nodata", ZONE, "A", soa=True),
    row("namespace-nodata", "{ns}.svc.cluster.local.", "A", soa=True),
    row("svc-nodata", "svc.cluster.local.", "A", soa=True),
    # pods (insecure, the default): any well-formed address in any namespace
    row("pod-a", "10-251-2-10.{ns}.pod.cluster.local.", "A",
        answer=("10-251-2-10.{ns}.pod.cluster.local. A 10.251.2.10",)),
    row("pod-insecure-any-address", "1-2-3-4.{ns}.pod.cluster.local.", "A",
        answer=("1-2-3-4.{ns}.pod.cluster.local. A 1.2.3.4",)),
    row("pod-v6", "fd00--7.{ns}.pod.cluster.local.", "AAAA",
        answer=("fd00--7.{ns}.pod.cluster.local. AAAA fd00::7",)),
    row("pod-not-an-address-nxdomain", "not-an-ip.{ns}.pod.cluster.local.", "A", "NXDOMAIN", soa=True),
    # negative answers
    row("missing-service-nxdomain", "nope.{ns}.svc.cluster.local.", "A", "NXDOMAIN", soa=True),
    row("missing-namespace-nxdomain", "web.no-such-ns-x1.svc.cluster.local.", "A", "NXDOMAIN", soa=True),
    row("unknown-zone-child-nxdomain", "foo.cluster.local.", "A", "NXDOMAIN", soa=True),
    # zone transfers
    row("axfr-refused", ZONE, "AXFR", "REFUSED", aa=False),
    row("ixfr-refused", ZONE, "IXFR", "REFUSED", aa=False),
    # case: answered case-insensitively, the question echoed byte for byte
    row("case-insensitive", "WeB.{NS}.Svc.Cluster.Local.", "A", answer=(WEB_A,)),
]
# fmt: on


@pytest.mark.parametrize("proto", PROTOS)
@pytest.mark.parametrize("r", ROWS, ids=[r.id for r in ROWS])
def test_conformance(setup: Setup, r: Row, proto: str) -> None:
    name = setup.fmt(r.name)
    resp = ask(setup.server, name, r.qtype, proto)
    got = {
        "rcode": rcode_of(resp),
        "answer": rr_texts(resp.answer),
        "authority": rr_texts(resp.authority),
        "additional": rr_texts(resp.additional),
    }
    want = {
        "rcode": r.rcode,
        "answer": {setup.fmt(a) for a in r.answer},
        "authority": {SOA} if r.soa else set(),
        "additional": {setup.fmt(a) for a in r.additional},
    }
    assert got == want, f"{name} {r.qtype} over {proto}"
    assert bool(resp.flags & dns.flags.AA) == r.aa, f"AA flag of {name} {r.qtype}"
    assert not resp.flags & dns.flags.TC
    # the question comes back as asked, case included
    assert len(resp.question) == 1
    assert resp.question[0].name.to_text() == name
    assert resp.question[0].rdtype == dns.rdatatype.from_text(r.qtype)
    # every record carries the zone TTL (5 s by default, as CoreDNS)
    for section in (resp.answer, resp.authority, resp.additional):
        for rrset in section:
            assert rrset.ttl == TTL, f"TTL of {rrset.name} {dns.rdatatype.to_text(rrset.rdtype)}"


@pytest.mark.parametrize("proto", PROTOS)
def test_case_echoed_in_raw_bytes(setup: Setup, proto: str) -> None:
    """The response carries the question's bytes exactly as sent (mixed case), right after the header."""
    q = make_query(setup.fmt("WeB.{NS}.Svc.Cluster.Local."), "A", id=4242)
    wire = q.to_wire()
    out = query_wire(setup.server.port, wire, tcp=proto == "tcp")
    assert out[:2] == wire[:2]
    qlen = len(wire) - 12
    assert out[12 : 12 + qlen] == wire[12:], (out[12 : 12 + qlen], wire[12:])
    assert rr_texts(dns.message.from_wire(out).answer) == {setup.fmt(WEB_A)}


def test_axfr_over_tcp_refused(setup: Setup) -> None:
    """A zone transfer as a client asks for it (TCP, the zone apex and a namespace's service name)."""
    for name in (ZONE, setup.svc("web")):
        resp = dns.query.tcp(make_query(name, "AXFR", rd=False), "127.0.0.1", 3.0, setup.server.port)
        assert rcode_of(resp) == "REFUSED", name
        assert resp.answer == []


def test_ixfr_with_soa_in_authority_refused(setup: Setup) -> None:
    """An IXFR as RFC 1995 sends it, with the client's SOA in the authority section: REFUSED, as the
    zone transfers are not served (not FORMERR: the query is well formed)."""
    q = make_query(ZONE, "IXFR", rd=False)
    soa = dns.rrset.from_text(ZONE, 0, "IN", "SOA", f"ns.dns.{ZONE} hostmaster.{ZONE} 1 7200 1800 86400 5")
    q.authority.append(soa)
    for tcp in (False, True):
        out = dns.message.from_wire(query_wire(setup.server.port, q.to_wire(), tcp=tcp))
        assert rcode_of(out) == "REFUSED", f"IXFR with SOA authority over {'tcp' if tcp else 'udp'}"


# -- names outside the zone ----------------------------------------------------------------------------


@pytest.mark.parametrize("proto", PROTOS)
@pytest.mark.parametrize(
    ("name", "qtype"),
    [
        ("example.org.", "A"),
        ("kubernetes.io.", "AAAA"),
        ("local.", "SOA"),
        ("cluster.local.example.org.", "A"),  # the zone as a prefix is not the zone
        (rev("10.251.1.7"), "PTR"),  # a not-ready endpoint's address: not ours
        (rev("10.251.9.9"), "PTR"),  # nobody's address
    ],
)
def test_outside_zone_refused_without_upstream(setup: Setup, name: str, qtype: str, proto: str) -> None:
    resp = ask(setup.server, name, qtype, proto)
    assert rcode_of(resp) == "REFUSED"
    assert resp.answer == [] and resp.authority == []
    assert not resp.flags & dns.flags.AA
    assert resp.question[0].name.to_text() == name


# -- malformed queries, EDNS0, truncation -----------------------------------------------------------------


@pytest.mark.parametrize("proto", PROTOS)
def test_two_questions_refused(setup: Setup, proto: str) -> None:
    q = make_query(setup.svc("web"), "A", id=777)
    q.find_rrset(q.question, dns.name.from_text(setup.svc("db")), dns.rdataclass.IN, dns.rdatatype.A,
                 create=True, force_unique=True)  # fmt: skip
    wire = q.to_wire()
    assert int.from_bytes(wire[4:6], "big") == 2
    resp = dns.message.from_wire(query_wire(setup.server.port, wire, tcp=proto == "tcp"))
    assert resp.id == 777
    assert rcode_of(resp) == "REFUSED"
    assert resp.answer == []


BIG_N = 60


@pytest.fixture(scope="module")
def big(setup: Setup) -> str:
    """A headless service with BIG_N ready endpoints (about 1 KB of A records: over 512, under 1232)."""
    ns = setup.ns
    setup.rest.create(f"/api/v1/namespaces/{ns}/services", service_body("big", headless=True))
    eps = [endpoint(f"10.251.4.{i}") for i in range(1, BIG_N + 1)]
    setup.rest.create(SLICES.format(ns=ns), slice_body("big-abcde", "big", eps, []))
    name = setup.svc("big")
    wait_until(lambda: len(answers(setup.server, name, "A", "tcp")) == BIG_N, f"{BIG_N} A records of big")
    return name


def test_edns_payload_4096_gets_whole_answer_over_udp(setup: Setup, big: str) -> None:
    resp = ask(setup.server, big, "A", "udp", payload=4096)
    assert not resp.flags & dns.flags.TC
    assert resp.edns == 0 and resp.payload >= 512  # the server's OPT record is there
    assert rr_texts(resp.answer) == {f"{big} A 10.251.4.{i}" for i in range(1, BIG_N + 1)}
    assert len(resp.to_wire()) > 512


def test_no_edns_big_answer_truncated_then_tcp_fallback(setup: Setup, big: str) -> None:
    q = make_query(big, "A")
    raw = query_wire(setup.server.port, q.to_wire())
    assert len(raw) <= 512
    resp = dns.message.from_wire(raw)
    assert resp.flags & dns.flags.TC
    assert rcode_of(resp) == "NOERROR"
    assert resp.answer == []
    assert resp.question[0].name.to_text() == big
    full, used_tcp = dns.query.udp_with_fallback(q, "127.0.0.1", timeout=3.0, port=setup.server.port)
    assert used_tcp
    assert not full.flags & dns.flags.TC
    assert len(rr_texts(full.answer)) == BIG_N


def test_edns_small_payload_is_raised_to_512(setup: Setup) -> None:
    """An OPT with a payload under 512 means 512 (RFC 6891 6.2.5): a small answer is not truncated."""
    resp = ask(setup.server, setup.svc("db"), "A", "udp", payload=100)
    assert not resp.flags & dns.flags.TC
    assert len(resp.answer) == 1 and len(resp.answer[0]) == 2


# -- objects changing while the server runs ---------------------------------------------------------------


def _a(setup: Setup, name: str) -> tuple[str, set[str]]:
    resp = ask(setup.server, name, "A")
    return rcode_of(resp), rr_texts(resp.answer)


def test_new_service_answers_within_1s(setup: Setup) -> None:
    name = unique("late")
    fqdn = setup.svc(name)
    assert _a(setup, fqdn)[0] == "NXDOMAIN"
    created = setup.rest.create(
        f"/api/v1/namespaces/{setup.ns}/services", service_body(name, ports=[port("http", 80)])
    )
    ip = created["spec"]["clusterIP"]
    took = wait_until(lambda: _a(setup, fqdn) == ("NOERROR", {f"{fqdn} A {ip}"}), f"A of {fqdn}")
    assert took <= 1.0, f"{fqdn} answered {took:.2f} s after its creation"


def test_deleted_service_goes_nxdomain(setup: Setup) -> None:
    name = unique("gone")
    fqdn = setup.svc(name)
    path = f"/api/v1/namespaces/{setup.ns}/services"
    created = setup.rest.create(path, service_body(name, ports=[port("http", 80)]))
    ip = created["spec"]["clusterIP"]
    wait_until(lambda: _a(setup, fqdn)[0] == "NOERROR", f"A of {fqdn}")
    wait_until(lambda: answers(setup.server, rev(ip), "PTR") == {f"{rev(ip)} PTR {fqdn}"}, "PTR")
    setup.rest.delete(f"{path}/{name}")
    wait_until(lambda: _a(setup, fqdn)[0] == "NXDOMAIN", f"NXDOMAIN for deleted {fqdn}")
    resp = ask(setup.server, fqdn, "A", "tcp")
    assert rcode_of(resp) == "NXDOMAIN" and rr_texts(resp.authority) == {SOA}
    # its reverse name is no longer ours either (no upstream: REFUSED)
    assert rcode_of(ask(setup.server, rev(ip), "PTR")) == "REFUSED"


def test_externalname_target_change(setup: Setup) -> None:
    name = unique("extchg")
    fqdn = setup.svc(name)
    path = f"/api/v1/namespaces/{setup.ns}/services"
    setup.rest.create(path, service_body(name, external_name="one.example.com"))
    wait_until(lambda: answers(setup.server, fqdn, "A") == {f"{fqdn} CNAME one.example.com."}, "first")
    setup.rest.patch(f"{path}/{name}", {"spec": {"externalName": "two.example.org"}})
    wait_until(lambda: answers(setup.server, fqdn, "A") == {f"{fqdn} CNAME two.example.org."}, "second")


def test_externalname_switched_to_clusterip(setup: Setup) -> None:
    name = unique("ext2ip")
    fqdn = setup.svc(name)
    path = f"/api/v1/namespaces/{setup.ns}/services"
    setup.rest.create(path, service_body(name, external_name="one.example.com"))
    wait_until(lambda: answers(setup.server, fqdn, "CNAME") == {f"{fqdn} CNAME one.example.com."}, "CNAME")
    changed = setup.rest.patch(
        f"{path}/{name}",
        {"spec": {"type": "ClusterIP", "externalName": None, "ports": [port("http", 80)]}},
    )
    ip = changed["spec"]["clusterIP"]
    assert ipaddress.ip_address(ip), changed
    wait_until(lambda: _a(setup, fqdn) == ("NOERROR", {f"{fqdn} A {ip}"}), f"A {ip} of {fqdn}")
    resp = ask(setup.server, fqdn, "CNAME")
    assert resp.answer == [] and rr_texts(resp.authority) == {SOA}  # no CNAME left: NODATA
    srv = answers(setup.server, f"_http._tcp.{fqdn}", "SRV")
    assert srv == {f"_http._tcp.{fqdn} SRV 0 100 80 {fqdn}"}


def test_endpoint_turning_not_ready_leaves_headless_answer(setup: Setup) -> None:
    name = unique("flip")
    fqdn = setup.svc(name)
    ns = setup.ns
    setup.rest.create(f"/api/v1/namespaces/{ns}/services", service_body(name, headless=True,
                      ports=[port("web", 8080)]))  # fmt: skip
    eps = [endpoint("10.251.5.1", hostname="h1"), endpoint("10.251.5.2", hostname="h2")]
    setup.rest.create(SLICES.format(ns=ns), slice_body(name, name, eps, [port("web", 8080)]))
    both = {f"{fqdn} A 10.251.5.1", f"{fqdn} A 10.251.5.2"}
    wait_until(lambda: _a(setup, fqdn) == ("NOERROR", both), "both endpoints")
    assert len(answers(setup.server, f"_web._tcp.{fqdn}", "SRV")) == 2
    eps[1]["conditions"]["ready"] = False
    setup.rest.patch(f"{SLICES.format(ns=ns)}/{name}", {"endpoints": eps})
    wait_until(lambda: _a(setup, fqdn) == ("NOERROR", {f"{fqdn} A 10.251.5.1"}), "only h1")
    assert _a(setup, f"h2.{fqdn}")[0] == "NXDOMAIN"
    assert answers(setup.server, f"_web._tcp.{fqdn}", "SRV") == {f"_web._tcp.{fqdn} SRV 0 100 8080 h1.{fqdn}"}
    eps[0]["conditions"]["ready"] = False
    setup.rest.patch(f"{SLICES.format(ns=ns)}/{name}", {"endpoints": eps})
    wait_until(lambda: _a(setup, fqdn)[0] == "NXDOMAIN", "no ready endpoint: NXDOMAIN")


# -- pods modes -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_ns(setup: Setup) -> str:
    """A second namespace with pod ``pod-x`` at 10.251.3.10."""
    ns = unique("dnsconf-other")
    setup.rest.create_namespace(ns)
    create_pod(setup.rest, ns, "pod-x", "10.251.3.10")
    return ns


def test_pods_verified(setup: Setup, other_ns: str, tmp_path: Path) -> None:
    server = start_dns_server(tmp_path, "--kubeconfig", str(setup.cluster.kubeconfig), "--pods", "verified")
    try:
        server.wait_ready(60)
        ns = setup.ns
        for proto in PROTOS:
            for ip in ("10.251.2.10", "10.251.2.11"):
                name = f"{ip.replace('.', '-')}.{ns}.pod.{ZONE}"
                resp = ask(server, name, "A", proto)
                assert (rcode_of(resp), rr_texts(resp.answer)) == ("NOERROR", {f"{name} A {ip}"})
            for name in (
                f"10-251-2-99.{ns}.pod.{ZONE}",  # no pod has it
                f"10-251-3-10.{ns}.pod.{ZONE}",  # a pod of another namespace has it
                f"1-2-3-4.{ns}.pod.{ZONE}",
            ):
                resp = ask(server, name, "A", proto)
                assert rcode_of(resp) == "NXDOMAIN", name
                assert rr_texts(resp.authority) == {SOA}
            name = f"10-251-3-10.{other_ns}.pod.{ZONE}"
            assert answers(server, name, "A", proto) == {f"{name} A 10.251.3.10"}
        # services answer as in any mode
        assert answers(server, setup.svc("web"), "A") == {setup.fmt(WEB_A)}
        # a pod that starts later is verified as soon as the watch sees its address
        create_pod(setup.rest, ns, "pod-late", "10.251.2.20")
        name = f"10-251-2-20.{ns}.pod.{ZONE}"
        wait_until(lambda: answers(server, name, "A") == {f"{name} A 10.251.2.20"}, "late pod")
        setup.rest.delete(f"/api/v1/namespaces/{ns}/pods/pod-late")
        wait_until(lambda: rcode_of(ask(server, name, "A")) == "NXDOMAIN", "deleted pod: NXDOMAIN")
    finally:
        server.stop()


def test_pods_verified_hostname_needs_a_ready_endpoint(setup: Setup, tmp_path: Path) -> None:
    """``<hostname>.<subdomain>`` names a pod only through a ready endpoint of the headless service
    (Kubernetes "DNS for Services and Pods": the pod must be ready, unless publishNotReadyAddresses), and
    the pods mode must not change service names: a pod with hostname+subdomain but no ready endpoint
    (e.g. not ready) is NXDOMAIN in every mode, as with CoreDNS."""
    ns = setup.ns
    create_pod(setup.rest, ns, "pod-unready", "10.251.2.30", hostname="lonely", subdomain="sub")
    name = f"lonely.sub.{ns}.svc.{ZONE}"
    server = start_dns_server(tmp_path, "--kubeconfig", str(setup.cluster.kubeconfig), "--pods", "verified")
    try:
        server.wait_ready(60)
        # sanity: the verified server has seen the pod
        seen = f"10-251-2-30.{ns}.pod.{ZONE}"
        wait_until(lambda: answers(server, seen, "A") == {f"{seen} A 10.251.2.30"}, "pod-unready seen")
        insecure = ask(setup.server, name, "A")
        verified = ask(server, name, "A")
        assert (rcode_of(insecure), rr_texts(insecure.answer)) == ("NXDOMAIN", set())
        assert (rcode_of(verified), rr_texts(verified.answer)) == ("NXDOMAIN", set()), (
            f"--pods verified answers {name} A {rr_texts(verified.answer)} for a pod with no ready "
            "endpoint; --pods insecure answers NXDOMAIN"
        )
    finally:
        server.stop()


def test_pods_disabled(setup: Setup, tmp_path: Path) -> None:
    server = start_dns_server(tmp_path, "--kubeconfig", str(setup.cluster.kubeconfig), "--pods", "disabled")
    try:
        server.wait_ready(60)
        for proto in PROTOS:
            for name in (f"10-251-2-10.{setup.ns}.pod.{ZONE}", f"1-2-3-4.{setup.ns}.pod.{ZONE}"):
                resp = ask(server, name, "A", proto)
                assert rcode_of(resp) == "NXDOMAIN", name
                assert rr_texts(resp.authority) == {SOA}
            assert answers(server, setup.svc("web"), "A", proto) == {setup.fmt(WEB_A)}
    finally:
        server.stop()


# -- before the first sync ------------------------------------------------------------------------------


def test_servfail_before_first_sync(kube_cluster: KubeCluster, tmp_path: Path) -> None:
    """An apiserver that never answers (a closed port): in-zone names SERVFAIL (never a false NXDOMAIN),
    ``/ready`` 503, ``/health`` 200; names outside the zone are still REFUSED (no upstream)."""
    config = json.loads(kube_cluster.kubeconfig.read_text())
    closed = free_dns_port()  # nothing listens there
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{closed}"
    kubeconfig = tmp_path / "closed.kubeconfig"
    kubeconfig.write_text(json.dumps(config))
    server = start_dns_server(tmp_path, "--kubeconfig", str(kubeconfig))
    try:
        names = [
            "web.default.svc.cluster.local.",
            "nope.nope.svc.cluster.local.",
            "dns-version.cluster.local.",
        ]
        for proto in PROTOS:
            for name in names:
                resp = ask(server, name, "A", proto)
                assert rcode_of(resp) == "SERVFAIL", f"{name} over {proto}"
                assert resp.answer == []
                assert resp.question[0].name.to_text() == name
            assert rcode_of(ask(server, "example.org.", "A", proto)) == "REFUSED"
        assert server.health_status("/ready") == 503
        assert server.health_status("/health") == 200
        series = server.metrics()
        assert metric_total(series, "coredns_dns_responses_total", rcode="SERVFAIL") >= len(names) * 2
        assert server.running()
        assert re.search(r"cannot discover|retrying|connect", server.stderr(), re.IGNORECASE)
    finally:
        assert server.stop() == 0


def test_ready_and_metrics_of_synced_server(setup: Setup) -> None:
    assert setup.server.ready()
    assert setup.server.health_status("/health") == 200
    before = metric_total(setup.server.metrics(), "coredns_dns_responses_total", rcode="NXDOMAIN")
    for proto in PROTOS:
        ask(setup.server, setup.svc("nope-metrics"), "A", proto)
    after = setup.server.metrics()
    assert metric_total(after, "coredns_dns_responses_total", rcode="NXDOMAIN") == before + 2
    assert metric_total(after, "coredns_dns_requests_total", proto="tcp") >= 1


# -- one-machine --records mode: dual-stack ClusterIP and the name server's own address ------------------

RECORDS = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIPs: [10.96.0.10, "fd00::10"]
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec: {clusterIP: 10.96.0.53, ports: [{name: dns, port: 53, protocol: UDP}]}
"""


@pytest.mark.parametrize("proto", PROTOS)
def test_records_dual_stack_clusterip(tmp_path: Path, proto: str) -> None:
    """Dual-stack ClusterIP (1.20 cannot make one: IPv6DualStack is off and the service CIDR v4 only)."""
    records = tmp_path / "records.yaml"
    records.write_text(RECORDS)
    server = start_dns_server(tmp_path, "--records", str(records))
    try:
        server.wait_ready(10)
        web = "web.default.svc.cluster.local."
        assert answers(server, web, "A", proto) == {f"{web} A 10.96.0.10"}
        assert answers(server, web, "AAAA", proto) == {f"{web} AAAA fd00::10"}
        srv = ask(server, f"_http._tcp.{web}", "SRV", proto)
        assert rr_texts(srv.answer) == {f"_http._tcp.{web} SRV 0 100 80 {web}"}
        assert rr_texts(srv.additional) == {f"{web} A 10.96.0.10", f"{web} AAAA fd00::10"}
        for ip in ("10.96.0.10", "fd00::10"):
            assert answers(server, rev(ip), "PTR", proto) == {f"{rev(ip)} PTR {web}"}
        # the NS record's glue is the kube-dns service's address, as CoreDNS gives its own
        ns = ask(server, ZONE, "NS", proto)
        assert rr_texts(ns.answer) == {f"{ZONE} NS ns.dns.{ZONE}"}
        assert rr_texts(ns.additional) == {f"ns.dns.{ZONE} A 10.96.0.53"}
        assert answers(server, f"ns.dns.{ZONE}", "A", proto) == {f"ns.dns.{ZONE} A 10.96.0.53"}
    finally:
        server.stop()
