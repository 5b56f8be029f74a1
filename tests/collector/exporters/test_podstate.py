"""kube-state-metrics-named pod state from pod objects: names, labels and values as kube-state-metrics v2
publishes them, Kubernetes quantities, per-pod isolation of malformed objects, and the per-pod cache."""

from __future__ import annotations

import copy
import logging
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from collector.exporters.podstate import (
    PodStateMetrics,
    cpu_cores,
    parse_quantity,
    pod_series,
    resource_unit,
    sanitize_label_name,
    whole_units,
)

NODE = "node-a"
UID = "0f6d3c2a-8e4b-4f1a-b7c9-2d3e4f5a6b7c"
BASE = {"namespace": "shop", "pod": "web-7d9c-x2x4z", "uid": UID}

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(collector: PodStateMetrics) -> Series:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def of(series: Series, metric: str) -> dict[frozenset[tuple[str, str]], float]:
    return {ls: v for (n, ls), v in series.items() if n == metric}


def labels(**extra: str) -> frozenset[tuple[str, str]]:
    return frozenset({**BASE, **extra}.items())


def web_pod() -> dict[str, Any]:
    """A running Deployment pod: two containers, one restarted after an OOM kill and now back-off waiting."""
    return {
        "metadata": {
            "namespace": "shop",
            "name": "web-7d9c-x2x4z",
            "uid": UID,
            "resourceVersion": "1001",
            "labels": {"app.kubernetes.io/name": "web", "app_kubernetes_io/name": "clash", "tier": "front"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "web-7d9c",
                    "uid": "x",
                    "controller": True,
                },
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "holder", "uid": "y"},
            ],
        },
        "spec": {
            "nodeName": NODE,
            "priorityClassName": "high",
            "containers": [
                {
                    "name": "nginx",
                    "image": "nginx:1.25",
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "64Mi", "ephemeral-storage": "1G"},
                        "limits": {
                            "cpu": "1",
                            "memory": "128Mi",
                            "nvidia.com/gpu": "1",
                            "hugepages-2Mi": "4Mi",
                        },
                    },
                },
                {"name": "sidecar", "image": "acme/sidecar:2", "resources": {"requests": {"cpu": "250u"}}},
            ],
        },
        "status": {
            "phase": "Running",
            "hostIP": "10.0.0.5",
            "podIP": "10.244.1.7",
            "startTime": "2024-05-01T10:00:00Z",
            "qosClass": "Burstable",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
            ],
            "containerStatuses": [
                {
                    "name": "nginx",
                    "image": "docker.io/library/nginx:1.25",
                    "imageID": "docker.io/library/nginx@sha256:abc",
                    "containerID": "containerd://1111",
                    "ready": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": "2024-05-01T10:00:05Z"}},
                },
                {
                    "name": "sidecar",
                    "image": "docker.io/acme/sidecar:2",
                    "imageID": "docker.io/acme/sidecar@sha256:def",
                    "containerID": "containerd://2222",
                    "ready": False,
                    "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                    "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
                },
            ],
        },
    }


def test_pod_series_names_labels_and_values() -> None:
    series = scrape(PodStateMetrics(NODE, pods=lambda: [web_pod()]))

    assert of(series, "kube_pod_info") == {
        labels(host_ip="10.0.0.5", pod_ip="10.244.1.7", node=NODE, created_by_kind="ReplicaSet",
               created_by_name="web-7d9c", priority_class="high", host_network="false"): 1.0
    }  # fmt: skip
    assert of(series, "kube_pod_owner") == {
        labels(owner_kind="ReplicaSet", owner_name="web-7d9c", owner_is_controller="true"): 1.0,
        labels(owner_kind="ConfigMap", owner_name="holder", owner_is_controller="false"): 1.0,
    }
    assert of(series, "kube_pod_labels") == {
        labels(label_app_kubernetes_io_name_conflict1="web", label_app_kubernetes_io_name_conflict2="clash",
               label_tier="front"): 1.0
    }  # fmt: skip
    assert of(series, "kube_pod_start_time") == {labels(): 1714557600.0}
    assert of(series, "kube_pod_status_phase") == {
        labels(phase=p): float(p == "Running")
        for p in ("Pending", "Succeeded", "Failed", "Unknown", "Running")
    }
    assert of(series, "kube_pod_status_ready") == {
        labels(condition="true"): 0.0,
        labels(condition="false"): 1.0,
        labels(condition="unknown"): 0.0,
    }
    assert of(series, "kube_pod_status_scheduled") == {
        labels(condition="true"): 1.0,
        labels(condition="false"): 0.0,
        labels(condition="unknown"): 0.0,
    }
    assert of(series, "kube_pod_status_qos_class") == {
        labels(qos_class="BestEffort"): 0.0,
        labels(qos_class="Burstable"): 1.0,
        labels(qos_class="Guaranteed"): 0.0,
    }
    reasons = ("Evicted", "NodeAffinity", "NodeLost", "Shutdown", "UnexpectedAdmissionError")
    assert of(series, "kube_pod_status_reason") == {labels(reason=r): 0.0 for r in reasons}

    assert of(series, "kube_pod_container_info") == {
        labels(container="nginx", image_spec="nginx:1.25", image="docker.io/library/nginx:1.25",
               image_id="docker.io/library/nginx@sha256:abc", container_id="containerd://1111"): 1.0,
        labels(container="sidecar", image_spec="acme/sidecar:2", image="docker.io/acme/sidecar:2",
               image_id="docker.io/acme/sidecar@sha256:def", container_id="containerd://2222"): 1.0,
    }  # fmt: skip
    per_container = {
        "kube_pod_container_status_restarts_total": (0.0, 4.0),
        "kube_pod_container_status_ready": (1.0, 0.0),
        "kube_pod_container_status_running": (1.0, 0.0),
        "kube_pod_container_status_waiting": (0.0, 1.0),
        "kube_pod_container_status_terminated": (0.0, 0.0),
    }
    for metric, (nginx, sidecar) in per_container.items():
        assert of(series, metric) == {
            labels(container="nginx"): nginx,
            labels(container="sidecar"): sidecar,
        }, metric
    assert of(series, "kube_pod_container_status_waiting_reason") == {
        labels(container="sidecar", reason="CrashLoopBackOff"): 1.0
    }
    assert of(series, "kube_pod_container_status_last_terminated_reason") == {
        labels(container="sidecar", reason="OOMKilled"): 1.0
    }
    assert of(series, "kube_pod_container_status_last_terminated_exitcode") == {
        labels(container="sidecar"): 137.0
    }
    assert of(series, "kube_pod_container_status_terminated_reason") == {}

    def res(container: str, resource: str, unit: str) -> frozenset[tuple[str, str]]:
        return labels(container=container, node=NODE, resource=resource, unit=unit)

    assert of(series, "kube_pod_container_resource_requests") == {
        res("nginx", "cpu", "core"): 0.1,
        res("nginx", "memory", "byte"): 67108864.0,
        res("nginx", "ephemeral_storage", "byte"): 1e9,
        res("sidecar", "cpu", "core"): 0.001,  # 250u rounded up to a millicore, as MilliValue() does
    }
    assert of(series, "kube_pod_container_resource_limits") == {
        res("nginx", "cpu", "core"): 1.0,
        res("nginx", "memory", "byte"): 134217728.0,
        res("nginx", "nvidia_com_gpu", "integer"): 1.0,
        res("nginx", "hugepages_2Mi", "byte"): 4194304.0,
    }
    assert of(series, "kubeobs_kube_state_pod_errors_total") == {
        frozenset({("reason", "pod")}): 0.0,
        frozenset({("reason", "quantity")}): 0.0,
    }


def test_a_new_pod_without_status_owner_or_labels() -> None:
    pod = {
        "metadata": {"namespace": "shop", "name": "web-7d9c-x2x4z", "uid": UID},
        "spec": {"nodeName": NODE, "hostNetwork": True, "containers": [{"name": "main", "image": "busybox"}]},
    }
    series = scrape(PodStateMetrics(NODE, pods=lambda: [pod]))
    assert of(series, "kube_pod_info") == {
        labels(host_ip="", pod_ip="", node=NODE, created_by_kind="<none>", created_by_name="<none>",
               priority_class="", host_network="true"): 1.0
    }  # fmt: skip
    assert of(series, "kube_pod_owner") == {
        labels(owner_kind="<none>", owner_name="<none>", owner_is_controller="<none>"): 1.0
    }
    assert of(series, "kube_pod_labels") == {labels(): 1.0}
    for absent in ("kube_pod_status_phase", "kube_pod_status_ready", "kube_pod_start_time",
                   "kube_pod_status_qos_class", "kube_pod_container_status_restarts_total",
                   "kube_pod_container_resource_requests"):  # fmt: skip
        assert of(series, absent) == {}, absent
    assert len(of(series, "kube_pod_status_reason")) == 5


def test_evicted_terminated_pod() -> None:
    pod = web_pod()
    pod["status"].update(phase="Failed", reason="Evicted")
    pod["status"]["containerStatuses"][0]["state"] = {"terminated": {"reason": "Error", "exitCode": 1}}
    series = scrape(PodStateMetrics(NODE, pods=lambda: [pod]))
    assert of(series, "kube_pod_status_phase")[labels(phase="Failed")] == 1.0
    assert sum(of(series, "kube_pod_status_phase").values()) == 1.0
    assert of(series, "kube_pod_status_reason")[labels(reason="Evicted")] == 1.0
    assert sum(of(series, "kube_pod_status_reason").values()) == 1.0
    assert of(series, "kube_pod_container_status_terminated_reason") == {
        labels(container="nginx", reason="Error"): 1.0
    }
    assert of(series, "kube_pod_container_status_terminated")[labels(container="nginx")] == 1.0


def test_pods_of_other_nodes_are_ignored() -> None:
    other = web_pod()
    other["spec"]["nodeName"] = "node-b"
    other["metadata"].update(name="elsewhere", uid="other-uid")
    series = scrape(PodStateMetrics(NODE, pods=lambda: [web_pod(), other]))
    assert {dict(ls)["pod"] for ls in of(series, "kube_pod_info")} == {"web-7d9c-x2x4z"}


def test_a_malformed_pod_loses_only_its_own_series(caplog: pytest.LogCaptureFixture) -> None:
    broken = web_pod()
    broken["metadata"].update(name="broken", uid="broken-uid")
    broken["status"]["containerStatuses"] = [None]  # not an object
    bad_quantity = web_pod()
    bad_quantity["metadata"].update(name="bad-quantity", uid="bq-uid")
    bad_quantity["spec"]["containers"][0]["resources"]["requests"]["memory"] = "lots"
    collector = PodStateMetrics(NODE, pods=lambda: [broken, web_pod(), bad_quantity])
    with caplog.at_level(logging.WARNING, logger="collector.exporters.podstate"):
        series = scrape(collector)
        scrape(collector)
    assert {dict(ls)["pod"] for ls in of(series, "kube_pod_info")} == {"web-7d9c-x2x4z", "bad-quantity"}
    requests = {
        (dict(ls)["pod"], dict(ls)["resource"]) for ls in of(series, "kube_pod_container_resource_requests")
    }
    assert ("bad-quantity", "memory") not in requests and ("bad-quantity", "cpu") in requests
    assert ("web-7d9c-x2x4z", "memory") in requests
    assert of(series, "kubeobs_kube_state_pod_errors_total") == {
        frozenset({("reason", "pod")}): 1.0,
        frozenset({("reason", "quantity")}): 1.0,
    }
    # cached by resourceVersion: neither counted nor logged again on the second scrape
    assert collector.errors == {"pod": 1, "quantity": 1}
    assert len([r for r in caplog.records if "broken" in r.getMessage()]) == 1
    assert len([r for r in caplog.records if "'lots'" in r.getMessage()]) == 1


def test_series_are_cached_per_pod_version_and_dropped_with_the_pod() -> None:
    pods = [web_pod()]
    collector = PodStateMetrics(NODE, pods=lambda: pods)
    first = list(collector.collect())
    again = list(collector.collect())

    def info(metrics: list[Metric]) -> Sample:
        return next(m for m in metrics if m.name == "kube_pod_info").samples[0]

    assert info(first) is info(again)  # same resourceVersion: not rebuilt

    changed = copy.deepcopy(pods[0])
    changed["metadata"]["resourceVersion"] = "1002"
    changed["status"]["containerStatuses"][1]["restartCount"] = 5
    pods[:] = [changed]
    series = scrape(collector)
    assert of(series, "kube_pod_container_status_restarts_total")[labels(container="sidecar")] == 5.0

    pods.clear()
    assert of(scrape(collector), "kube_pod_info") == {}
    assert collector._cache == {}


def test_pod_series_is_pure() -> None:
    pod = web_pod()
    before = copy.deepcopy(pod)
    assert pod_series(pod) == pod_series(pod)
    assert pod == before


# -- quantities -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "exact"),
    [
        ("100m", "0.1"),
        ("1", "1"),
        ("0.5", "0.5"),
        (".5", "0.5"),
        ("+2", "2"),
        ("1Ki", "1024"),
        ("64Mi", "67108864"),
        ("1Gi", "1073741824"),
        ("1.5Gi", "1610612736"),
        ("2Ti", str(2 * 1024**4)),
        ("500M", "500000000"),
        ("1G", "1000000000"),
        ("3k", "3000"),
        ("1e3", "1000"),
        ("1E3", "1000"),
        ("12e-1", "1.2"),
        ("250u", "0.00025"),
        ("10n", "0.00000001"),
        ("1E", "1000000000000000000"),
        ("2Ei", str(2 * 1024**6)),
    ],
)
def test_parse_quantity(text: str, exact: str) -> None:
    assert parse_quantity(text) == Decimal(exact)


@pytest.mark.parametrize("text", ["", "lots", "1.2.3", "1Qi", "Mi", "1 Gi", "1e", "0x10", "1mi"])
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_rounding_and_units_as_kube_state_metrics() -> None:
    assert cpu_cores(parse_quantity("100m")) == 0.1
    assert cpu_cores(parse_quantity("1")) == 1.0
    assert cpu_cores(parse_quantity("1500u")) == 0.002  # MilliValue() rounds up
    assert whole_units(parse_quantity("100m")) == 1.0  # Value() rounds up
    assert whole_units(parse_quantity("1.5Gi")) == 1610612736.0
    assert resource_unit("cpu") == "core"
    assert [resource_unit(r) for r in ("memory", "storage", "ephemeral-storage", "hugepages-1Gi")] == [
        "byte"
    ] * 4
    assert resource_unit("attachable-volumes-aws-ebs") == "byte"
    assert resource_unit("nvidia.com/gpu") == "integer"
    assert resource_unit("example.com/foo") == "integer"
    assert resource_unit("kubernetes.io/batteries") is None  # native but not one kube-state-metrics knows
    assert resource_unit("pods") is None
    assert sanitize_label_name("app.kubernetes.io/name") == "app_kubernetes_io_name"
    assert sanitize_label_name("nvidia.com/gpu") == "nvidia_com_gpu"


def test_expose_is_what_generate_latest_writes_for_collect() -> None:
    odd = web_pod()
    odd["metadata"].update(name="odd", uid="odd-uid", labels={"note": 'say "hi"\\\nbye', "9lives": "cat"})
    odd["status"].update(phase="Failed", reason="Evicted")
    bare = {"metadata": {"namespace": "x", "name": "bare", "uid": "bare-uid"}, "spec": {"nodeName": NODE}}
    broken = {
        "metadata": {"name": "no-namespace", "uid": "b", "resourceVersion": "1"},
        "spec": {"nodeName": NODE},
    }
    pods = [web_pod(), odd, bare, broken]
    collector = PodStateMetrics(NODE, pods=lambda: pods)

    def families(text: str) -> dict[str, tuple[str, str, set[tuple[str, frozenset[tuple[str, str]], float]]]]:
        return {
            f.name: (
                f.type,
                f.documentation,
                {(s.name, frozenset(s.labels.items()), s.value) for s in f.samples},
            )
            for f in text_string_to_metric_families(text)
        }

    registry = CollectorRegistry()
    registry.register(collector)
    want = families(generate_latest(registry).decode())
    exposed = collector.expose().decode()
    assert families(exposed) == want
    odd_labels = {"namespace": "shop", "pod": "odd", "uid": "odd-uid", "label_note": 'say "hi"\\\nbye',
                  "label_9lives": "cat"}  # fmt: skip
    assert ("kube_pod_labels", frozenset(odd_labels.items()), 1.0) in want["kube_pod_labels"][2]
    assert exposed.count("# HELP kube_pod_info ") == 1
    assert collector.errors == {"pod": 1}

    pods[0] = copy.deepcopy(pods[0])
    pods[0]["metadata"]["resourceVersion"] = "1002"
    pods[0]["status"]["containerStatuses"][1]["restartCount"] = 9
    restarts = families(collector.expose().decode())["kube_pod_container_status_restarts"][2]
    assert ("kube_pod_container_status_restarts_total", labels(container="sidecar"), 9.0) in restarts
