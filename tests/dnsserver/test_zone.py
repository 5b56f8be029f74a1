"""The cluster zone's records, rule by rule, without a network (the pure core of the DNS server)."""

from __future__ import annotations

from typing import Any

import pytest
from dnslib import QTYPE, RCODE

from dnsserver.objects import (
    endpoint_slice_from,
    endpoints_from,
    flatten,
    pod_from,
    service_from,
)
from dnsserver.records import apply_object
from dnsserver.zone import ClusterZone, dashed, reverse_name

Z = "cluster.local."


def svc(name: str, ns: str = "ns", **spec: Any) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def eps_slice(
    name: str,
    service: str,
    endpoints: list[dict[str, Any]],
    ports: list[dict[str, Any]],
    ns: str = "ns",
    address_type: str = "IPv4",
) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": ports,
    }


def ep(ip: str, ready: bool | None = True, hostname: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"addresses": [ip]}
    if ready is not None:
        out["conditions"] = {"ready": ready}
    if hostname:
        out["hostname"] = hostname
    return out


def values(zone: ClusterZone, name: str, qtype: int) -> set[str]:
    a = zone.lookup(name, qtype)
    assert a.rcode == RCODE.NOERROR, (name, a.rcode)
    return {str(rd) for _, _, rd in a.answer}


@pytest.fixture
def zone() -> ClusterZone:
    z = ClusterZone("cluster.local")
    for obj in [
        svc(
            "web",
            clusterIPs=["10.96.0.10", "fd00::10"],
            ports=[{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}, {"port": 9}],
        ),
        svc("db", clusterIP="None", ports=[{"name": "pg", "port": 5432}]),
        eps_slice(
            "db-1",
            "db",
            [ep("10.1.0.5", hostname="db-0"), ep("10.1.0.6"), ep("10.1.0.7", ready=False)],
            [{"name": "pg", "port": 5432, "protocol": "TCP"}],
        ),
        svc("empty", clusterIP="None"),
        eps_slice("empty-1", "empty", [ep("10.1.0.9", ready=False)], []),
        svc("ext", type="ExternalName", externalName="Example.COM."),
        {
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"hostname": "h", "subdomain": "db"},
            "status": {"podIP": "10.1.0.50"},
        },
    ]:
        apply_object(z, obj)
    return z


def test_cluster_ip_a_and_aaaa_dual_stack(zone: ClusterZone) -> None:
    assert values(zone, f"web.ns.svc.{Z}", QTYPE.A) == {"10.96.0.10"}
    assert values(zone, f"web.ns.svc.{Z}", QTYPE.AAAA) == {"fd00::10"}


def test_nodata_has_soa_in_authority(zone: ClusterZone) -> None:
    a = zone.lookup(f"web.ns.svc.{Z}", QTYPE.MX)
    assert a.rcode == RCODE.NOERROR and not a.answer
    assert [t for _, t, _ in a.authority] == [QTYPE.SOA]


def test_nxdomain_has_soa_in_authority(zone: ClusterZone) -> None:
    a = zone.lookup(f"nope.ns.svc.{Z}", QTYPE.A)
    assert a.rcode == RCODE.NXDOMAIN and [t for _, t, _ in a.authority] == [QTYPE.SOA]


def test_headless_answers_ready_endpoints_only(zone: ClusterZone) -> None:
    assert values(zone, f"db.ns.svc.{Z}", QTYPE.A) == {"10.1.0.5", "10.1.0.6"}


def test_headless_without_ready_endpoints_is_nxdomain(zone: ClusterZone) -> None:
    assert zone.lookup(f"empty.ns.svc.{Z}", QTYPE.A).rcode == RCODE.NXDOMAIN


def test_endpoint_hostname_and_dashed_ip_names(zone: ClusterZone) -> None:
    assert values(zone, f"db-0.db.ns.svc.{Z}", QTYPE.A) == {"10.1.0.5"}
    assert values(zone, f"10-1-0-6.db.ns.svc.{Z}", QTYPE.A) == {"10.1.0.6"}
    assert zone.lookup(f"10-1-0-7.db.ns.svc.{Z}", QTYPE.A).rcode == RCODE.NXDOMAIN  # not ready


def test_pod_hostname_subdomain_record(zone: ClusterZone) -> None:
    assert values(zone, f"h.db.ns.svc.{Z}", QTYPE.A) == {"10.1.0.50"}


def test_srv_cluster_ip_named_ports_with_additional(zone: ClusterZone) -> None:
    a = zone.lookup(f"_http._tcp.web.ns.svc.{Z}", QTYPE.SRV)
    assert [(rd.port, str(rd.target)) for _, _, rd in a.answer] == [(80, f"web.ns.svc.{Z}")]
    assert {str(rd) for _, _, rd in a.additional} == {"10.96.0.10", "fd00::10"}
    assert values(zone, f"_dns._udp.web.ns.svc.{Z}", QTYPE.SRV) == {f"0 100 53 web.ns.svc.{Z}"}


def test_srv_headless_one_per_ready_endpoint(zone: ClusterZone) -> None:
    a = zone.lookup(f"_pg._tcp.db.ns.svc.{Z}", QTYPE.SRV)
    assert {(rd.weight, rd.port, str(rd.target)) for _, _, rd in a.answer} == {
        (50, 5432, f"db-0.db.ns.svc.{Z}"),
        (50, 5432, f"10-1-0-6.db.ns.svc.{Z}"),
    }
    assert {(n, str(rd)) for n, _, rd in a.additional} == {
        (f"db-0.db.ns.svc.{Z}", "10.1.0.5"),
        (f"10-1-0-6.db.ns.svc.{Z}", "10.1.0.6"),
    }


def test_ptr_for_service_and_endpoint_ips(zone: ClusterZone) -> None:
    a = zone.lookup_ptr(reverse_name("10.96.0.10"))
    assert a is not None and {str(rd) for _, _, rd in a.answer} == {f"web.ns.svc.{Z}"}
    a6 = zone.lookup_ptr(reverse_name("fd00::10"))
    assert a6 is not None and {str(rd) for _, _, rd in a6.answer} == {f"web.ns.svc.{Z}"}
    assert reverse_name("fd00::10").startswith("0.1.0.0.0.0.0.0") and reverse_name("fd00::10").endswith(
        "ip6.arpa."
    )
    e = zone.lookup_ptr(reverse_name("10.1.0.5"))
    assert e is not None and {str(rd) for _, _, rd in e.answer} == {f"db-0.db.ns.svc.{Z}"}
    assert zone.lookup_ptr(reverse_name("10.1.0.7")) is None  # not ready
    assert zone.lookup_ptr(reverse_name("192.0.2.1")) is None  # not ours: forwarded


def test_external_name_is_a_cname_for_every_type(zone: ClusterZone) -> None:
    for t in (QTYPE.A, QTYPE.AAAA, QTYPE.CNAME):
        a = zone.lookup(f"ext.ns.svc.{Z}", t)
        assert [(tt, str(rd)) for _, tt, rd in a.answer] == [(QTYPE.CNAME, "example.com.")]


def test_external_name_change_and_switch_to_cluster_ip(zone: ClusterZone) -> None:
    gen = zone.generation
    apply_object(zone, svc("ext", type="ExternalName", externalName="other.example.org"))
    assert zone.generation > gen
    assert values(zone, f"ext.ns.svc.{Z}", QTYPE.A) == {"other.example.org."}
    apply_object(zone, svc("ext", clusterIP="10.96.0.99"))
    assert values(zone, f"ext.ns.svc.{Z}", QTYPE.A) == {"10.96.0.99"}


def test_delete_service_removes_every_name(zone: ClusterZone) -> None:
    apply_object(zone, svc("web"), deleted=True)
    assert zone.lookup(f"web.ns.svc.{Z}", QTYPE.A).rcode == RCODE.NXDOMAIN
    assert zone.lookup(f"_http._tcp.web.ns.svc.{Z}", QTYPE.SRV).rcode == RCODE.NXDOMAIN
    assert zone.lookup_ptr(reverse_name("10.96.0.10")) is None
    # the namespace still has services: its name is an empty non-terminal (NODATA), not NXDOMAIN
    assert zone.lookup(f"ns.svc.{Z}", QTYPE.A).rcode == RCODE.NOERROR


def test_apex_soa_ns_and_version(zone: ClusterZone) -> None:
    assert zone.lookup(Z, QTYPE.SOA).answer[0][1] == QTYPE.SOA
    assert values(zone, Z, QTYPE.NS) == {f"ns.dns.{Z}"}
    assert values(zone, f"dns-version.{Z}", QTYPE.TXT) == {'"1.1.0"'}


@pytest.mark.parametrize(
    ("mode", "name", "want"),
    [
        ("insecure", "10-1-2-3.ns.pod.", "10.1.2.3"),
        ("insecure", "fd00--7.ns.pod.", "fd00::7"),
        ("insecure", "10-1-2-999.ns.pod.", None),
        ("disabled", "10-1-2-3.ns.pod.", None),
        ("verified", "10-1-0-50.ns.pod.", "10.1.0.50"),
        ("verified", "10-1-0-51.ns.pod.", None),
        ("verified", "10-1-0-50.other.pod.", None),
    ],
)
def test_pod_records_by_mode(mode: str, name: str, want: str | None) -> None:
    z = ClusterZone(pods=mode)
    apply_object(
        z, {"kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}, "status": {"podIP": "10.1.0.50"}}
    )
    qtype = QTYPE.AAAA if want and ":" in want else QTYPE.A
    a = z.lookup(name + Z, qtype)
    if want is None:
        assert a.rcode == RCODE.NXDOMAIN
    else:
        assert {str(rd) for _, _, rd in a.answer} == {want}


def test_endpoint_turning_not_ready_leaves_the_answer(zone: ClusterZone) -> None:
    apply_object(
        zone, eps_slice("db-1", "db", [ep("10.1.0.5", hostname="db-0"), ep("10.1.0.6", ready=False)], [])
    )
    assert values(zone, f"db.ns.svc.{Z}", QTYPE.A) == {"10.1.0.5"}


def test_endpoint_ready_null_counts_as_ready() -> None:
    z = ClusterZone()
    apply_object(z, svc("h", clusterIP="None"))
    apply_object(z, eps_slice("h-1", "h", [ep("10.2.0.1", ready=None)], []))
    assert values(z, f"h.ns.svc.{Z}", QTYPE.A) == {"10.2.0.1"}


def test_slices_of_one_service_merge_and_a_slice_can_move() -> None:
    z = ClusterZone()
    apply_object(z, svc("h", clusterIP="None"))
    apply_object(z, eps_slice("h-1", "h", [ep("10.2.0.1")], []))
    apply_object(z, eps_slice("h-2", "h", [ep("10.2.0.2"), ep("10.2.0.1")], []))
    assert values(z, f"h.ns.svc.{Z}", QTYPE.A) == {"10.2.0.1", "10.2.0.2"}
    apply_object(z, eps_slice("h-2", "h", [], []), deleted=True)
    assert values(z, f"h.ns.svc.{Z}", QTYPE.A) == {"10.2.0.1"}


def test_core_endpoints_fallback() -> None:
    z = ClusterZone()
    apply_object(z, svc("h", clusterIP="None"))
    obj = {
        "kind": "Endpoints",
        "metadata": {"name": "h", "namespace": "ns"},
        "subsets": [
            {
                "addresses": [{"ip": "10.3.0.1", "hostname": "a"}],
                "notReadyAddresses": [{"ip": "10.3.0.2"}],
                "ports": [{"name": "p", "port": 1}],
            }
        ],
    }
    apply_object(z, obj)
    assert values(z, f"h.ns.svc.{Z}", QTYPE.A) == {"10.3.0.1"}
    assert values(z, f"a.h.ns.svc.{Z}", QTYPE.A) == {"10.3.0.1"}
    apply_object(z, {**obj, "subsets": []})
    assert z.lookup(f"h.ns.svc.{Z}", QTYPE.A).rcode == RCODE.NXDOMAIN
    assert len(endpoints_from(obj)[0].endpoints) == 2


def test_v1beta1_slice_and_ipv6_headless() -> None:
    z = ClusterZone()
    apply_object(z, svc("h6", clusterIP="None"))
    apply_object(z, eps_slice("h6-1", "h6", [ep("fd00::1:5", hostname="x")], [], address_type="IPv6"))
    assert values(z, f"h6.ns.svc.{Z}", QTYPE.AAAA) == {"fd00::1:5"}
    assert z.lookup(f"h6.ns.svc.{Z}", QTYPE.A).answer == []
    assert dashed("fd00::1:5") == "fd00--1-5"


def test_objects_parse_and_reject() -> None:
    assert service_from(svc("x", clusterIP="None")).kind == "Headless"
    assert service_from(svc("x", clusterIP="10.0.0.1", clusterIPs=["10.0.0.1", "bad"])).ips == ("10.0.0.1",)
    assert endpoint_slice_from({"kind": "EndpointSlice", "metadata": {"name": "s", "namespace": "n"}}) is None
    assert pod_from(
        {"metadata": {"name": "p"}, "status": {"podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}}
    ).ips == (
        "10.0.0.1",
        "fd00::1",
    )
    assert len(flatten([{"kind": "List", "items": [svc("a"), svc("b")]}, None, svc("c")])) == 3
    with pytest.raises(ValueError, match=r"metadata\.name"):
        service_from({"kind": "Service", "metadata": {}})
