"""The collector process serves node, container and pod metrics on one /metrics: this node's pods from the
real apiserver, their containers' cgroup v2 files under ``metrics.cgroupfs``; every exporter timed and
isolated (a broken cgroup root fails only the container metrics)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.e2e.harness import collector_config
from tests.integration.test_pod_metrics_apiserver import running, web_pod, write_cgroup
from tests.support.collector_proc import CollectorProcess
from tests.support.kube.apiserver import KubeCluster
from tests.support.kube.rest import KubeRest


def wait_metrics(
    collector: CollectorProcess, cond: Callable[[dict[str, float]], bool], what: str, within: float = 30
) -> dict[str, float]:
    deadline = time.monotonic() + within
    while True:
        m = collector.metrics()
        if cond(m):
            return m
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; stderr: {collector.stderr()[-2000:]}")
        time.sleep(0.1)


def series(m: dict[str, float], name: str, **labels: str) -> list[float]:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return [v for k, v in m.items() if k.split("{", 1)[0] == name and all(w in k for w in want)]


def test_collector_serves_node_container_and_pod_metrics(tmp_path: Path, kube_cluster: KubeCluster) -> None:
    api = KubeRest.for_cluster(kube_cluster)
    namespace, node = f"podm-{uuid.uuid4().hex[:8]}", f"node-{uuid.uuid4().hex[:6]}"
    api.create_namespace(namespace)
    created = api.create(f"/api/v1/namespaces/{namespace}/pods", web_pod("web-0", node))
    uid = created["metadata"]["uid"]
    app_id, sidecar_id = uuid.uuid4().hex * 2, uuid.uuid4().hex * 2
    api.patch(
        f"/api/v1/namespaces/{namespace}/pods/web-0/status",
        {
            "status": {
                "phase": "Running",
                "podIP": "10.244.9.9",
                "containerStatuses": [
                    running("app", app_id, "nginx:1.25"),
                    running("sidecar", sidecar_id, "busybox:1.36"),
                ],
            }
        },
    )
    cgroupfs = tmp_path / "cgroup"
    cgroupfs.mkdir()
    (cgroupfs / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    pod_dir = (
        cgroupfs
        / "kubepods.slice/kubepods-burstable.slice"
        / f"kubepods-burstable-pod{uid.replace('-', '_')}.slice"
    )
    write_cgroup(
        pod_dir, usage_usec=4_000_000, current=80 << 20, inactive_file=8 << 20, anon=60 << 20, limit="max"
    )
    write_cgroup(
        pod_dir / f"cri-containerd-{app_id}.scope",
        usage_usec=3_000_000,
        current=50 << 20,
        inactive_file=10 << 20,
        anon=30 << 20,
        limit=str(128 << 20),
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    cfg = collector_config(logs, tmp_path / "state", {"type": "sqlite", "path": str(tmp_path / "logs.db")})
    cfg["node_name"] = node
    cfg["kubernetes"] = {"kubeconfig": str(kube_cluster.kubeconfig)}
    cfg["metrics"] = {"listen": "127.0.0.1:0", "cgroupfs": str(cgroupfs)}
    collector = CollectorProcess(tmp_path, cfg)
    collector.start()
    try:
        m = wait_metrics(
            collector, lambda m: bool(series(m, "kube_pod_info", pod="web-0")), "web-0's pod state"
        )
        assert series(m, "kube_pod_status_phase", pod="web-0", phase="Running") == [1.0]
        assert series(m, "container_memory_working_set_bytes", pod="web-0", container="app") == [40 << 20]
        assert series(m, "container_spec_memory_limit_bytes", pod="web-0", container="app") == [128 << 20]
        assert series(m, "container_cpu_usage_seconds_total", pod="web-0", container="app") == [3.0]
        assert series(m, "node_scrape_collector_success", collector="cadvisor") == [1.0]
        assert series(m, "node_scrape_collector_success", collector="kube_state") == [1.0]
        assert series(m, "node_scrape_collector_success", collector="cpu") == [1.0]
        assert series(m, "node_load1")
        # a cgroup root that is not cgroup v2: the container metrics fail alone
        (cgroupfs / "cgroup.controllers").unlink()
        m = wait_metrics(
            collector,
            lambda m: series(m, "node_scrape_collector_success", collector="cadvisor") == [0.0],
            "cadvisor marked failed",
        )
        assert not series(m, "container_memory_working_set_bytes", pod="web-0")
        assert series(m, "kube_pod_info", pod="web-0") == [1.0]
        assert series(m, "node_scrape_collector_success", collector="kube_state") == [1.0]
        assert series(m, "node_load1")
        api.delete(f"/api/v1/namespaces/{namespace}/pods/web-0")
        wait_metrics(collector, lambda m: not series(m, "kube_pod_info", pod="web-0"), "web-0 gone")
        assert collector.terminate() == 0
    finally:
        collector.stop()
