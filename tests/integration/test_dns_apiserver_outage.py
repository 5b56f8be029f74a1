"""The DNS server through a kube-apiserver outage, on a private cluster (the test stops its apiserver).

Once synced, the server answers from its last state while the apiserver is down (``/ready`` stays 200,
as CoreDNS's kubernetes plugin stays ready once it has synced) and converges after the apiserver comes
back: changes made meanwhile through a peer apiserver (same etcd) show up, with no phantom name left,
and a service created afterwards answers (the watches reconnect with backoff, capped at 30 s).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.rcode
import pytest

from tests.support.dns import DnsServerProc, query, start_dns_server
from tests.support.kube.apiserver import KubeCluster, start_cluster
from tests.support.kube.rest import KubeRest

OUTAGE_WINDOW = 5.0  # seconds of queries while the apiserver is down
RECONNECT_DEADLINE = 90.0  # backoff cap 30 s, plus a relist: generous


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[KubeCluster]:
    c = start_cluster(tmp_path / "kube")
    yield c
    c.stop()


def service_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }


def a_record(server: DnsServerProc, name: str, tcp: bool = False) -> tuple[str, set[str]]:
    resp = query(server.port, name, "A", tcp=tcp, timeout=2.0)
    return dns.rcode.to_text(resp.rcode()), {rd.to_text() for rrset in resp.answer for rd in rrset}


def wait_until(probe: Callable[[], bool], what: str, within: float) -> float:
    t0 = time.monotonic()
    while not probe():
        if time.monotonic() - t0 > within:
            raise AssertionError(f"timed out after {within:.0f} s waiting for: {what}")
        time.sleep(0.05)
    return time.monotonic() - t0


def test_answers_from_cache_through_apiserver_outage(cluster: KubeCluster, tmp_path: Path) -> None:
    rest = KubeRest.for_cluster(cluster)
    ns = f"outage-{uuid.uuid4().hex[:8]}"
    rest.create_namespace(ns)
    services = f"/api/v1/namespaces/{ns}/services"
    web_ip = rest.create(services, service_body("web"))["spec"]["clusterIP"]
    doomed_ip = rest.create(services, service_body("doomed"))["spec"]["clusterIP"]
    web, doomed = f"web.{ns}.svc.cluster.local.", f"doomed.{ns}.svc.cluster.local."

    server = start_dns_server(tmp_path / "dns", "--kubeconfig", str(cluster.kubeconfig))
    try:
        server.wait_ready(60)
        assert a_record(server, web) == ("NOERROR", {web_ip})
        assert a_record(server, doomed) == ("NOERROR", {doomed_ip})

        cluster.stop_apiserver()
        assert not cluster.apiserver.running()
        # the cache keeps answering, over both transports, and the server stays ready and healthy
        t0 = time.monotonic()
        checks = 0
        while time.monotonic() - t0 < OUTAGE_WINDOW:
            tcp = checks % 2 == 1
            assert a_record(server, web, tcp) == ("NOERROR", {web_ip}), f"{time.monotonic() - t0:.1f} s in"
            assert server.health_status("/ready") == 200, f"/ready {time.monotonic() - t0:.1f} s in"
            assert server.health_status("/health") == 200
            checks += 1
            time.sleep(0.2)
        assert checks >= 10
        assert a_record(server, f"nope.{ns}.svc.cluster.local.") == ("NXDOMAIN", set())
        assert server.running()

        # while the first apiserver is down, change objects through a peer (same etcd)
        peer_url, _ = cluster.start_peer_apiserver()
        peer = KubeRest.for_cluster(cluster, peer_url)
        peer.delete(f"{services}/doomed")
        born_ip = peer.create(services, service_body("born"))["spec"]["clusterIP"]
        born = f"born.{ns}.svc.cluster.local."
        cluster.stop_peer_apiservers()
        assert a_record(server, doomed) == ("NOERROR", {doomed_ip})  # not seen yet: the cache is stale

        cluster.start_apiserver()
        wait_until(lambda: a_record(server, born) == ("NOERROR", {born_ip}), born, RECONNECT_DEADLINE)
        wait_until(lambda: a_record(server, doomed)[0] == "NXDOMAIN", f"{doomed} gone", RECONNECT_DEADLINE)
        late_ip = rest.create(services, service_body("late"))["spec"]["clusterIP"]
        late = f"late.{ns}.svc.cluster.local."
        took = wait_until(lambda: a_record(server, late) == ("NOERROR", {late_ip}), late, RECONNECT_DEADLINE)
        assert a_record(server, late, tcp=True) == ("NOERROR", {late_ip})
        assert a_record(server, web) == ("NOERROR", {web_ip})
        assert server.ready()
        assert took < RECONNECT_DEADLINE
    finally:
        assert server.stop() == 0, server.stderr_tail()
