"""Pod metrics from a real kube-apiserver v1.20.2 (``kube_cluster``): pods created, started, restarted
and deleted through the API show up in, change in and go away from the exposition.

The collector's own :class:`~collector.metadata.PodMetadata` watches this node's pods; the two pod
exporters read them through ``PodMetadata.pod_objects`` at scrape time, as the collector wires them. There
is no kubelet: the test plays it, patching pod status through the status subresource and writing the
containers' cgroup v2 files (systemd layout) under a temporary cgroup root.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from collector.clock import SystemClock
from collector.config import KubernetesConfig
from collector.exporters.containers import ContainerMetrics
from collector.exporters.podstate import PodStateMetrics
from collector.metadata import PodMetadata
from tests.support.kube.apiserver import KubeCluster
from tests.support.kube.rest import KubeRest

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


def scrape(registry: CollectorRegistry) -> Series:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def find(series: Series, metric: str, /, **labels: str) -> list[float]:
    return [v for (n, ls), v in series.items() if n == metric and set(labels.items()) <= ls]


async def eventually(
    registry: CollectorRegistry, cond: Callable[[Series], bool], what: str, within: float = 15.0
) -> Series:
    """Scrape until ``cond`` holds on the exposition (a deadline, not a sleep, decides)."""
    deadline = time.monotonic() + within
    while True:
        series = scrape(registry)
        if cond(series):
            return series
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.0f} s waiting for: {what}")
        await asyncio.sleep(0.02)


def write_cgroup(
    path: Path, *, usage_usec: int, current: int, inactive_file: int, anon: int, limit: str
) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cpu.stat").write_text(
        f"usage_usec {usage_usec}\nuser_usec {usage_usec // 2}\nsystem_usec {usage_usec // 2}\n"
        "nr_periods 10\nnr_throttled 3\nthrottled_usec 1500000\nnr_bursts 0\nburst_usec 0\n"
    )
    (path / "cpu.max").write_text("50000 100000\n")
    (path / "memory.current").write_text(f"{current}\n")
    (path / "memory.stat").write_text(
        f"anon {anon}\nfile 0\ninactive_anon 0\ninactive_file {inactive_file}\n"
    )
    (path / "memory.max").write_text(f"{limit}\n")
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 0\noom 1\noom_kill 1\noom_group_kill 0\n")


@pytest.fixture
def rest(kube_cluster: KubeCluster) -> KubeRest:
    return KubeRest.for_cluster(kube_cluster)


@contextlib.asynccontextmanager
async def watching(metadata: PodMetadata) -> AsyncIterator[None]:
    task = asyncio.create_task(metadata.run(), name="pod-metadata")
    synced = asyncio.create_task(metadata.synced.wait(), name="pod-metadata-synced")
    try:
        await asyncio.wait({task, synced}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises why the watch stopped
            raise AssertionError("the pod watch stopped before its first list")
        assert synced.done(), "the pod watch did not sync within 30 s"
        yield
    finally:
        for t in (synced, task):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t


def web_pod(name: str, node: str) -> dict[str, Any]:
    resources = {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/name": "web", "tier": "front"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "web-7d9c",
                    "uid": str(uuid.uuid4()),
                    "controller": True,
                }
            ],
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {"name": "app", "image": "nginx:1.25", "resources": resources},
                {"name": "sidecar", "image": "busybox:1.36", "resources": {"requests": {"cpu": "50m"}}},
            ],
        },
    }


def running(name: str, cid: str, image: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imageID": f"{image}@sha256:{'0' * 64}",
        "containerID": f"containerd://{cid}",
        "ready": True,
        "restartCount": 0,
        "state": {"running": {"startedAt": "2024-05-01T10:00:05Z"}},
    }


async def test_pods_created_restarted_and_deleted_show_in_the_pod_metrics(
    kube_cluster: KubeCluster, rest: KubeRest, tmp_path: Path
) -> None:
    namespace, node = unique("podmetrics"), unique("node")
    await call(rest.create_namespace, namespace)
    pods_path = f"/api/v1/namespaces/{namespace}/pods"
    cgroupfs = tmp_path / "cgroup"
    cgroupfs.mkdir()
    (cgroupfs / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")

    metadata = PodMetadata(KubernetesConfig(kubeconfig=str(kube_cluster.kubeconfig)), node, SystemClock())
    registry = CollectorRegistry()
    registry.register(PodStateMetrics(node, pods=metadata.pod_objects))
    registry.register(ContainerMetrics(str(cgroupfs), pods=metadata.pod_objects))

    async with watching(metadata):
        # another node's pod: the watch (fieldSelector spec.nodeName) never brings it here
        await call(rest.create, pods_path, web_pod("elsewhere", unique("other-node")))
        created = await call(rest.create, pods_path, web_pod("web-0", node))
        uid = created["metadata"]["uid"]

        # created: pod state from the object alone (the apiserver sets phase Pending and the QoS class)
        series = await eventually(
            registry, lambda s: bool(find(s, "kube_pod_info", pod="web-0")), "web-0 seen"
        )
        [info] = [dict(ls) for (n, ls), _ in series.items() if n == "kube_pod_info"]
        assert info == {"namespace": namespace, "pod": "web-0", "uid": uid, "host_ip": "", "pod_ip": "",
                        "node": node, "created_by_kind": "ReplicaSet", "created_by_name": "web-7d9c",
                        "priority_class": "", "host_network": "false"}  # fmt: skip
        assert find(series, "kube_pod_status_phase", pod="web-0", phase="Pending") == [1.0]
        assert find(series, "kube_pod_status_phase", pod="web-0", phase="Running") == [0.0]
        assert find(series, "kube_pod_status_qos_class", qos_class="Burstable") == [1.0]
        assert find(series, "kube_pod_labels", pod="web-0", label_app_kubernetes_io_name="web") == [1.0]
        req = "kube_pod_container_resource_requests"
        assert find(series, req, container="app", resource="cpu", unit="core", node=node) == [0.1]
        assert find(series, req, container="app", resource="memory", unit="byte") == [67108864.0]
        assert find(series, req, container="sidecar", resource="cpu") == [0.05]
        assert find(series, "kube_pod_container_resource_limits", container="app", resource="cpu") == [0.5]
        assert not find(series, "container_memory_usage_bytes", pod="web-0")  # no cgroup yet
        assert not find(series, "kube_pod_info", pod="elsewhere")

        # started: the "kubelet" creates the cgroups and reports the containers running
        app_id, sidecar_id = uuid.uuid4().hex * 2, uuid.uuid4().hex * 2
        pod_dir = (
            cgroupfs
            / "kubepods.slice/kubepods-burstable.slice"
            / (f"kubepods-burstable-pod{uid.replace('-', '_')}.slice")
        )
        write_cgroup(pod_dir, usage_usec=4_000_000, current=80 << 20, inactive_file=8 << 20, anon=60 << 20,
                     limit="max")  # fmt: skip
        write_cgroup(pod_dir / f"cri-containerd-{app_id}.scope", usage_usec=2_500_000, current=50 << 20,
                     inactive_file=10 << 20, anon=30 << 20, limit=str(128 << 20))  # fmt: skip
        write_cgroup(pod_dir / f"cri-containerd-{sidecar_id}.scope", usage_usec=1_000_000, current=20 << 20,
                     inactive_file=30 << 20, anon=10 << 20, limit="max")  # fmt: skip
        status = {
            "phase": "Running",
            "hostIP": "10.0.0.5",
            "podIP": "10.244.1.7",
            "startTime": "2024-05-01T10:00:00Z",
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [running("app", app_id, "docker.io/library/nginx:1.25"),
                                  running("sidecar", sidecar_id, "docker.io/library/busybox:1.36")],
        }  # fmt: skip
        await call(rest.patch, f"{pods_path}/web-0/status", {"status": status})
        series = await eventually(
            registry,
            lambda s: (
                find(s, "kube_pod_status_phase", pod="web-0", phase="Running") == [1.0]
                and bool(find(s, "container_cpu_usage_seconds_total", pod="web-0", container="app"))
            ),
            "web-0 running, with container metrics",
        )
        app = {"namespace": namespace, "pod": "web-0", "container": "app", "node": node}
        app_cgroup = f"/{pod_dir.relative_to(cgroupfs)}/cri-containerd-{app_id}.scope"
        cpu = find(
            series, "container_cpu_usage_seconds_total", **app, cpu="total", name=app_id, id=app_cgroup
        )
        assert cpu == [2.5]
        assert find(series, "container_cpu_usage_seconds_total", **app, image="docker.io/library/nginx:1.25")
        assert find(series, "container_memory_working_set_bytes", **app) == [float(40 << 20)]
        assert find(series, "container_memory_working_set_bytes", pod="web-0", container="sidecar") == [0.0]
        assert find(series, "container_memory_rss", **app) == [float(30 << 20)]
        assert find(series, "container_spec_memory_limit_bytes", **app) == [float(128 << 20)]
        assert find(series, "container_cpu_cfs_throttled_seconds_total", **app) == [1.5]
        assert find(series, "container_memory_usage_bytes", pod="web-0", container="", image="") == [80 << 20]
        assert find(series, "kube_pod_info", pod="web-0", pod_ip="10.244.1.7", host_ip="10.0.0.5") == [1.0]
        assert find(series, "kube_pod_status_ready", pod="web-0", condition="true") == [1.0]
        assert find(series, "kube_pod_start_time", pod="web-0") == [1714557600.0]
        assert find(series, "kube_pod_container_status_running", pod="web-0", container="app") == [1.0]

        # restarted: OOM-killed, now in back-off; its cgroup is gone (the runtime removed it)
        shutil.rmtree(pod_dir / f"cri-containerd-{app_id}.scope")
        crashed = {
            "name": "app", "image": "docker.io/library/nginx:1.25", "imageID": "x", "ready": False,
            "containerID": f"containerd://{app_id}", "restartCount": 1,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
            "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                                         "containerID": f"containerd://{app_id}"}},
        }  # fmt: skip
        status = {
            "conditions": [{"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [crashed, running("sidecar", sidecar_id, "docker.io/library/busybox:1.36")],
        }
        await call(rest.patch, f"{pods_path}/web-0/status", {"status": status})
        series = await eventually(
            registry,
            lambda s: (
                find(s, "kube_pod_container_status_restarts_total", pod="web-0", container="app") == [1.0]
            ),
            "web-0/app restarted",
        )
        reason = {"pod": "web-0", "container": "app"}
        assert find(
            series, "kube_pod_container_status_waiting_reason", **reason, reason="CrashLoopBackOff"
        ) == [1.0]
        assert find(
            series, "kube_pod_container_status_last_terminated_reason", **reason, reason="OOMKilled"
        ) == [1.0]
        assert find(series, "kube_pod_container_status_last_terminated_exitcode", **reason) == [137.0]
        assert find(series, "kube_pod_container_status_running", **reason) == [0.0]
        assert find(series, "kube_pod_status_ready", pod="web-0", condition="false") == [1.0]
        assert not find(series, "container_cpu_usage_seconds_total", **reason)
        assert find(series, "container_cpu_usage_seconds_total", pod="web-0", container="sidecar") == [1.0]

        # deleted: every series of the pod goes, though its cgroups are still on disk (no kubelet here)
        await call(rest.delete, f"{pods_path}/web-0")
        series = await eventually(
            registry,
            lambda s: not any(dict(ls).get("pod") == "web-0" for (_, ls) in s),
            "no series of web-0 after deletion",
        )
        assert pod_dir.is_dir()
        assert find(series, "kubeobs_kube_state_pod_errors_total", reason="pod") == [0.0]
        assert not find(series, "kube_pod_info", pod="elsewhere")
