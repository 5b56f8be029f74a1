"""Kubernetes objects (raw JSON dicts, as the apiserver or a records file gives them) to the DNS model.

Pure functions, no I/O. What the DNS server needs of each kind:

- ``Service`` (v1): type, cluster IPs (``spec.clusterIPs``, else ``spec.clusterIP``; ``None`` = headless),
  ports, ``externalName``.
- ``EndpointSlice`` (``discovery.k8s.io/v1`` and ``v1beta1``): the service it belongs to (label
  ``kubernetes.io/service-name``), ready addresses with their hostname, ports.
- ``Endpoints`` (core v1, the fallback for apiservers without EndpointSlices): ready ``addresses`` (not
  ``notReadyAddresses``), ports.
- ``Pod`` (v1): IPs, ``spec.hostname``, ``spec.subdomain``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True, slots=True)
class Port:
    name: str
    port: int
    protocol: str  # TCP | UDP | SCTP


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    kind: str  # "ClusterIP" (also NodePort/LoadBalancer) | "Headless" | "ExternalName"
    ips: tuple[str, ...]
    ports: tuple[Port, ...]
    external_name: str = ""


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...]
    hostname: str  # "" when the endpoint has none
    ready: bool


@dataclass(frozen=True, slots=True)
class EndpointSet:
    """One EndpointSlice (or one Endpoints subset) of a service."""

    namespace: str
    service: str
    endpoints: tuple[Endpoint, ...]
    ports: tuple[Port, ...]


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    ips: tuple[str, ...]
    hostname: str
    subdomain: str


class ObjectError(ValueError):
    """An object that cannot be read (a records file's mistake, never an apiserver's)."""


def _meta(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ObjectError(f"{obj.get('kind', 'object')} without metadata.name")
    return str(meta.get("namespace") or "default"), name


def _valid_ip(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _ports(items: Iterable[Mapping[str, Any]] | None) -> tuple[Port, ...]:
    out = []
    for p in items or ():
        port = p.get("port")
        if not isinstance(port, int):
            continue
        out.append(Port(str(p.get("name") or ""), port, str(p.get("protocol") or "TCP").upper()))
    return tuple(out)


def service_from(obj: Mapping[str, Any]) -> Service:
    ns, name = _meta(obj)
    spec = obj.get("spec") or {}
    ports = _ports(spec.get("ports"))
    if spec.get("type") == "ExternalName":
        target = str(spec.get("externalName") or "").rstrip(".").lower()
        return Service(ns, name, "ExternalName", (), ports, target)
    raw = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    if not raw or raw[0] in ("None", None):
        return Service(ns, name, "Headless", (), ports)
    ips = tuple(ip for ip in (_valid_ip(v) for v in raw) if ip is not None)
    return Service(ns, name, "ClusterIP", ips, ports)


def endpoint_slice_from(obj: Mapping[str, Any]) -> EndpointSet | None:
    """v1 and v1beta1 slices; None for a slice that belongs to no service. FQDN slices are skipped."""
    ns, _ = _meta(obj)
    labels = (obj.get("metadata") or {}).get("labels") or {}
    service = labels.get(SERVICE_NAME_LABEL)
    if not service or obj.get("addressType") == "FQDN":
        return None
    endpoints = []
    for ep in obj.get("endpoints") or ():
        addrs = tuple(ip for ip in (_valid_ip(a) for a in ep.get("addresses") or ()) if ip is not None)
        ready = (ep.get("conditions") or {}).get("ready")
        # "ready: null" means ready (unknown state should be treated as ready, per the API docs)
        endpoints.append(Endpoint(addrs, str(ep.get("hostname") or ""), ready is not False))
    return EndpointSet(ns, str(service), tuple(endpoints), _ports(obj.get("ports")))


def endpoints_from(obj: Mapping[str, Any]) -> list[EndpointSet]:
    """Core v1 Endpoints: one set per subset."""
    ns, name = _meta(obj)
    out = []
    for subset in obj.get("subsets") or ():
        eps = []
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            for a in subset.get(key) or ():
                ip = _valid_ip(a.get("ip"))
                if ip is not None:
                    eps.append(Endpoint((ip,), str(a.get("hostname") or ""), ready))
        out.append(EndpointSet(ns, name, tuple(eps), _ports(subset.get("ports"))))
    return out


def pod_from(obj: Mapping[str, Any]) -> Pod:
    ns, name = _meta(obj)
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    raw = [p.get("ip") for p in status.get("podIPs") or ()] or (
        [status["podIP"]] if status.get("podIP") else []
    )
    ips = tuple(ip for ip in (_valid_ip(v) for v in raw) if ip is not None)
    return Pod(ns, name, ips, str(spec.get("hostname") or ""), str(spec.get("subdomain") or ""))


def flatten(documents: Iterable[Any]) -> list[Mapping[str, Any]]:
    """Objects of a records file: YAML documents, each an object or a ``kind: List`` of them."""
    out: list[Mapping[str, Any]] = []
    for doc in documents:
        if doc is None:
            continue
        if not isinstance(doc, Mapping):
            raise ObjectError(f"expected a Kubernetes object, got {type(doc).__name__}")
        if str(doc.get("kind", "")).endswith("List") and "items" in doc:
            out.extend(flatten(doc.get("items") or ()))
        else:
            out.append(doc)
    return out
