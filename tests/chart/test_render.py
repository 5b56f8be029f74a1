"""The chart offline: lint, what it renders by default and with every option, Kubernetes schema validity."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from collector.config import parse_config as parse_collector_config
from dnsserver.config import load_config as load_dns_config
from tests.chart.helm import (
    ALL_FEATURES,
    CHART,
    MONITORING_API,
    NAMESPACE,
    Rendered,
    containers,
    pod_spec,
    render,
)

# Prometheus Operator kinds: custom resources, for which kubernetes-validate ships no schema.
CRD_KINDS = frozenset({"ServiceMonitor", "PodMonitor", "PrometheusRule"})
OLDEST_SCHEMA = "1.25.0"
NEWEST_SCHEMA = kubernetes_validate.latest_version()


@pytest.fixture(scope="module")
def default() -> Rendered:
    return render()


@pytest.fixture(scope="module")
def everything() -> Rendered:
    return render(ALL_FEATURES, api_versions=[MONITORING_API])


def test_lint_strict_is_clean() -> None:
    for values in ({}, ALL_FEATURES):
        report = helm_python.lint(CHART, values, strict=True, namespace=NAMESPACE)
        problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
        assert report["errors"] == [] and problems == [], report


def _is_dashboard(obj: dict[str, Any]) -> bool:
    return obj["metadata"]["labels"].get("app.kubernetes.io/component") == "dashboards"


def test_default_objects(default: Rendered) -> None:
    kinds = sorted(o["kind"] for o in default.objects if not _is_dashboard(o))
    dashboards = [o for o in default.objects if _is_dashboard(o)]
    assert len(dashboards) == len(list((CHART / "dashboards").glob("*.json")))
    per_component = ["ConfigMap", "Service", "ClusterRole", "ClusterRoleBinding", "ServiceAccount"]
    expected = [*per_component, "DaemonSet", *per_component, "Deployment", "PodDisruptionBudget", "Pod"]
    assert kinds == sorted(expected)
    assert default.get("PodDisruptionBudget")["apiVersion"] == "policy/v1"
    assert default.get("Pod")["metadata"]["annotations"]["helm.sh/hook"] == "test"
    # two service accounts, one per component
    assert {sa["metadata"]["name"] for sa in default.of("ServiceAccount")} == {
        "kubeobs-collector",
        "kubeobs-dns",
    }


def test_all_features_objects(everything: Rendered) -> None:
    kinds = everything.kinds()
    for kind in ("HorizontalPodAutoscaler", "NetworkPolicy", *CRD_KINDS):
        assert kind in kinds
    assert everything.get("HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2"
    assert len(everything.of("NetworkPolicy")) == 2
    # the HPA owns the replica count
    assert "replicas" not in everything.get("Deployment")["spec"]


def test_monitoring_objects_need_the_operator_api() -> None:
    without = render(ALL_FEATURES)
    assert not CRD_KINDS & set(without.kinds())
    assert "alerts.yaml" in without.notes


@pytest.mark.parametrize("version", [OLDEST_SCHEMA, NEWEST_SCHEMA])
@pytest.mark.parametrize("case", ["default", "everything"])
def test_valid_kubernetes_objects(case: str, version: str, request: pytest.FixtureRequest) -> None:
    rendered: Rendered = request.getfixturevalue(case)
    checked = 0
    for obj in rendered.objects:
        if obj["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)  # raises on any error
        checked += 1
    assert checked == len(rendered.objects) - len([o for o in rendered.objects if o["kind"] in CRD_KINDS])
    assert checked >= 14


def test_api_versions_follow_the_cluster() -> None:
    """A 1.20 apiserver serves policy/v1beta1 and autoscaling/v2beta2 only; 1.25+ the GA versions."""
    old = render(ALL_FEATURES, kube_version="v1.20.2", api_versions=["policy/v1beta1", "autoscaling/v2beta2"])
    assert old.get("PodDisruptionBudget")["apiVersion"] == "policy/v1beta1"
    assert old.get("HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2beta2"
    new = render(ALL_FEATURES, kube_version="v1.25.0")
    assert new.get("PodDisruptionBudget")["apiVersion"] == "policy/v1"
    assert new.get("HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2"


# -- collector ----------------------------------------------------------------------------------------


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container["volumeMounts"]}


def test_collector_daemonset(default: Rendered) -> None:
    ds = default.get("DaemonSet")
    spec = pod_spec(ds)
    (main,) = containers(ds, init=False)
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["serviceAccountName"] == "kubeobs-collector"
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    assert _env(main)["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert main["args"] == ["collector", "--config", "/etc/kubeobs/collector.yaml"]
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert set(main["resources"]) == {"requests", "limits"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = _mounts(main)
    for path, host, writable in [
        ("/var/log/containers", "/var/log/containers", False),
        ("/var/log/pods", "/var/log/pods", False),
        ("/var/lib/kubeobs", "/var/lib/kubeobs", True),
        ("/host/proc", "/proc", False),
        ("/host/sys", "/sys", False),
        ("/host/root", "/", False),
    ]:
        mount = mounts[path]
        assert volumes[mount["name"]]["hostPath"]["path"] == host
        assert mount.get("readOnly", False) is not writable, path
    assert default.get("Service", "-collector")["spec"]["clusterIP"] == "None"
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "2021"


def _collector_config(rendered: Rendered, env: dict[str, str]) -> dict[str, Any]:
    from collector.config import expand_env

    text = rendered.get("ConfigMap", "-collector")["data"]["collector.yaml"]
    loaded: dict[str, Any] = yaml.safe_load(expand_env(text, env))
    return loaded


def test_collector_config_is_accepted_by_the_collector(default: Rendered) -> None:
    cfg = parse_collector_config(_collector_config(default, {"NODE_NAME": "node-a"}))
    assert cfg.node_name == "node-a"
    assert cfg.sink.type == "elasticsearch"
    assert cfg.sink.hosts == ["http://elasticsearch-master:9200"]
    assert cfg.kubernetes is not None and cfg.kubernetes.kubeconfig is None  # in-cluster
    m = cfg.metrics
    assert (m.listen, m.procfs, m.sysfs, m.rootfs) == (
        "0.0.0.0:2021",
        "/host/proc",
        "/host/sys",
        "/host/root",
    )
    assert m.cgroupfs == "/host/sys/fs/cgroup"


def test_collector_credentials_and_ca(everything: Rendered, tmp_path: Path) -> None:
    ds = everything.get("DaemonSet")
    (main,) = containers(ds, init=False)
    env = _env(main)
    assert env["ES_USERNAME"]["valueFrom"] == {"secretKeyRef": {"name": "es-credentials", "key": "username"}}
    assert env["ES_PASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": "es-credentials", "key": "password"}}
    volumes = {v["name"]: v for v in pod_spec(ds)["volumes"]}
    ca_mount = _mounts(main)["/etc/kubeobs/es-ca"]
    assert ca_mount["readOnly"] is True
    assert volumes[ca_mount["name"]]["secret"]["secretName"] == "es-ca"
    raw = _collector_config(everything, {"NODE_NAME": "n", "ES_USERNAME": "shipper", "ES_PASSWORD": "s3cret"})
    assert raw["sink"]["ca_certs"] == "/etc/kubeobs/es-ca/ca.pem"
    # the collector checks the CA file exists: point it at a real one to parse the rest
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    raw["sink"]["ca_certs"] = str(tmp_path / "ca.pem")
    cfg = parse_collector_config(raw)
    assert cfg.sink.type == "elasticsearch"
    assert (cfg.sink.username, cfg.sink.password) == ("shipper", "s3cret")
    assert cfg.kubernetes is not None and cfg.kubernetes.annotations == ["team"]  # extraConfig merged
    assert pod_spec(ds)["hostNetwork"] is True and pod_spec(ds)["dnsPolicy"] == "ClusterFirstWithHostNet"


def test_collector_api_key_auth() -> None:
    r = render(
        {"elasticsearch": {"auth": {"type": "apiKey", "existingSecret": "es-key", "apiKeyKey": "key"}}}
    )
    (main,) = containers(r.get("DaemonSet"), init=False)
    assert _env(main)["ES_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "es-key", "key": "key"}}
    assert "ES_PASSWORD" not in _env(main)
    assert _collector_config(r, {"NODE_NAME": "n", "ES_API_KEY": "aWQ6a2V5"})["sink"]["api_key"] == "aWQ6a2V5"


def test_credentials_need_a_secret_name() -> None:
    with pytest.raises(helm_python.HelmError, match="existingSecret is required"):
        render({"elasticsearch": {"auth": {"type": "basic"}}})


# -- DNS -------------------------------------------------------------------------------------------------


def _dns_config(rendered: Rendered, tmp_path: Path) -> Any:
    path = tmp_path / "dns.yaml"
    path.write_text(rendered.get("ConfigMap", "-dns")["data"]["dns.yaml"])
    return load_dns_config(path, {})


def test_dns_deployment_and_service(default: Rendered, tmp_path: Path) -> None:
    dep = default.get("Deployment")
    spec = pod_spec(dep)
    (main,) = containers(dep)
    assert dep["spec"]["replicas"] == 2
    anti = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert main["args"] == ["dns", "--config", "/etc/kubeobs/dns.yaml"]
    assert main["livenessProbe"]["httpGet"]["path"] == "/health"
    assert main["readinessProbe"]["httpGet"]["path"] == "/ready"
    cfg = _dns_config(default, tmp_path)
    assert (cfg.listen, cfg.health_listen, cfg.metrics_listen) == (
        "0.0.0.0:5353",
        "0.0.0.0:8080",
        "0.0.0.0:9153",
    )
    assert cfg.kubeconfig is None and cfg.records is None  # in-cluster
    assert spec["terminationGracePeriodSeconds"] > cfg.lameduck
    svc = default.get("Service", "-dns")
    assert "clusterIP" not in svc["spec"]
    ports = {(p["protocol"], p["port"]): p["targetPort"] for p in svc["spec"]["ports"]}
    assert ports[("UDP", 53)] == "dns" and ports[("TCP", 53)] == "dns-tcp"
    container_ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert container_ports["dns"] == container_ports["dns-tcp"] == 5353
    assert "add" not in main["securityContext"]["capabilities"]  # a high port needs no capability
    assert default.get("PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_dns_all_features(everything: Rendered, tmp_path: Path) -> None:
    svc = everything.get("Service", "-dns")
    assert svc["spec"]["clusterIP"] == "10.96.0.10"
    dep = everything.get("Deployment")
    (main,) = containers(dep)
    assert main["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    anti = pod_spec(dep)["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    cfg = _dns_config(everything, tmp_path)
    assert cfg.listen == "0.0.0.0:53" and cfg.pods == "verified" and cfg.cache.capacity == 20000
    assert cfg.upstream == ["192.0.2.53:53", "[2001:db8::53]:53"]
    hpa = everything.get("HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"], hpa["scaleTargetRef"]["name"]) == (2, 6, "kubeobs-dns")


# -- RBAC, security, network policies -----------------------------------------------------------------


def _rules(rendered: Rendered, suffix: str) -> set[tuple[str, str, str]]:
    role = rendered.get("ClusterRole", suffix)
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_rbac_rules(default: Rendered, everything: Rendered) -> None:
    read = ("get", "list", "watch")
    assert _rules(default, "-collector") == {("", r, v) for r in ("pods", "namespaces") for v in read}
    dns = {("", r, v) for r in ("services", "endpoints", "namespaces") for v in ("list", "watch")}
    dns |= {("discovery.k8s.io", "endpointslices", v) for v in ("list", "watch")}
    assert _rules(default, "-dns") == dns
    assert _rules(everything, "-dns") == dns | {("", "pods", v) for v in ("list", "watch")}
    for rendered in (default, everything):
        for binding in rendered.of("ClusterRoleBinding"):
            (subject,) = binding["subjects"]
            assert subject["kind"] == "ServiceAccount" and subject["namespace"] == NAMESPACE
            assert subject["name"] == binding["roleRef"]["name"]


@pytest.mark.parametrize("case", ["default", "everything"])
def test_pods_are_locked_down(case: str, request: pytest.FixtureRequest) -> None:
    rendered: Rendered = request.getfixturevalue(case)
    workloads = [*rendered.of("DaemonSet"), *rendered.of("Deployment"), *rendered.of("Pod")]
    assert len(workloads) == 3
    for workload in workloads:
        pod = pod_spec(workload)
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["securityContext"]["runAsUser"] != 0
        for c in containers(workload):
            sc = c["securityContext"]
            where = f"{workload['metadata']['name']}/{c['name']}"
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            if c["name"] == "state-dir-owner":  # the documented exception: chown of the state hostPath
                assert sc["runAsUser"] == 0 and sc["capabilities"]["add"] == ["CHOWN"]
                assert [m["mountPath"] for m in c["volumeMounts"]] == ["/var/lib/kubeobs"]
            else:
                assert sc["runAsNonRoot"] is True, where
                assert set(sc["capabilities"].get("add", [])) <= {"NET_BIND_SERVICE"}, where
    # reading host logs: group 0 (files are 0640 root:root), documented in values.yaml
    assert pod_spec(rendered.get("DaemonSet"))["securityContext"]["supplementalGroups"] == [0]


def test_network_policies(everything: Rendered) -> None:
    collector = everything.get("NetworkPolicy", "-collector")["spec"]
    assert collector["policyTypes"] == ["Ingress", "Egress"]
    egress = collector["egress"]
    assert egress[0] == {
        "ports": [{"protocol": "TCP", "port": 9200}],
        "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
    }
    assert egress[1] == {
        "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}],
        "ports": [{"protocol": "TCP", "port": 6443}],
    }
    assert {p["port"] for p in egress[2]["ports"]} == {53}
    assert len(egress) == 3
    dns_egress = everything.get("NetworkPolicy", "-dns")["spec"]["egress"]
    cidrs = [peer["ipBlock"]["cidr"] for rule in dns_egress for peer in rule.get("to", [])]
    assert cidrs == ["10.0.0.1/32", "192.0.2.53/32", "2001:db8::53/128"]


def test_notes_explain_search_and_dns_check(default: Rendered) -> None:
    assert "kubeobs logs --backend http://elasticsearch-master:9200 --index 'logs-k8s-*'" in default.notes
    assert "nslookup kubernetes.default.svc.cluster.local kubeobs-dns.kubeobs-system.svc" in default.notes
    assert "dns.upstream is empty" in default.notes


def test_test_hook_checks_dns_and_collector(default: Rendered) -> None:
    pod = default.get("Pod")
    (test,) = containers(pod)
    script = test["args"][0]
    compile(script, "helm-test", "exec")  # valid Python after templating
    assert '"kubernetes.default.svc.cluster.local"' in script
    assert "kubeobs-dns.kubeobs-system.svc" in script
    assert "http://kubeobs-collector.kubeobs-system.svc:2021/readyz" in script


def test_image_default_is_the_app_version(default: Rendered) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    images = {
        c["image"] for w in (*default.of("DaemonSet"), *default.of("Deployment")) for c in containers(w)
    }
    assert images == {f"ghcr.io/kubeobs/kubeobs:{chart['appVersion']}"}
    assert os.path.isfile(CHART / "values.schema.json")
