"""The chart on a real kube-apiserver v1.20.2 (``kube_cluster``): rendered for the API versions that server
serves, applied with ``kubectl apply --server-side``, and its RBAC checked with ``kubectl auth can-i`` as
the chart's service accounts: allowed exactly what is listed, denied the rest."""

from __future__ import annotations

import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.chart.helm import ALL_FEATURES, Rendered, render
from tests.support.kube.apiserver import KubeCluster


@dataclass(frozen=True)
class Capabilities:
    kube_version: str
    api_versions: list[str]


@dataclass(frozen=True)
class Installed:
    namespace: str
    rendered: Rendered
    live: list[dict[str, Any]]


def kubectl(cluster: KubeCluster, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", f"--kubeconfig={cluster.kubeconfig}", "--request-timeout=20s", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def kubectl_ok(cluster: KubeCluster, *args: str, stdin: str | None = None) -> str:
    result = kubectl(cluster, *args, stdin=stdin)
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def capabilities(kube_cluster: KubeCluster) -> Capabilities:
    """What `helm install` would see in .Capabilities on this cluster."""
    versions = kubectl_ok(kube_cluster, "api-versions").split()
    server = json.loads(kubectl_ok(kube_cluster, "version", "-o", "json"))["serverVersion"]["gitVersion"]
    return Capabilities(kube_version=server, api_versions=versions)


def install(cluster: KubeCluster, caps: Capabilities, values: dict[str, Any], release: str) -> Installed:
    namespace = f"chart-{release}"
    rendered = render(
        values,
        release=release,
        namespace=namespace,
        kube_version=caps.kube_version,
        api_versions=caps.api_versions,
    )
    manifest = yaml.safe_dump_all(rendered.objects)
    kubectl_ok(cluster, "create", "namespace", namespace)
    kubectl_ok(cluster, "apply", "--server-side", "--field-manager=helm", "-f", "-", stdin=manifest)
    live = json.loads(kubectl_ok(cluster, "get", "-f", "-", "-o", "json", stdin=manifest))["items"]
    return Installed(namespace=namespace, rendered=rendered, live=live)


@pytest.fixture(scope="module")
def everything(kube_cluster: KubeCluster, capabilities: Capabilities) -> Installed:
    """Every option the cluster can take (no Prometheus Operator there), DNS pods mode `verified`."""
    return install(kube_cluster, capabilities, ALL_FEATURES, "kubeobs")


@pytest.fixture(scope="module")
def defaults(kube_cluster: KubeCluster, capabilities: Capabilities) -> Installed:
    return install(kube_cluster, capabilities, {}, "plain")


def test_cluster_is_1_20(capabilities: Capabilities) -> None:
    assert capabilities.kube_version == "v1.20.2"
    assert "policy/v1" not in capabilities.api_versions
    assert "autoscaling/v2" not in capabilities.api_versions


def test_everything_applies(everything: Installed) -> None:
    rendered = everything.rendered
    assert rendered.get("PodDisruptionBudget")["apiVersion"] == "policy/v1beta1"
    assert rendered.get("HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2beta2"
    assert not {"ServiceMonitor", "PodMonitor", "PrometheusRule"} & set(rendered.kinds())
    live = {(o["kind"], o["metadata"]["name"]) for o in everything.live}
    assert live == {(o["kind"], o["metadata"]["name"]) for o in rendered.objects}
    for obj in everything.live:
        if obj["kind"] == "Service" and obj["metadata"]["name"] == "kubeobs-dns":
            assert obj["spec"]["clusterIP"] == "10.96.0.10"
            assert {(p["protocol"], p["port"]) for p in obj["spec"]["ports"]} >= {("UDP", 53), ("TCP", 53)}
        if obj["kind"] == "DaemonSet":
            # the apiserver resolved the priority class (admission) and kept the hostPath mounts read-only
            pod = obj["spec"]["template"]["spec"]
            assert pod["priorityClassName"] == "system-node-critical"
            ro = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if m.get("readOnly")}
            assert {"/var/log/containers", "/var/log/pods", "/host/proc", "/host/sys", "/host/root"} <= ro


def test_defaults_apply(defaults: Installed) -> None:
    live = {(o["kind"], o["metadata"]["name"]) for o in defaults.live}
    assert ("DaemonSet", "plain-kubeobs-collector") in live
    assert ("Deployment", "plain-kubeobs-dns") in live
    assert ("PodDisruptionBudget", "plain-kubeobs-dns") in live


# -- RBAC: `kubectl auth can-i` as each service account -----------------------------------------------

READ = ("get", "list", "watch")
WRITE = ("create", "update", "patch", "delete")
ALWAYS_DENIED = [
    *((v, "secrets") for v in ("get", "list", "watch")),
    *((v, "configmaps") for v in ("get", "list", "create")),
    ("create", "pods/exec"),
    ("get", "pods/log"),
    ("create", "pods/eviction"),
    *((v, "nodes") for v in ("get", "list", "patch")),
    ("get", "nodes/proxy"),
    ("list", "deployments.apps"),
    ("list", "daemonsets.apps"),
    ("create", "serviceaccounts/token"),
    ("bind", "clusterroles.rbac.authorization.k8s.io"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("impersonate", "users"),
    ("impersonate", "serviceaccounts"),
    ("create", "namespaces"),
    ("delete", "namespaces"),
    ("*", "*"),
]
COLLECTOR_ALLOWED = [(v, r) for r in ("pods", "namespaces") for v in READ]
COLLECTOR_DENIED = [
    *ALWAYS_DENIED,
    *((v, "pods") for v in WRITE),
    *((v, "services") for v in ("get", "list", "watch")),
    ("list", "endpoints"),
    ("list", "endpointslices.discovery.k8s.io"),
]
DNS_RESOURCES = ("services", "endpoints", "namespaces", "endpointslices.discovery.k8s.io")
DNS_ALLOWED = [(v, r) for r in DNS_RESOURCES for v in ("list", "watch")]
DNS_DENIED = [
    *ALWAYS_DENIED,
    *(("get", r) for r in DNS_RESOURCES),  # list/watch only
    *((v, r) for r in DNS_RESOURCES for v in WRITE),
    *((v, "pods") for v in WRITE),
    ("get", "pods"),
]


def can_i(cluster: KubeCluster, namespace: str, account: str, verb: str, resource: str, where: str) -> bool:
    """`kubectl auth can-i` as the service account (with the groups its token would carry)."""
    scope = ["--all-namespaces"] if where == "cluster" else ["-n", where]
    # `can-i VERB pods/exec` would mean the pod named "exec": subresources go in --subresource
    resource, _, subresource = resource.partition("/")
    result = kubectl(
        cluster,
        "auth",
        "can-i",
        verb,
        resource,
        *([f"--subresource={subresource}"] if subresource else []),
        *scope,
        f"--as=system:serviceaccount:{namespace}:{account}",
        "--as-group=system:serviceaccounts",
        f"--as-group=system:serviceaccounts:{namespace}",
        "--as-group=system:authenticated",
    )
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    return result.stdout.strip() == "yes"


def check_table(
    cluster: KubeCluster,
    installed: Installed,
    account: str,
    allowed: list[tuple[str, str]],
    denied: list[tuple[str, str]],
) -> None:
    # allowed: cluster-wide (so in every namespace); denied: in the release's namespace, which a
    # ClusterRoleBinding or a RoleBinding there would both open
    cases = [(v, r, where, True) for v, r in allowed for where in ("cluster", "default")]
    cases += [(v, r, installed.namespace, False) for v, r in denied]
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(
            pool.map(lambda c: can_i(cluster, installed.namespace, account, c[0], c[1], c[2]), cases)
        )
    wrong = [
        f"{v} {r} in {where}: expected {'yes' if want else 'no'}"
        for (v, r, where, want), got in zip(cases, answers, strict=True)
        if got != want
    ]
    assert wrong == [], f"{account}: {wrong}"


def test_collector_rbac(kube_cluster: KubeCluster, everything: Installed) -> None:
    check_table(kube_cluster, everything, "kubeobs-collector", COLLECTOR_ALLOWED, COLLECTOR_DENIED)


def test_dns_rbac_verified_pods(kube_cluster: KubeCluster, everything: Installed) -> None:
    allowed = [*DNS_ALLOWED, ("list", "pods"), ("watch", "pods")]
    check_table(kube_cluster, everything, "kubeobs-dns", allowed, DNS_DENIED)


def test_dns_rbac_without_verified_pods(kube_cluster: KubeCluster, defaults: Installed) -> None:
    denied = [*DNS_DENIED, ("list", "pods"), ("watch", "pods")]
    check_table(kube_cluster, defaults, "plain-kubeobs-dns", DNS_ALLOWED, denied)


def rules_of(cluster: KubeCluster, installed: Installed, account: str) -> set[tuple[str, str]]:
    """`kubectl auth can-i --list`: the (resource, verbs) rows, less what every authenticated user has."""
    out = kubectl_ok(
        cluster,
        "auth",
        "can-i",
        "--list",
        "-n",
        installed.namespace,
        f"--as=system:serviceaccount:{installed.namespace}:{account}",
        "--as-group=system:serviceaccounts",
        "--as-group=system:authenticated",
    )
    rows = set()
    for line in out.splitlines()[1:]:
        m = re.match(r"^(\S+)\s+\[\]\s+\[\]\s+\[(.*)\]$", line)
        if m and not m.group(1).startswith("selfsubject"):
            rows.add((m.group(1), m.group(2)))
    return rows


def test_nothing_else_is_granted(
    kube_cluster: KubeCluster, everything: Installed, defaults: Installed
) -> None:
    assert rules_of(kube_cluster, everything, "kubeobs-collector") == {
        ("pods", "get list watch"),
        ("namespaces", "get list watch"),
    }
    dns = {(r, "list watch") for r in DNS_RESOURCES}
    assert rules_of(kube_cluster, everything, "kubeobs-dns") == dns | {("pods", "list watch")}
    assert rules_of(kube_cluster, defaults, "plain-kubeobs-dns") == dns
