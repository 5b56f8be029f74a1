"""The cluster zone: Services, EndpointSlices and Pods as DNS records, per the Kubernetes DNS-Based Service
Discovery specification 1.1.0, and CoreDNS's behaviour where the spec is silent.

Pure and synchronous: the watch layer calls ``set_*``/``delete_*`` as objects change; :meth:`lookup`
answers one question. Records are kept per contributing service, so a change recomputes one service's
names, never the zone. Every answer carries the zone TTL (``ttl``, 5 s by default, as CoreDNS).

Names (``<zone>`` = ``cluster.local`` by default):

- ``<svc>.<ns>.svc.<zone>``: A/AAAA = the cluster IPs (dual-stack: both families); headless: the ready
  endpoints' addresses, NXDOMAIN when none is ready; ExternalName: a CNAME to the external name.
- ``<host>.<svc>.<ns>.svc.<zone>`` (headless): each ready endpoint, ``<host>`` its hostname or its address
  with dashes (``10-1-0-5``, ``fd00--5``) as CoreDNS names them. Pods with ``hostname`` + ``subdomain``
  get theirs through the EndpointSlices in a cluster; from a records file (``pod_hostnames``), also
  straight from the Pod objects, since no endpoints controller writes slices there.
- ``_<port>._<proto>.<svc>.<ns>.svc.<zone>``: SRV per named port (ClusterIP: target the service name;
  headless: one per ready endpoint, target its host name), weight ``100 / n`` as CoreDNS; the targets'
  addresses go in the additional section.
- ``<a-b-c-d>.<ns>.pod.<zone>``: pods mode ``disabled`` (NXDOMAIN), ``insecure`` (any well-formed address),
  ``verified`` (a pod of that namespace has the address).
- PTR in ``in-addr.arpa`` / ``ip6.arpa`` for service IPs (to the service name) and endpoint addresses (to the
  endpoint's host name); other reverse names are not ours (``None``: the caller forwards them).
- ``dns-version.<zone>`` TXT ``1.1.0``; SOA and NS at the apex (``ns.dns.<zone>``, with the A/AAAA of
  ``kube-system/kube-dns`` when that service exists); NODATA and NXDOMAIN carry the SOA in authority.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dnslib import AAAA, CNAME, NS, PTR, QTYPE, RCODE, SOA, SRV, TXT, A

from dnsserver.objects import EndpointSet, Pod, Service

SPEC_VERSION = "1.1.0"
T_A, T_NS, T_CNAME, T_SOA, T_PTR, T_TXT, T_AAAA, T_SRV, T_ANY = (
    QTYPE.A,
    QTYPE.NS,
    QTYPE.CNAME,
    QTYPE.SOA,
    QTYPE.PTR,
    QTYPE.TXT,
    QTYPE.AAAA,
    QTYPE.SRV,
    QTYPE.ANY,
)
PODS_MODES = ("disabled", "insecure", "verified")

RR = tuple[str, int, Any]  # (owner name, type, dnslib rdata); the TTL is the zone's


@dataclass(slots=True)
class Answer:
    rcode: int
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    authoritative: bool = True


def reverse_name(ip: str) -> str:
    """``10.0.0.1`` -> ``1.0.0.10.in-addr.arpa.``; IPv6 in nibble form under ``ip6.arpa.``."""
    return ipaddress.ip_address(ip).reverse_pointer + "."


def dashed(ip: str) -> str:
    """An address as one DNS label, as CoreDNS writes it: ``10-1-0-5``, ``fd00--5``."""
    return ip.replace(".", "-").replace(":", "-")


def _undash(label: str) -> str | None:
    """The address a pod label names (``10-1-0-5`` or ``fd00--5``), canonical; None if it is not one."""
    for candidate in (label.replace("-", "."), label.replace("-", ":")):
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return None


def _addr_rr(name: str, ip: str) -> RR:
    return (name, T_AAAA, AAAA(ip)) if ":" in ip else (name, T_A, A(ip))


ServiceKey = tuple[str, str]  # (namespace, service name)


class ClusterZone:
    """All records of one cluster zone, updated incrementally, answered by :meth:`lookup`."""

    def __init__(
        self, zone: str = "cluster.local", *, ttl: int = 5, pods: str = "insecure", pod_hostnames: bool = True
    ) -> None:
        if pods not in PODS_MODES:
            raise ValueError(f"pods must be one of {', '.join(PODS_MODES)}")
        self.zone = zone.strip(".").lower() + "."
        self.ttl = ttl
        self.pods_mode = pods
        # Names of pods with hostname + subdomain, from the Pods themselves: for records files. A cluster's
        # endpoints controller puts them in the EndpointSlices (ready pods only), as CoreDNS reads them.
        self.pod_hostnames = pod_hostnames
        self.services: dict[ServiceKey, Service] = {}
        self.endpoints: dict[ServiceKey, dict[str, EndpointSet]] = {}
        self.pods: dict[tuple[str, str], Pod] = {}
        self._pods_by_subdomain: dict[ServiceKey, set[tuple[str, str]]] = {}
        self._pod_ips: dict[str, Counter[str]] = {}  # namespace -> addresses of its pods
        self._records: dict[str, dict[ServiceKey, list[tuple[int, Any]]]] = {}
        self._contrib: dict[ServiceKey, list[tuple[str, int, Any]]] = {}
        self._ents: Counter[str] = Counter()  # empty non-terminals (ancestors of names with records)
        self._ptr: dict[str, dict[ServiceKey, list[str]]] = {}
        self._ptr_contrib: dict[ServiceKey, list[tuple[str, str]]] = {}
        self.generation = 0  # bumped on every change: compiled answers of older generations are stale
        apex = self.zone
        self.soa: RR = (
            apex,
            T_SOA,
            SOA(f"ns.dns.{apex}", f"hostmaster.{apex}", (1, 7200, 1800, 86400, ttl)),
        )
        self._static: dict[str, dict[int, list[Any]]] = {
            apex: {T_SOA: [self.soa[2]], T_NS: [NS(f"ns.dns.{apex}")]},
            f"dns-version.{apex}": {T_TXT: [TXT(SPEC_VERSION)]},
            f"svc.{apex}": {},
            f"pod.{apex}": {},
        }
        for name in self._static:
            self._add_ents(name)

    # -- changes ---------------------------------------------------------------------------------------
    def set_service(self, svc: Service) -> None:
        key = (svc.namespace, svc.name)
        self.services[key] = svc
        self._rebuild(key)

    def delete_service(self, namespace: str, name: str) -> None:
        if self.services.pop((namespace, name), None) is not None:
            self._rebuild((namespace, name))

    def set_endpoints(self, slice_id: str, eps: EndpointSet | None) -> None:
        """Add or replace one EndpointSlice (``slice_id`` = its namespace/name); None removes it."""
        touched = set()
        for key, slices in list(self.endpoints.items()):
            if slice_id in slices and (eps is None or key != (eps.namespace, eps.service)):
                del slices[slice_id]
                if not slices:
                    del self.endpoints[key]
                touched.add(key)
        if eps is not None:
            key = (eps.namespace, eps.service)
            self.endpoints.setdefault(key, {})[slice_id] = eps
            touched.add(key)
        for key in touched:
            self._rebuild(key)

    def set_pod(self, pod: Pod) -> None:
        self.delete_pod(pod.namespace, pod.name)
        self.pods[(pod.namespace, pod.name)] = pod
        self._pod_ips.setdefault(pod.namespace, Counter()).update(pod.ips)
        if pod.hostname and pod.subdomain and self.pod_hostnames:
            key = (pod.namespace, pod.subdomain)
            self._pods_by_subdomain.setdefault(key, set()).add((pod.namespace, pod.name))
            self._rebuild(key)
        self.generation += 1

    def delete_pod(self, namespace: str, name: str) -> None:
        pod = self.pods.pop((namespace, name), None)
        if pod is None:
            return
        ips = self._pod_ips.get(namespace)
        if ips is not None:
            ips.subtract(pod.ips)
            for ip in pod.ips:
                if ips[ip] <= 0:
                    del ips[ip]
        if pod.hostname and pod.subdomain and self.pod_hostnames:
            key = (namespace, pod.subdomain)
            self._pods_by_subdomain.get(key, set()).discard((namespace, name))
            self._rebuild(key)
        self.generation += 1

    # -- records of one service ------------------------------------------------------------------------
    def _service_records(self, key: ServiceKey) -> tuple[list[tuple[str, int, Any]], list[tuple[str, str]]]:
        svc = self.services.get(key)
        if svc is None:
            return [], []
        base = f"{svc.name}.{svc.namespace}.svc.{self.zone}".lower()
        recs: list[tuple[str, int, Any]] = []
        ptrs: list[tuple[str, str]] = []
        if svc.kind == "ExternalName":
            if svc.external_name:
                recs.append((base, T_CNAME, CNAME(svc.external_name + ".")))
            return recs, ptrs
        if svc.kind == "ClusterIP":
            for ip in svc.ips:
                recs.append(_addr_rr(base, ip))
                ptrs.append((reverse_name(ip), base))
            named = [p for p in svc.ports if p.name]
            for p in named:
                recs.append(
                    (f"_{p.name}._{p.protocol.lower()}.{base}".lower(), T_SRV, SRV(0, 100, p.port, base))
                )
            if key == ("kube-system", "kube-dns"):
                for ip in svc.ips:
                    recs.append(_addr_rr(f"ns.dns.{self.zone}", ip))
            return recs, ptrs
        # headless: ready endpoints (several slices may list one address: keep the first)
        hosts: dict[str, list[str]] = {}
        srv: dict[str, list[tuple[int, str]]] = {}
        seen_ips: set[str] = set()
        for eps in self.endpoints.get(key, {}).values():
            for ep in eps.endpoints:
                if not ep.ready or not ep.addresses:
                    continue
                for ip in ep.addresses:
                    host = (ep.hostname or dashed(ip)).lower()
                    name = f"{host}.{base}"
                    if ip not in seen_ips:
                        seen_ips.add(ip)
                        recs.append(_addr_rr(base, ip))
                        ptrs.append((reverse_name(ip), name))
                    if ip not in hosts.setdefault(name, []):
                        hosts[name].append(ip)
                for p in eps.ports:
                    if p.name:
                        owner = f"_{p.name}._{p.protocol.lower()}.{base}".lower()
                        host = (ep.hostname or dashed(ep.addresses[0])).lower()
                        target = f"{host}.{base}"
                        if (p.port, target) not in srv.setdefault(owner, []):
                            srv[owner].append((p.port, target))
        for pod_key in sorted(self._pods_by_subdomain.get(key, ())):
            pod = self.pods.get(pod_key)
            if pod is None or not pod.ips:
                continue
            name = f"{pod.hostname.lower()}.{base}"
            for ip in pod.ips:
                if ip not in hosts.setdefault(name, []):
                    hosts[name].append(ip)
        for name, ips in hosts.items():
            recs.extend(_addr_rr(name, ip) for ip in ips)
        for owner, targets in srv.items():
            weight = 100 // len(targets)
            recs.extend((owner, T_SRV, SRV(0, weight, port, target)) for port, target in targets)
        return recs, ptrs

    def _rebuild(self, key: ServiceKey) -> None:
        for name, _, _ in self._contrib.pop(key, []):
            owners = self._records.get(name)
            if owners is not None and owners.pop(key, None) is not None and not owners:
                del self._records[name]
                self._drop_ents(name)
        for rev, _ in self._ptr_contrib.pop(key, []):
            owners_ptr = self._ptr.get(rev)
            if owners_ptr is not None:
                owners_ptr.pop(key, None)
                if not owners_ptr:
                    del self._ptr[rev]
        recs, ptrs = self._service_records(key)
        for name, rtype, rdata in recs:
            owners = self._records.setdefault(name, {})
            if not owners:
                self._add_ents(name)
            owners.setdefault(key, []).append((rtype, rdata))
        if recs:
            self._contrib[key] = recs
        for rev, target in ptrs:
            self._ptr.setdefault(rev, {}).setdefault(key, []).append(target)
        if ptrs:
            self._ptr_contrib[key] = ptrs
        self.generation += 1

    def _ancestors(self, name: str) -> Iterable[str]:
        zone = self.zone
        while name != zone and name.endswith("." + zone):
            name = name.split(".", 1)[1]
            yield name

    def _add_ents(self, name: str) -> None:
        for a in self._ancestors(name):
            self._ents[a] += 1

    def _drop_ents(self, name: str) -> None:
        for a in self._ancestors(name):
            self._ents[a] -= 1
            if self._ents[a] <= 0:
                del self._ents[a]

    # -- answers ---------------------------------------------------------------------------------------
    def in_zone(self, name: str) -> bool:
        return name == self.zone or name.endswith("." + self.zone)

    def _rrsets(self, name: str) -> dict[int, list[Any]]:
        out: dict[int, list[Any]] = {}
        static = self._static.get(name)
        if static is not None:
            for t, rds in static.items():
                out.setdefault(t, []).extend(rds)
        for recs in self._records.get(name, {}).values():
            for t, rd in recs:
                out.setdefault(t, []).append(rd)
        return out

    def _pod_rrsets(self, name: str) -> dict[int, list[Any]] | None:
        """``<a-b-c-d>.<ns>.pod.<zone>``: records by the pods mode; None when the name is not one."""
        suffix = ".pod." + self.zone
        if not name.endswith(suffix):
            return None
        labels = name[: -len(suffix)].split(".")
        if len(labels) != 2 or self.pods_mode == "disabled":
            return {} if len(labels) == 1 and self.pods_mode != "disabled" else None
        ip = _undash(labels[0])
        if ip is None:
            return None
        if self.pods_mode == "verified" and ip not in self._pod_ips.get(labels[1], ()):
            return None
        return {T_AAAA if ":" in ip else T_A: [AAAA(ip) if ":" in ip else A(ip)]}

    def exists(self, name: str) -> bool:
        return name in self._records or name in self._static or name in self._ents

    def lookup(self, name: str, qtype: int) -> Answer:
        """Answer a question for a name in the zone (``name`` lower-case, absolute, with the final dot)."""
        rrsets = self._rrsets(name)
        if not rrsets:
            pod = self._pod_rrsets(name)
            if pod is not None:
                rrsets = pod
            elif not self.exists(name):
                return Answer(RCODE.NXDOMAIN, authority=[self.soa])
        cname = rrsets.get(T_CNAME)
        if cname and qtype != T_CNAME:
            return Answer(RCODE.NOERROR, answer=[(name, T_CNAME, rd) for rd in cname])
        if qtype == T_ANY:
            answer = [(name, t, rd) for t, rds in rrsets.items() for rd in rds]
        else:
            answer = [(name, qtype, rd) for rd in rrsets.get(qtype, ())]
        if not answer:
            return Answer(RCODE.NOERROR, authority=[self.soa])
        additional: list[RR] = []
        for _, t, rd in answer:
            target = None
            if t == T_SRV:
                target = str(rd.target).lower()
            elif t == T_NS:
                target = str(rd.label).lower()
            if target is not None:
                for at in (T_A, T_AAAA):
                    additional.extend((target, at, ard) for ard in self._rrsets(target).get(at, ()))
        return Answer(RCODE.NOERROR, answer=answer, additional=additional)

    def lookup_ptr(self, name: str) -> Answer | None:
        """A reverse name of a service or endpoint address; None when it is not one of ours."""
        owners = self._ptr.get(name)
        if not owners:
            return None
        targets: list[str] = []
        for ts in owners.values():
            targets.extend(t for t in ts if t not in targets)
        return Answer(RCODE.NOERROR, answer=[(name, T_PTR, PTR(t)) for t in targets])

    def stats(self) -> dict[str, int]:
        return {
            "services": len(self.services),
            "pods": len(self.pods),
            "names": len(self._records),
            "reverse_names": len(self._ptr),
        }
