"""Pure parts of Kubernetes metadata: label keys, exclusion annotations, the enriched document."""

from __future__ import annotations

from collector.metadata import enriched_kubernetes, namespace_excludes, pod_excludes, sanitize_labels

POD = {
    "metadata": {
        "name": "web-1",
        "namespace": "shop",
        "uid": "u-1",
        "labels": {"app": "web", "app.kubernetes.io/name": "web"},
        "annotations": {"team": "a", "secret/thing": "x", "kubeobs.io/exclude-containers": "sidecar, proxy"},
    },
    "spec": {
        "nodeName": "node-a",
        "containers": [{"name": "nginx", "image": "nginx:1.27"}, {"name": "sidecar", "image": "envoy:1"}],
    },
}


def test_label_dots_become_underscores_so_keys_cannot_collide() -> None:
    assert sanitize_labels({"app": "x", "app.kubernetes.io/name": "y"}) == {
        "app": "x",
        "app_kubernetes_io/name": "y",
    }


def test_exclusion_by_annotations_and_namespace_label() -> None:
    assert not pod_excludes(POD, "nginx")
    assert pod_excludes(POD, "sidecar") and pod_excludes(POD, "proxy")
    whole = {"metadata": {"annotations": {"kubeobs.io/exclude": "True"}}}
    assert pod_excludes(whole, "anything")
    assert namespace_excludes({"metadata": {"labels": {"kubeobs.io/exclude": "true"}}})
    assert not namespace_excludes({"metadata": {"labels": {"kubeobs.io/exclude": "no"}}})


def test_enriched_document() -> None:
    base = {
        "namespace": "shop",
        "pod": {"name": "web-1"},
        "container": {"name": "nginx"},
        "node": {"name": "n"},
    }
    k8s, image = enriched_kubernetes(base, POD, "nginx", ["team"])
    assert k8s["pod"] == {"name": "web-1", "uid": "u-1"}
    assert k8s["labels"] == {"app": "web", "app_kubernetes_io/name": "web"}
    assert k8s["annotations"] == {"team": "a"}
    assert k8s["node"] == {"name": "node-a"}
    assert image == {"name": "nginx:1.27"}
    assert base["pod"] == {"name": "web-1"}  # the file-name base is not modified
