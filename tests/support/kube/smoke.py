"""End-to-end check of the test apiserver: ``python -m tests.support.kube.smoke [--workdir DIR] [--keep]``.

Builds (or finds the cached) kube-apiserver, starts etcd and kube-apiserver, then with the Python
``kubernetes`` client and the admin kubeconfig creates a Namespace, a Service, core Endpoints and a Pod,
patches the Pod's status to Running through the ``status`` subresource (there is no kubelet), creates a
``discovery.k8s.io/v1beta1`` EndpointSlice with the client's DynamicClient and a second one with
``kubectl apply`` (when kubectl is installed), lists everything back, checks that the limited user is
authenticated but gets 403 on listing pods, and stops both servers. Prints timings; exits 1 on failure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.kube.apiserver import KubeCluster, ensure_apiserver_binary, find_etcd, start_cluster

NAMESPACE = "kubeobs-smoke"
POD_IP = "10.244.1.5"
NODE = "node-a"


class SmokeFailure(AssertionError):
    pass


def check(cond: object, what: str) -> None:
    if not cond:
        raise SmokeFailure(what)
    print(f"  ok  {what}")


@contextmanager
def timed(label: str, timings: dict[str, float]) -> Iterator[None]:
    t0 = time.monotonic()
    try:
        yield
    finally:
        timings[label] = time.monotonic() - t0


def _slice(name: str, hostname: str) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1beta1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {
                "kubernetes.io/service-name": "web",
                "endpointslice.kubernetes.io/managed-by": "smoke",
            },
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [POD_IP],
                "conditions": {"ready": True},
                "hostname": hostname,
                "topology": {"kubernetes.io/hostname": NODE},
                "targetRef": {"kind": "Pod", "name": "web-0", "namespace": NAMESPACE},
            }
        ],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def run_checks(cluster: KubeCluster) -> None:
    from kubernetes import client, config, dynamic
    from kubernetes.client.rest import ApiException

    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    core = client.CoreV1Api(api)

    version = client.VersionApi(api).get_code()
    check(version.git_version == "v1.20.2", f"server version {version.git_version}")

    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    check(core.read_namespace(NAMESPACE).status.phase == "Active", f"namespace {NAMESPACE} created")

    svc = core.create_namespaced_service(
        NAMESPACE,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="web", labels={"app": "web"}),
            spec=client.V1ServiceSpec(
                selector={"app": "web"},
                ports=[client.V1ServicePort(name="http", port=80, target_port=8080, protocol="TCP")],
            ),
        ),
    )
    check(svc.spec.cluster_ip.startswith("10."), f"service web created, clusterIP {svc.spec.cluster_ip}")

    pod = core.create_namespaced_pod(
        NAMESPACE,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name="web-0", labels={"app": "web"}),
            spec=client.V1PodSpec(
                node_name=NODE,  # no scheduler: bind the pod at creation
                hostname="web-0",
                subdomain="web",
                containers=[
                    client.V1Container(
                        name="web",
                        image="nginx:1.25",
                        ports=[client.V1ContainerPort(name="http", container_port=8080)],
                    )
                ],
            ),
        ),
    )
    check(
        pod.status.phase == "Pending", f"pod web-0 created (phase {pod.status.phase}, uid {pod.metadata.uid})"
    )

    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status_patch = {
        "status": {
            "phase": "Running",
            "hostIP": "192.0.2.10",
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
            "startTime": now,
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": now}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "containerStatuses": [
                {
                    "name": "web",
                    "image": "nginx:1.25",
                    "imageID": "docker.io/library/nginx@sha256:" + "0" * 64,
                    "containerID": "containerd://" + "a" * 64,
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": now}},
                }
            ],
        }
    }
    patched = core.patch_namespaced_pod_status(
        "web-0", NAMESPACE, status_patch, _content_type="application/merge-patch+json"
    )
    check(
        patched.status.phase == "Running" and patched.status.pod_ip == POD_IP,
        f"pod status patched via /status: phase {patched.status.phase}, podIP {patched.status.pod_ip}",
    )

    core.create_namespaced_endpoints(
        NAMESPACE,
        client.V1Endpoints(
            metadata=client.V1ObjectMeta(name="web", labels={"app": "web"}),
            subsets=[
                client.V1EndpointSubset(
                    addresses=[
                        client.V1EndpointAddress(
                            ip=POD_IP,
                            hostname="web-0",
                            node_name=NODE,
                            target_ref=client.V1ObjectReference(
                                kind="Pod", name="web-0", namespace=NAMESPACE, uid=pod.metadata.uid
                            ),
                        )
                    ],
                    ports=[client.CoreV1EndpointPort(name="http", port=8080, protocol="TCP")],
                )
            ],
        ),
    )
    check(True, "core/v1 Endpoints web created")

    # The discovery cache would otherwise land in /tmp as osrcp-<hash>.json, one file per port.
    dyn = dynamic.DynamicClient(api, cache_file=str(cluster.workdir / "discovery-cache.json"))
    slices = dyn.resources.get(api_version="discovery.k8s.io/v1beta1", kind="EndpointSlice")
    slices.create(body=_slice("web-dyn", "web-0"), namespace=NAMESPACE)
    check(True, "EndpointSlice web-dyn (discovery.k8s.io/v1beta1) created with DynamicClient")

    kubectl = shutil.which("kubectl")
    expected_slices = {"web-dyn"}
    if kubectl:
        result = subprocess.run(
            [kubectl, "--kubeconfig", str(cluster.kubeconfig), "apply", "-f", "-"],
            input=json.dumps(_slice("web-kubectl", "web-0")).encode(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        out = (result.stdout + result.stderr).decode(errors="replace").strip()
        check(result.returncode == 0, f"kubectl apply EndpointSlice web-kubectl: {out}")
        expected_slices.add("web-kubectl")
        listed = subprocess.run(
            [kubectl, "--kubeconfig", str(cluster.kubeconfig), "-n", NAMESPACE, "get",
             "endpointslices.v1beta1.discovery.k8s.io", "-o", "name"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        names = listed.stdout.decode().split()
        check(listed.returncode == 0 and len(names) == 2, f"kubectl get endpointslices: {' '.join(names)}")
    else:
        print("  --  kubectl not on PATH: skipped the `kubectl apply` EndpointSlice")

    # List everything back.
    services = core.list_namespaced_service(NAMESPACE).items
    check([s.metadata.name for s in services] == ["web"], "list services: web")
    endpoints = core.list_namespaced_endpoints(NAMESPACE).items
    check(
        len(endpoints) == 1 and endpoints[0].subsets[0].addresses[0].ip == POD_IP,
        f"list endpoints: web -> {endpoints[0].subsets[0].addresses[0].ip}",
    )
    pods = core.list_namespaced_pod(NAMESPACE, label_selector="app=web").items
    check(
        len(pods) == 1 and pods[0].status.phase == "Running" and pods[0].spec.node_name == NODE,
        f"list pods: web-0 {pods[0].status.phase} on {pods[0].spec.node_name}",
    )
    listed_slices = slices.get(namespace=NAMESPACE, label_selector="kubernetes.io/service-name=web")
    slice_names = {item.metadata.name for item in listed_slices.items}
    check(slice_names == expected_slices, f"list endpointslices (v1beta1): {sorted(slice_names)}")
    all_services = core.list_service_for_all_namespaces().items
    check(
        any(s.metadata.name == "kubernetes" and s.metadata.namespace == "default" for s in all_services),
        "default/kubernetes service exists (apiserver bootstrap controller)",
    )

    # The limited user: authenticated (200 on /version) but forbidden by RBAC.
    limited_api = config.new_client_from_config(config_file=str(cluster.limited_kubeconfig))
    check(client.VersionApi(limited_api).get_code().git_version == "v1.20.2", "limited user authenticates")
    for what, call in (
        (f"list pods in {NAMESPACE}", lambda: client.CoreV1Api(limited_api).list_namespaced_pod(NAMESPACE)),
        ("list pods in all namespaces", lambda: client.CoreV1Api(limited_api).list_pod_for_all_namespaces()),
    ):
        try:
            call()
        except ApiException as exc:
            check(exc.status == 403, f"limited user gets {exc.status} on {what}")
        else:
            raise SmokeFailure(f"limited user was allowed to {what}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.kube.smoke", description=__doc__)
    parser.add_argument(
        "--workdir", type=Path, help="where certs, etcd data and logs go (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)

    timings: dict[str, float] = {}
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kubeobs-kube-smoke-"))
    print(f"smoke: work directory {workdir}")
    cluster: KubeCluster | None = None
    try:
        with timed("build_or_cache", timings):
            binary = ensure_apiserver_binary(build=True)
        print(f"smoke: kube-apiserver {binary}; etcd {find_etcd()}")
        with timed("cluster_start_total", timings):
            cluster = start_cluster(workdir, build=False)
        timings.update(cluster.timings)
        print(f"smoke: apiserver {cluster.url}, etcd {cluster.etcd_url}")
        print(f"smoke: kubeconfig {cluster.kubeconfig}, limited {cluster.limited_kubeconfig}")
        with timed("checks", timings):
            run_checks(cluster)
    except Exception as exc:
        print(f"smoke: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        if cluster is not None:
            print(f"smoke: kube-apiserver stderr tail:\n{cluster.apiserver.stderr_tail(20)}", file=sys.stderr)
        return 1
    finally:
        if cluster is not None:
            with timed("stop", timings):
                cluster.stop()
            print(f"smoke: stopped apiserver (pid {cluster.apiserver.pid}) and etcd (pid {cluster.etcd.pid})")
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        print("smoke: timings " + ", ".join(f"{k}={v:.2f}s" for k, v in timings.items()))
    print("smoke: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
