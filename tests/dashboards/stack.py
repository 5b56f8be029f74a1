"""A small live kubeobs system for the dashboard tests: knotd (upstream), the DNS server forwarding to it,
the collector (log source, SQLite sink, pod metrics for one pod on its node from the real apiserver,
container metrics from a cgroup v2 tree) and a real Prometheus scraping both every second.

:func:`start_stack` returns a :class:`Stack`; :meth:`Stack.stop` stops every process it started, by PID.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.harness import collector_config
from tests.integration.test_pod_metrics_apiserver import running, web_pod, write_cgroup
from tests.support.collector_proc import CollectorProcess
from tests.support.dns import DnsServerProc, query, start_dns_server
from tests.support.knot import ZONE, Knot, start_knot
from tests.support.kube.apiserver import KubeCluster
from tests.support.kube.rest import KubeRest
from tests.support.servers import EsServer, ServerStartError, start_es_server

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

INDEX = "logs-k8s-%Y.%m.%d"
RECORDS = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Prometheus:
    """A real Prometheus server; :meth:`query` runs an instant query and returns ``data.result``."""

    process: subprocess.Popen[bytes]
    port: int
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            body = json.loads(e.read())
            e.close()
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus {path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] != "scalar" else [data]
        return result

    def metric_names(self) -> set[str]:
        return set(self.api("/api/v1/label/__name__/values"))

    def stderr_tail(self) -> str:
        log = self.workdir / "prometheus.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_prometheus(workdir: Path, targets: dict[str, tuple[str, dict[str, str]]]) -> Prometheus:
    """Prometheus scraping ``targets`` (job -> (host:port, target labels)) every second with
    ``honor_labels: true``, as the chart's scrape configuration does; waits for ``/-/ready``."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": job, "honor_labels": True, "static_configs": [{"targets": [addr], "labels": labels}]}
            for job, (addr, labels) in targets.items()
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with open(workdir / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=workdir,
        )
    prom = Prometheus(proc, port, workdir)
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1) as resp:
                if resp.status == 200:
                    return prom
        except (OSError, urllib.error.URLError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            prom.stop()
            raise ServerStartError(f"prometheus did not become ready; log tail:\n{prom.stderr_tail()}")
        time.sleep(0.05)


@dataclass
class Stack:
    node: str
    namespace: str
    pod: str
    prometheus: Prometheus
    collector: CollectorProcess
    dns: DnsServerProc
    knot: Knot
    es: EsServer
    log_file: Path
    _cleanup: ExitStack = field(default_factory=ExitStack)

    def stop(self) -> None:
        self._cleanup.close()


def start_stack(workdir: Path, cluster: KubeCluster) -> Stack:
    """Start everything (see the module docstring); on failure, stop what was started and raise."""
    cleanup = ExitStack()
    try:
        return _start(workdir, cluster, cleanup)
    except BaseException:
        cleanup.close()
        raise


def _start(workdir: Path, cluster: KubeCluster, cleanup: ExitStack) -> Stack:
    suffix = uuid.uuid4().hex[:6]
    namespace, node, pod = f"dash-{suffix}", f"dash-node-{suffix}", "web-0"

    knot = start_knot(workdir / "knot")
    cleanup.callback(knot.stop)
    records = workdir / "records.yaml"
    records.write_text(RECORDS)
    host, port = knot.addr()
    dns = start_dns_server(workdir / "dns", "--records", str(records), "--upstream", f"{host}:{port}")
    cleanup.callback(dns.stop)

    api = KubeRest.for_cluster(cluster)
    api.create_namespace(namespace)
    created = api.create(f"/api/v1/namespaces/{namespace}/pods", web_pod(pod, node))
    app_id, sidecar_id = uuid.uuid4().hex * 2, uuid.uuid4().hex * 2
    api.patch(
        f"/api/v1/namespaces/{namespace}/pods/{pod}/status",
        {
            "status": {
                "phase": "Running",
                "podIP": "10.244.9.9",
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "True"},
                ],
                "containerStatuses": [
                    running("app", app_id, "nginx:1.25"),
                    running("sidecar", sidecar_id, "busybox:1.36"),
                ],
            }
        },
    )
    cgroupfs = workdir / "cgroup"
    cgroupfs.mkdir()
    (cgroupfs / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    uid = created["metadata"]["uid"]
    pod_dir = (
        cgroupfs
        / "kubepods.slice/kubepods-burstable.slice"
        / f"kubepods-burstable-pod{uid.replace('-', '_')}.slice"
    )
    write_cgroup(
        pod_dir, usage_usec=4_000_000, current=80 << 20, inactive_file=8 << 20, anon=60 << 20, limit="max"
    )
    for cid, usage in ((app_id, 3_000_000), (sidecar_id, 500_000)):
        write_cgroup(
            pod_dir / f"cri-containerd-{cid}.scope",
            usage_usec=usage,
            current=50 << 20,
            inactive_file=10 << 20,
            anon=30 << 20,
            limit=str(128 << 20),
        )

    logs = workdir / "logs"
    logs.mkdir()
    log_file = logs / f"{pod}_{namespace}_app-{app_id}.log"
    log_file.write_text(
        "".join(
            f"2024-05-01T10:00:0{i}.000000000Z {'stderr' if i % 3 == 0 else 'stdout'} F line {i}\n"
            for i in range(6)
        )
    )
    cdir = workdir / "collector"
    cdir.mkdir()
    es = start_es_server(workdir / "es")
    cleanup.callback(es.stop)
    cfg = collector_config(logs, cdir / "state", {"type": "elasticsearch", "hosts": [es.url], "index": INDEX})
    cfg["node_name"] = node
    cfg["kubernetes"] = {"kubeconfig": str(cluster.kubeconfig)}
    cfg["metrics"] = {"listen": "127.0.0.1:0", "cgroupfs": str(cgroupfs)}
    collector = CollectorProcess(cdir, cfg)
    cleanup.callback(collector.stop)
    # Prometheus first: its target discovery takes a few seconds to hand over the first targets
    prom = start_prometheus(
        workdir / "prometheus",
        {
            # the chart's scrape config adds the node the collector pod runs on as `node` (relabelled from
            # __meta_kubernetes_pod_node_name); series that carry their own `node` keep it (honor_labels)
            "kubeobs-collector": (f"127.0.0.1:{collector.port}", {"node": node}),
            "kubeobs-dns": (f"127.0.0.1:{dns.metrics_port}", {}),
        },
    )
    cleanup.callback(prom.stop)
    collector.start()

    return Stack(node, namespace, pod, prom, collector, dns, knot, es, log_file, cleanup)


def make_pipeline_events(stack: Stack) -> None:
    """Give the pipeline panels something to show, as a real cluster would now and then: a slow bulk request
    (lines wait unacknowledged for 2 s), a failed one (retried, reason ``request_failed``), one with half its
    items rejected with 429 (retried, reason ``item``; their re-send answered 409: conflicts), and a line
    whose timestamp the index rejects with 400 (dead-lettered)."""
    stack.es.set_faults(
        [
            {"action": "delay", "seconds": 2, "path_regex": "_bulk", "times": 1},
            {"action": "status", "status": 503, "path_regex": "_bulk", "times": 1},
            {"action": "bulk_items", "status": 429, "fraction": 0.5, "path_regex": "_bulk", "times": 1},
        ]
    )
    with open(stack.log_file, "a") as f:
        f.write("2026-02-31T10:00:00.000000001Z stdout F a day that does not exist\n")
        f.writelines(f"2024-05-01T10:01:0{i}.000000000Z stdout F more {i}\n" for i in range(6))


def send_dns_queries(stack: Stack) -> None:
    """Cluster and forwarded names, twice each (the second forwarded answer comes from the cache)."""
    for _ in range(2):
        for name, rdtype in (
            ("web.ns.svc.cluster.local", "A"),
            (f"www.{ZONE}", "A"),
            (f"www.{ZONE}", "AAAA"),
        ):
            query(stack.dns.port, name, rdtype)
            query(stack.dns.port, name, rdtype, tcp=True)
        query(stack.dns.port, "missing.ns.svc.cluster.local", "A")


if __name__ == "__main__":  # a scratch look at the live system: python -m tests.dashboards.stack
    from tests.support.kube.apiserver import start_cluster

    tmp = Path(tempfile.mkdtemp(prefix="kubeobs-dash-"))
    cluster = start_cluster(tmp / "kube")
    stack = start_stack(tmp / "stack", cluster)
    try:
        send_dns_queries(stack)
        time.sleep(5)
        for name in sorted(stack.prometheus.metric_names()):
            print(name)
    finally:
        stack.stop()
        cluster.stop()
