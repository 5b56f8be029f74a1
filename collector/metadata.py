"""Kubernetes metadata for the collector: this node's pods and the namespaces, from the apiserver.

Watches pods with ``fieldSelector=spec.nodeName=<node_name>`` (only this node's pods: the DaemonSet pod
on each node watches its own share) and namespaces, through the shared watch cache
(:mod:`kubeobs.kube.cache`). It answers two questions per log file, both by namespace and pod name
taken from the file name:

- what to add to the file's documents: pod uid, labels (dots in keys become ``_``, so ``app`` and
  ``app.kubernetes.io/name`` cannot collide in the mapping), allow-listed annotations, the container's
  image, the node name;
- whether the file is excluded: pod annotation ``kubeobs.io/exclude: "true"``, pod annotation
  ``kubeobs.io/exclude-containers: "a,b"``, namespace label ``kubeobs.io/exclude: "true"``.

A deleted pod's metadata is kept for ``deleted_pod_keep`` seconds so its last lines are still enriched.
A line whose pod is not (yet) known is never held: it is shipped with what the file name tells.

Config (``kubernetes:``): ``kubeconfig``, ``annotations``, ``deleted_pod_keep``, ``sync_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from collector.clock import Clock
from collector.config import KubernetesConfig
from collector.record import FileInfo

log = logging.getLogger(__name__)

EXCLUDE = "kubeobs.io/exclude"
EXCLUDE_CONTAINERS = "kubeobs.io/exclude-containers"
MULTILINE_ANNOTATION = "kubeobs.io/multiline"


def sanitize_labels(labels: dict[str, str]) -> dict[str, str]:
    """Label keys with dots replaced by ``_`` (``app.kubernetes.io/name`` -> ``app_kubernetes_io/name``)."""
    return {k.replace(".", "_"): v for k, v in labels.items()}


def container_image(pod: dict[str, Any], container: str) -> str | None:
    for section in ("containers", "initContainers", "ephemeralContainers"):
        for c in pod.get("spec", {}).get(section) or []:
            if c.get("name") == container:
                image = c.get("image")
                return image if isinstance(image, str) else None
    return None


def pod_excludes(pod: dict[str, Any], container: str) -> bool:
    annotations = pod.get("metadata", {}).get("annotations") or {}
    if str(annotations.get(EXCLUDE, "")).lower() == "true":
        return True
    excluded = {c.strip() for c in str(annotations.get(EXCLUDE_CONTAINERS, "")).split(",") if c.strip()}
    return container in excluded


def namespace_excludes(ns: dict[str, Any]) -> bool:
    labels = ns.get("metadata", {}).get("labels") or {}
    return str(labels.get(EXCLUDE, "")).lower() == "true"


def enriched_kubernetes(
    base: dict[str, Any], pod: dict[str, Any], container: str, annotations_allowed: list[str]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The document's ``kubernetes`` object with the pod's metadata, and the ``container.image`` part."""
    meta = pod.get("metadata", {})
    k8s = dict(base)
    pod_obj = dict(k8s.get("pod") or {})
    if meta.get("uid"):
        pod_obj["uid"] = meta["uid"]
    k8s["pod"] = pod_obj
    labels = meta.get("labels") or {}
    if labels:
        k8s["labels"] = sanitize_labels(labels)
    annotations = meta.get("annotations") or {}
    chosen = {k: v for k, v in annotations.items() if k in annotations_allowed}
    if chosen:
        k8s["annotations"] = sanitize_labels(chosen)
    node = pod.get("spec", {}).get("nodeName")
    if node:
        k8s["node"] = {"name": node}
    image = container_image(pod, container)
    return k8s, ({"name": image} if image else None)


class PodMetadata:
    """Pods of this node and all namespaces, kept current by watches; see the module docstring."""

    def __init__(self, cfg: KubernetesConfig, node_name: str, clock: Clock) -> None:
        self.cfg = cfg
        self.node = node_name
        self.clock = clock
        self.pods: Any = None  # kubeobs.kube.cache.WatchCache, set in run()
        self.namespaces: Any = None
        self._tombstones: dict[tuple[str, str], tuple[dict[str, Any], float]] = {}
        self.synced = asyncio.Event()
        self.generation = 0  # bumped on every change: files re-check their metadata when it moves

    async def run(self) -> None:
        from kubeobs.kube.cache import WatchCache
        from kubeobs.kube.client import KubeClient

        client = (
            KubeClient.from_kubeconfig(self.cfg.kubeconfig)
            if self.cfg.kubeconfig
            else KubeClient.in_cluster()
        )
        try:
            self.pods = WatchCache(
                client, resource="pods", group_version="v1", field_selector=f"spec.nodeName={self.node}"
            )
            self.namespaces = WatchCache(client, resource="namespaces", group_version="v1")
            self.pods.on_event(self._on_pod_event)
            self.namespaces.on_event(self._on_namespace_event)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.pods.run(), name="watch-pods")
                tg.create_task(self.namespaces.run(), name="watch-namespaces")
                tg.create_task(self._wait_synced(), name="metadata-synced")
        finally:
            await client.close()

    async def _wait_synced(self) -> None:
        await self.pods.synced.wait()
        await self.namespaces.synced.wait()
        self.synced.set()
        log.info("kubernetes metadata synced: %d pods on node %s", len(self.pods.items()), self.node)

    def _on_pod_event(self, kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        meta = obj.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if kind == "DELETED":
            self._tombstones[key] = (obj, self.clock.monotonic() + self.cfg.deleted_pod_keep)
        else:
            self._tombstones.pop(key, None)
        self.generation += 1

    def _on_namespace_event(self, kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        self.generation += 1

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.pods is not None:
            obj = self.pods.get(namespace, name)
            if obj is not None:
                return dict(obj)
        tomb = self._tombstones.get((namespace, name))
        if tomb is None:
            return None
        if tomb[1] < self.clock.monotonic():
            del self._tombstones[(namespace, name)]
            return None
        return tomb[0]

    def pod_objects(self) -> list[dict[str, Any]]:
        """This node's pods as the watch holds them now (raw API objects, deleted pods not included; empty
        before the watch starts): the pod source of the pod metrics (:mod:`collector.exporters`)."""
        if self.pods is None:
            return []
        objects: list[dict[str, Any]] = self.pods.items()
        return objects

    def pod_annotation(self, namespace: str, name: str, key: str) -> str | None:
        pod = self.pod(namespace, name)
        if pod is None:
            return None
        value = (pod.get("metadata", {}).get("annotations") or {}).get(key)
        return value if isinstance(value, str) else None

    def namespace(self, name: str) -> dict[str, Any] | None:
        if self.namespaces is None:
            return None
        obj = self.namespaces.get("", name)
        return dict(obj) if obj is not None else None

    def apply(self, info: FileInfo, base: dict[str, Any], names: dict[str, str]) -> bool | None:
        """Refresh ``info``'s metadata; returns whether the file is excluded (None: pod unknown)."""
        ns, pod_name, container = names.get("namespace"), names.get("pod"), names.get("container")
        if not ns or not pod_name or not container:
            return None
        nsobj = self.namespace(ns)
        ns_excluded = nsobj is not None and namespace_excludes(nsobj)
        pod = self.pod(ns, pod_name)
        if pod is None:
            return True if ns_excluded else None
        k8s, image = enriched_kubernetes(base, pod, container, self.cfg.annotations)
        if k8s != info.kubernetes:
            info.kubernetes = k8s  # a new object: encoders cache per-file fragments by identity
        if image is not None and info.container.get("image") != image:
            info.container = {**info.container, "image": image}
        return ns_excluded or pod_excludes(pod, container)
