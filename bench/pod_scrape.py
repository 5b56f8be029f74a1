"""Scrape time of the pod metrics (cAdvisor-named container metrics + kube-state-metrics-named pod state).

Run::

    python bench/pod_scrape.py [--pods 110] [--containers 3] [--scrapes 200] [--json results.json]

The target (issue 6): a scrape under 50 ms for 110 pods (the kubelet's default maxPods) of 3 containers.

What happens:

1. A cgroup v2 tree in the kubelet's systemd layout is written under ``--dir`` (default: a new directory
   in /dev/shm, else the system temp dir): ``--pods`` pod cgroups spread over the Guaranteed, Burstable
   and BestEffort QoS classes, each with ``--containers`` containerd scopes and a sandbox scope, every
   cgroup with the six files the collector reads, in the kernel's formats (a full 56-key
   ``memory.stat``; half of the containers have a CPU quota, so their CFS series are published).
2. Matching pod objects are built as the apiserver returns them (labels, a ReplicaSet owner, requests and
   limits, conditions, running container statuses with containerd ids).
3. Both collectors are registered in a ``CollectorRegistry``, as the collector serves them. After
   ``--warmup`` scrapes, ``--scrapes`` are timed one by one (``time.perf_counter`` and
   ``time.process_time`` around each), for:

   - ``scrape, generate_latest``: ``generate_latest(registry)``, the whole /metrics body of these two
     collectors through prometheus_client's exposition (what a Prometheus scrape costs minus HTTP);
   - ``scrape, expose()``: the same body from the collectors' own text rendering
     (``cadvisor.expose() + kube_state.expose()``);
   - each collector's ``collect()`` alone (reading and parsing the cgroup files; building the pod
     series, without any text) and ``expose()`` alone.

   Pod objects do not change between scrapes, so the kube_state figure is the steady state (series
   cached per pod ``resourceVersion``); ``--churn`` gives every pod a new resourceVersion before each
   scrape, the worst case (everything rebuilt).
4. A table of medians and 95th percentiles (wall ms, CPU ms) is printed with the series counts and
   the body size; ``--json`` gets the same as JSON. ``--probe FILE`` also times reading a kernel file
   (e.g. a real ``memory.stat``) to compare kernfs with the tmpfs fixture files.

Files in tmpfs are cheaper to read than the kernel's cgroup files (the kernel formats ``memory.stat`` on
every read), so a real node costs somewhat more in the cadvisor part; ``--probe`` measures by how much.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry, generate_latest

from collector.exporters.containers import ContainerMetrics
from collector.exporters.podstate import PodStateMetrics

NODE = "bench-node"
# fmt: off
MEMORY_STAT_KEYS = (  # a Linux 6.x memory.stat, in the kernel's order
    "anon", "file", "kernel", "kernel_stack", "pagetables", "sec_pagetables", "percpu", "sock", "vmalloc",
    "shmem", "zswap", "zswapped", "file_mapped", "file_dirty", "file_writeback", "swapcached", "anon_thp",
    "file_thp", "shmem_thp", "inactive_anon", "active_anon", "inactive_file", "active_file", "unevictable",
    "slab_reclaimable", "slab_unreclaimable", "slab", "workingset_refault_anon", "workingset_refault_file",
    "workingset_activate_anon", "workingset_activate_file", "workingset_restore_anon",
    "workingset_restore_file", "workingset_nodereclaim", "pgscan", "pgsteal", "pgscan_kswapd",
    "pgscan_direct", "pgscan_khugepaged", "pgsteal_kswapd", "pgsteal_direct", "pgsteal_khugepaged",
    "pgfault", "pgmajfault", "pgrefill", "pgactivate", "pgdeactivate", "pglazyfree", "pglazyfreed",
    "zswpin", "zswpout", "thp_fault_alloc", "thp_collapse_alloc",
)
# fmt: on
QOS = ("Guaranteed", "Burstable", "BestEffort")


def write_cgroup(path: Path, n: int, quota: bool) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.procs").write_text(f"{1000 + n}\n")
    (path / "cpu.stat").write_text(
        f"usage_usec {n * 7919 + 123456}\nuser_usec {n * 5000}\nsystem_usec {n * 2919}\n"
        f"core_sched.force_idle_usec 0\nnr_periods {n * 3}\nnr_throttled {n}\nthrottled_usec {n * 1500}\n"
        "nr_bursts 0\nburst_usec 0\n"
    )
    (path / "cpu.max").write_text("50000 100000\n" if quota else "max 100000\n")
    (path / "memory.current").write_text(f"{(n % 97 + 3) << 20}\n")
    values = {"anon": (n % 61 + 1) << 20, "file": (n % 13) << 20, "inactive_file": (n % 7) << 20}
    (path / "memory.stat").write_text("".join(f"{k} {values.get(k, n % 1000)}\n" for k in MEMORY_STAT_KEYS))
    (path / "memory.max").write_text(f"{256 << 20}\n" if quota else "max\n")
    (path / "memory.events").write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n")
    for extra in ("cpu.pressure", "memory.pressure", "io.stat", "pids.current", "memory.swap.current"):
        (path / extra).write_text("0\n")


def build(root: Path, pods: int, containers: int) -> list[dict[str, Any]]:
    """Write the cgroup tree under ``root``; returns the matching pod objects."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    kubepods = root / "kubepods.slice"
    objects = []
    n = 0
    for i in range(pods):
        qos = QOS[i % 3]
        uid = str(uuid.UUID(int=i + 1, version=4))
        escaped = uid.replace("-", "_")
        if qos == "Guaranteed":
            pod_dir = kubepods / f"kubepods-pod{escaped}.slice"
        else:
            level = qos.lower()
            pod_dir = kubepods / f"kubepods-{level}.slice" / f"kubepods-{level}-pod{escaped}.slice"
        write_cgroup(pod_dir, i, quota=qos == "Guaranteed")
        write_cgroup(pod_dir / f"cri-containerd-{uuid.UUID(int=10**9 + i).hex * 2}.scope", i, quota=False)
        statuses, specs = [], []
        for c in range(containers):
            n += 1
            cid = uuid.UUID(int=n).hex * 2
            quota = qos == "Guaranteed" or (qos == "Burstable" and c == 0)
            write_cgroup(pod_dir / f"cri-containerd-{cid}.scope", n, quota=quota)
            name = f"c{c}"
            resources: dict[str, Any] = {}
            if qos != "BestEffort":
                resources["requests"] = {"cpu": "100m", "memory": "128Mi"}
            if quota:
                resources["limits"] = {"cpu": "500m", "memory": "256Mi"}
            specs.append({"name": name, "image": f"registry.example.com/team/app-{c}:1.{i}",
                          "resources": resources})  # fmt: skip
            statuses.append({
                "name": name, "image": f"registry.example.com/team/app-{c}:1.{i}",
                "imageID": f"registry.example.com/team/app-{c}@sha256:{cid}", "containerID": f"containerd://{cid}",
                "ready": True, "restartCount": i % 4, "started": True,
                "state": {"running": {"startedAt": "2024-05-01T10:00:05Z"}},
            })  # fmt: skip
        labels = {
            "app.kubernetes.io/name": f"app-{i % 20}",
            "pod-template-hash": "7d9c8b6f5",
            "team": f"t{i % 8}",
        }
        owner = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": f"app-{i % 20}-7d9c8b6f5",
            "uid": str(uuid.UUID(int=i + 7, version=4)),
            "controller": True,
            "blockOwnerDeletion": True,
        }
        metadata = {
            "name": f"app-{i % 20}-7d9c8b6f5-{i:05d}",
            "namespace": f"team-{i % 8}",
            "uid": uid,
            "resourceVersion": str(100000 + i),
            "creationTimestamp": "2024-05-01T10:00:00Z",
            "labels": labels,
            "ownerReferences": [owner],
        }
        status = {
            "phase": "Running",
            "qosClass": qos,
            "hostIP": "10.0.0.5",
            "podIP": f"10.244.{i // 250}.{i % 250}",
            "startTime": "2024-05-01T10:00:00Z",
            "conditions": [
                {"type": t, "status": "True"}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "containerStatuses": statuses,
        }
        spec = {"nodeName": NODE, "containers": specs, "restartPolicy": "Always"}
        objects.append(
            {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": status}
        )
    return objects


def timed(
    fn: Callable[[], object], scrapes: int, before: Callable[[], None] | None = None
) -> dict[str, float]:
    wall, cpu = [], []
    for _ in range(scrapes):
        if before is not None:
            before()
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        cpu.append((time.process_time() - c0) * 1000)
        wall.append((time.perf_counter() - w0) * 1000)

    def q(xs: list[float]) -> float:
        return statistics.quantiles(xs, n=20)[18] if len(xs) >= 20 else max(xs)

    return {"wall_ms_median": statistics.median(wall), "wall_ms_p95": q(wall),
            "cpu_ms_median": statistics.median(cpu), "cpu_ms_p95": q(cpu)}  # fmt: skip


def probe(path: str, reads: int = 2000) -> float:
    """Microseconds per open+read+close of ``path``."""
    t0 = time.perf_counter()
    for _ in range(reads):
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 65536)
        os.close(fd)
    return (time.perf_counter() - t0) / reads * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pods", type=int, default=110)
    p.add_argument("--containers", type=int, default=3, help="containers per pod")
    p.add_argument("--scrapes", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--dir", help="where to write the cgroup tree (default: a temporary directory)")
    p.add_argument("--churn", action="store_true", help="every pod changes before every scrape")
    p.add_argument("--no-pod-cgroups", action="store_true", help="leave out the pod-level container_* series")
    p.add_argument(
        "--probe", metavar="FILE", help="also time reads of this (kernel) file, e.g. a memory.stat"
    )
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = p.parse_args(argv)

    base = args.dir or tempfile.mkdtemp(
        prefix="kubeobs-pod-scrape-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    root = Path(base) / "cgroup"
    try:
        pods = build(root, args.pods, args.containers)
        cadvisor = ContainerMetrics(str(root), pods=lambda: pods, pod_cgroups=not args.no_pod_cgroups)
        kube_state = PodStateMetrics(NODE, pods=lambda: pods)
        registry = CollectorRegistry()
        registry.register(cadvisor)
        registry.register(kube_state)

        churn = None
        if args.churn:
            version = [0]

            def churn() -> None:
                version[0] += 1
                for pod in pods:
                    pod["metadata"]["resourceVersion"] = f"{pod['metadata']['uid']}-{version[0]}"

        for _ in range(args.warmup):
            generate_latest(registry)
        body = generate_latest(registry)
        series = {c.name: sum(len(m.samples) for m in c.collect()) for c in (cadvisor, kube_state)}
        results = {
            "scrape, generate_latest": timed(lambda: generate_latest(registry), args.scrapes, churn),
            "scrape, expose()": timed(lambda: cadvisor.expose() + kube_state.expose(), args.scrapes, churn),
            "cadvisor collect()": timed(lambda: list(cadvisor.collect()), args.scrapes),
            "cadvisor expose()": timed(cadvisor.expose, args.scrapes),
            "kube_state collect()": timed(lambda: list(kube_state.collect()), args.scrapes, churn),
            "kube_state expose()": timed(kube_state.expose, args.scrapes, churn),
        }
        assert not cadvisor.file_errors and not any(kube_state.errors.values())
        out: dict[str, Any] = {
            "pods": args.pods, "containers_per_pod": args.containers, "scrapes": args.scrapes,
            "churn": args.churn, "series": series, "body_bytes": len(body), "results": results,
            "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
        }  # fmt: skip
        if args.probe:
            out["probe_us_per_read"] = {args.probe: probe(args.probe), "fixture memory.stat": probe(
                str(next(root.rglob("cri-containerd-*.scope")) / "memory.stat"))}  # fmt: skip
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)

    print(f"{args.pods} pods x {args.containers} containers, {args.scrapes} scrapes"
          f"{' (every pod changed before each)' if args.churn else ''}; series: {series}; "
          f"body {len(body) / 1024:.0f} KiB")  # fmt: skip
    print("| what | wall ms median | wall ms p95 | CPU ms median | CPU ms p95 |")
    print("|---|---:|---:|---:|---:|")
    for what, r in results.items():
        print(f"| {what} | {r['wall_ms_median']:.1f} | {r['wall_ms_p95']:.1f} | {r['cpu_ms_median']:.1f} | "
              f"{r['cpu_ms_p95']:.1f} |")  # fmt: skip
    for path, us in out.get("probe_us_per_read", {}).items():
        print(f"read {path}: {us:.1f} µs")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
