"""The whole server in front of a real upstream (knotd): names outside the cluster zone are forwarded and
cached, cluster names never leave, truncation and TCP work end to end, a dead upstream is SERVFAIL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.query
import dns.rcode
import pytest

from tests.support.dns import DnsServerProc, free_dns_port, make_query, metric_total, query, start_dns_server
from tests.support.knot import BIG_TXT_COUNT, WWW_A, Knot, start_knot

RECORDS = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}
"""


@pytest.fixture(scope="module")
def knot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Knot]:
    server = start_knot(tmp_path_factory.mktemp("knot"))
    yield server
    server.stop()


@pytest.fixture
def server(tmp_path: Path, knot: Knot) -> Iterator[DnsServerProc]:
    records = tmp_path / "records.yaml"
    records.write_text(RECORDS)
    host, port = knot.addr()
    proc = start_dns_server(tmp_path, "--records", str(records), "--upstream", f"{host}:{port}")
    proc.wait_ready(10)
    yield proc
    proc.stop()


def forwarded(m: dict[str, float]) -> float:
    return metric_total(m, "coredns_forward_requests_total")


def test_outside_names_forwarded_then_cached(server: DnsServerProc) -> None:
    r = query(server.port, "www.Example.Test", "A")
    assert [str(x) for x in r.answer[0]] == [WWW_A]
    assert str(r.question[0].name) == "www.Example.Test."
    r2 = query(server.port, "WWW.example.test", "A")
    assert [str(x) for x in r2.answer[0]] == [WWW_A] and r2.answer[0].ttl <= 300
    assert str(r2.question[0].name) == "WWW.example.test."
    m = server.metrics()
    assert forwarded(m) == 1
    assert metric_total(m, "coredns_cache_hits_total", type="success") == 1
    assert metric_total(m, "coredns_cache_misses_total") == 1
    assert metric_total(m, "coredns_dns_responses_total", plugin="forward", rcode="NOERROR") == 1
    assert metric_total(m, "coredns_dns_responses_total", plugin="cache", rcode="NOERROR") == 1
    assert metric_total(m, "coredns_proxy_request_duration_seconds_count", proxy_name="forward") == 1
    nx = query(server.port, "nothing.example.test", "A")
    assert nx.rcode() == dns.rcode.NXDOMAIN
    assert query(server.port, "nothing.example.test", "A").rcode() == dns.rcode.NXDOMAIN
    assert metric_total(server.metrics(), "coredns_cache_hits_total", type="denial") == 1


def test_cluster_names_never_leave(server: DnsServerProc) -> None:
    for name, rdtype in [
        ("nope.ns.svc.cluster.local", "A"),
        ("web.ns.svc.cluster.local", "MX"),
        ("deep.name.under.cluster.local", "AAAA"),
        ("10.0.96.10.in-addr.arpa", "PTR"),
    ]:
        query(server.port, name, rdtype)
    assert forwarded(server.metrics()) == 0
    query(server.port, "1.2.0.192.in-addr.arpa", "PTR")  # not a cluster address: the upstream's
    assert forwarded(server.metrics()) == 1


def test_truncated_over_udp_whole_over_tcp(server: DnsServerProc) -> None:
    r = query(server.port, "big.example.test", "TXT")
    assert r.flags & dns.flags.TC and not r.answer
    whole, used_tcp = dns.query.udp_with_fallback(
        make_query("big.example.test", "TXT"), "127.0.0.1", port=server.port, timeout=3
    )
    assert used_tcp and len(whole.answer[0]) == BIG_TXT_COUNT
    assert len(query(server.port, "big.example.test", "TXT", payload=4096).answer[0]) == BIG_TXT_COUNT


def test_dead_upstream_is_servfail(tmp_path: Path) -> None:
    records = tmp_path / "records.yaml"
    records.write_text(RECORDS)
    dead = free_dns_port()  # nothing listens there
    server = start_dns_server(tmp_path, "--records", str(records), "--upstream", f"127.0.0.1:{dead}")
    try:
        server.wait_ready(10)
        r = query(server.port, "www.example.test", "A", timeout=10)
        assert r.rcode() == dns.rcode.SERVFAIL
        assert query(server.port, "web.ns.svc.cluster.local", "A").answer  # the cluster is unaffected
        assert metric_total(server.metrics(), "coredns_dns_responses_total", rcode="SERVFAIL") == 1
    finally:
        server.stop()


def test_serve_stale_answers_when_the_upstream_is_gone(tmp_path: Path) -> None:
    """``short.example.test`` has a 5 s TTL: once it expires with the upstream stopped, the cached answer
    is served stale (TTL 30) instead of SERVFAIL, and counted."""
    own = start_knot(tmp_path / "knot")
    records = tmp_path / "records.yaml"
    records.write_text(RECORDS)
    cfg = tmp_path / "dns.yaml"
    host, port = own.addr()
    cfg.write_text(f"upstream: ['{host}:{port}']\ncache: {{serve_stale: 120}}\nforward: {{timeout: 1}}\n")
    server = start_dns_server(tmp_path, "--config", str(cfg), "--records", str(records))
    try:
        server.wait_ready(10)
        first = query(server.port, "short.example.test", "A")
        assert first.answer[0].ttl <= 5
        own.stop()
        deadline = time.monotonic() + 20
        while True:  # the entry's TTL runs out by the clock; poll until the stale answer shows
            r = query(server.port, "short.example.test", "A", timeout=5)
            assert r.rcode() == dns.rcode.NOERROR and [str(x) for x in r.answer[0]] == ["192.0.2.20"]
            if r.answer[0].ttl == 30:
                break
            assert time.monotonic() < deadline, "never served stale"
            time.sleep(0.2)
        assert metric_total(server.metrics(), "coredns_cache_served_stale_total") >= 1
    finally:
        server.stop()
        own.stop()
