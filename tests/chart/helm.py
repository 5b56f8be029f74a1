"""Render and lint ``charts/kubeobs`` offline with Helm's Go SDK (``helm-python-sdk``); no ``helm`` binary.

:func:`render` returns the manifests as parsed objects. ``kube_version`` and ``api_versions`` set what the
templates see in ``.Capabilities`` (like ``helm template --kube-version --api-versions``); the wrapper's
public ``Chart.render`` does not expose those options yet, so this calls the same native ``helm_render``
entry point with them. As with ``helm template``, Helm's built-in API list is always included, which is why
the chart also checks ``.Capabilities.KubeVersion`` before it picks a newer API version.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python
import yaml
from helm_python import _native

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubeobs"
RELEASE = "kubeobs"
NAMESPACE = "kubeobs-system"

# Every optional feature on (the monitoring objects also need the monitoring.coreos.com/v1 capability).
ALL_FEATURES: dict[str, Any] = {
    "elasticsearch": {
        "hosts": ["https://es-0.logging:9200", "https://es-1.logging:9200"],
        "index": "k8s-%Y.%m.%d",
        "auth": {"type": "basic", "existingSecret": "es-credentials"},
        "tls": {"caSecret": "es-ca", "caKey": "ca.pem"},
    },
    "collector": {
        "hostNetwork": True,
        "hostPaths": {"dockerContainers": "/var/lib/docker/containers"},
        "extraConfig": {"kubernetes": {"annotations": ["team"]}},
    },
    "dns": {
        "pods": "verified",
        "upstream": ["192.0.2.53", "[2001:db8::53]:53"],
        "service": {"clusterIP": "10.96.0.10"},
        "hpa": {"enabled": True, "minReplicas": 2, "maxReplicas": 6},
        "podAntiAffinity": "hard",
        "containerPort": 53,
        "extraConfig": {"cache": {"capacity": 20000}},
    },
    "networkPolicy": {
        "enabled": True,
        "apiserver": {"cidrs": ["10.0.0.1/32"], "ports": [6443]},
        "elasticsearch": {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [9200]},
        "metricsFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
    },
    "prometheus": {"monitors": {"labels": {"release": "prom"}}, "rules": {"labels": {"release": "prom"}}},
}
MONITORING_API = "monitoring.coreos.com/v1"


@dataclass
class Rendered:
    """The chart's output: objects in template order, and NOTES.txt."""

    objects: list[dict[str, Any]]
    release: str = RELEASE
    notes: str = ""
    by_template: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def fullname(self) -> str:
        """The chart's name prefix: the release name if it contains "kubeobs", else ``<release>-kubeobs``."""
        return self.release if "kubeobs" in self.release else f"{self.release}-kubeobs"

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)

    def get(self, kind: str, suffix: str | None = None) -> dict[str, Any]:
        """The one object of ``kind``, or of ``kind`` named ``<fullname><suffix>`` (e.g. ``kubeobs-dns``)."""
        found = [
            o for o in self.of(kind) if suffix is None or o["metadata"]["name"] == self.fullname + suffix
        ]
        assert len(found) == 1, f"expected one {kind} *{suffix}, got {[o['metadata']['name'] for o in found]}"
        return found[0]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]


def render(
    values: dict[str, Any] | None = None,
    *,
    chart: Path = CHART,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    kube_version: str | None = None,
    api_versions: Iterable[str] = (),
) -> Rendered:
    """Render like ``helm template`` (an install); raises ``helm_python.HelmError`` subclasses."""
    loaded = helm_python.Chart.load(chart)
    opts: dict[str, Any] = {"name": release, "namespace": namespace, "is_install": True}
    if kube_version is not None:
        opts["kube_version"] = kube_version
    if api_versions:
        opts["api_versions"] = list(api_versions)
    try:
        raw = _native.call_string("helm_render", loaded._raw(), json.dumps(values or {}), json.dumps(opts))
    finally:
        loaded.close()
    manifests: dict[str, str] = json.loads(raw)
    out = Rendered(objects=[], release=release)
    for path in sorted(manifests):
        if path.endswith("NOTES.txt"):
            out.notes = manifests[path]
            continue
        docs = [d for d in yaml.safe_load_all(manifests[path]) if d]
        out.by_template[path.removeprefix(f"{chart.name}/")] = docs
        out.objects.extend(docs)
    return out


def containers(workload: dict[str, Any], *, init: bool = True) -> list[dict[str, Any]]:
    spec = workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]
    return [*(spec.get("initContainers", []) if init else []), *spec["containers"]]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = (
        workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]
    )
    return spec
