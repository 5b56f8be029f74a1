"""The shared watch cache and its client against a real kube-apiserver v1.20.2 (tests/support/kube).

Covered: ADDED/MODIFIED/DELETED for pods (status subresource included); field and label selectors (an
object leaving a label selector is DELETED for the watcher); the apiserver restarted while objects are
created, changed and deleted through a peer apiserver (the restarted one answers the old resourceVersion
with 410, the cache relists and converges: no missed delete, no phantom); a real 410 from etcd
compaction; RBAC denial (one clear log line, backoff to the cap, recovery once a Role is bound); API
discovery picking EndpointSlice ``discovery.k8s.io/v1beta1`` on 1.20.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kubeobs.kube import (
    Backoff,
    KubeAuthError,
    KubeClient,
    KubeForbidden,
    KubeObject,
    WatchCache,
    endpoint_source,
)
from kubeobs.kube.client import DEFAULT_WATCH_TIMEOUT
from tests.support.kube.apiserver import KubeCluster, _write_kubeconfig, start_cluster
from tests.support.kube.rest import KubeRest, pod_body

FAST = Backoff(initial=0.05, cap=0.4, jitter=0.0)


class Recorder:
    """Handler recording ``(type, namespace/name, resourceVersion)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.objects: list[tuple[str, KubeObject, KubeObject | None]] = []

    def __call__(self, type_: str, obj: KubeObject, old: KubeObject | None) -> None:
        meta = obj["metadata"]
        self.events.append((type_, f"{meta.get('namespace', '')}/{meta['name']}", meta["resourceVersion"]))
        self.objects.append((type_, obj, old))

    def kinds(self, name_part: str = "") -> list[tuple[str, str]]:
        return [(t, n.split("/", 1)[1]) for t, n, _ in self.events if name_part in n]


async def eventually(cond: Callable[[], bool], what: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.0f} s waiting for: {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(*caches: WatchCache) -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks = [asyncio.create_task(c.run(), name=f"cache-{c.name}") for c in caches]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


@pytest.fixture
def rest(kube_cluster: KubeCluster) -> KubeRest:
    return KubeRest.for_cluster(kube_cluster)


@pytest.fixture
async def namespace(rest: KubeRest) -> str:
    name = unique("cache")
    await call(rest.create_namespace, name)
    return name


def names_in(cache: WatchCache, namespace: str) -> set[str]:
    return {o["metadata"]["name"] for o in cache.items() if o["metadata"].get("namespace") == namespace}


# -- events -------------------------------------------------------------------------------------------


async def test_pod_added_modified_deleted(kube_client: KubeClient, rest: KubeRest, namespace: str) -> None:
    registry = CollectorRegistry()
    cache = WatchCache(kube_client, "pods", "v1", namespace=namespace, registry=registry,
                       indexes={"uid": lambda o: [o["metadata"]["uid"]]})  # fmt: skip
    rec = Recorder()
    cache.on_event(rec)
    pods = f"/api/v1/namespaces/{namespace}/pods"
    await call(rest.create, pods, pod_body("before", "node-a"))
    async with running(cache):
        await asyncio.wait_for(cache.synced.wait(), 15)
        assert rec.kinds() == [("ADDED", "before")]
        assert cache.get(namespace, "before")["kind"] == "Pod"  # type: ignore[index]

        created = await call(rest.create, pods, pod_body("web-0", "node-a", {"app": "web"}))
        await eventually(lambda: ("ADDED", "web-0") in rec.kinds(), "ADDED web-0")
        # the apiserver's object carries server-side apply bookkeeping; the cache does not keep it
        assert created["metadata"].get("managedFields")
        assert all("managedFields" not in o["metadata"] for o in cache.items())
        assert cache.by_index("uid", created["metadata"]["uid"])[0]["metadata"]["name"] == "web-0"

        await call(rest.patch, f"{pods}/web-0", {"metadata": {"labels": {"tier": "front"}}})
        await call(
            rest.patch, f"{pods}/web-0/status", {"status": {"phase": "Running", "podIP": "10.244.0.7"}}
        )
        await eventually(lambda: rec.kinds("web-0").count(("MODIFIED", "web-0")) == 2, "two MODIFIED")
        assert cache.get(namespace, "web-0")["status"]["podIP"] == "10.244.0.7"  # type: ignore[index]
        _, new, old = rec.objects[-1]
        assert (
            old is not None and "podIP" not in old.get("status", {}) and new["status"]["phase"] == "Running"
        )

        await call(rest.delete, f"{pods}/web-0")
        await eventually(lambda: ("DELETED", "web-0") in rec.kinds(), "DELETED web-0")
        assert (
            cache.get(namespace, "web-0") is None and cache.by_index("uid", created["metadata"]["uid"]) == []
        )
        kinds = rec.kinds()
        assert kinds[:4] == [
            ("ADDED", "before"),
            ("ADDED", "web-0"),
            ("MODIFIED", "web-0"),
            ("MODIFIED", "web-0"),
        ]
        assert kinds[-1] == ("DELETED", "web-0")
        # Deleting a pod bound to a node, even with gracePeriodSeconds=0, first sets its deletionTimestamp.
        assert all(
            t == "MODIFIED" and o["metadata"].get("deletionTimestamp") for t, o, _ in rec.objects[4:-1]
        )
    labels = {"resource": "pods"}
    assert registry.get_sample_value("kubeobs_kube_cache_synced", labels) == 1
    assert registry.get_sample_value("kubeobs_kube_cache_events_total", {**labels, "type": "DELETED"}) == 1
    assert registry.get_sample_value(
        "kubeobs_kube_cache_events_total", {**labels, "type": "MODIFIED"}
    ) == len([k for k in kinds if k[0] == "MODIFIED"])
    assert registry.get_sample_value("kubeobs_kube_cache_relists_total", labels) == 0


async def test_field_selector_watches_only_one_nodes_pods(
    kube_client: KubeClient, rest: KubeRest, namespace: str
) -> None:
    """What the collector does: all namespaces, ``spec.nodeName=node-a`` only."""
    pods = f"/api/v1/namespaces/{namespace}/pods"
    await call(rest.create, pods, pod_body("a-1", "node-a"))
    await call(rest.create, pods, pod_body("b-1", "node-b"))
    cache = WatchCache(kube_client, "pods", "v1", field_selector="spec.nodeName=node-a")
    rec = Recorder()
    cache.on_event(rec)
    async with running(cache):
        await asyncio.wait_for(cache.synced.wait(), 15)
        assert names_in(cache, namespace) == {"a-1"}
        await call(rest.create, pods, pod_body("b-2", "node-b"))
        await call(rest.create, pods, pod_body("a-2", "node-a"))
        await call(rest.delete, f"{pods}/b-1")
        await eventually(lambda: names_in(cache, namespace) == {"a-1", "a-2"}, "a-2 arrives")
        await asyncio.sleep(0.3)  # room for a stray node-b event to show up (it must not)
    assert rec.kinds(namespace) == [("ADDED", "a-1"), ("ADDED", "a-2")]
    assert all(o["spec"]["nodeName"] == "node-a" for o in cache.items())


async def test_label_selector_and_objects_moving_in_and_out_of_it(
    kube_client: KubeClient, rest: KubeRest, namespace: str
) -> None:
    pods = f"/api/v1/namespaces/{namespace}/pods"
    await call(rest.create, pods, pod_body("web-1", "node-a", {"app": "web"}))
    await call(rest.create, pods, pod_body("db-1", "node-a", {"app": "db"}))
    cache = WatchCache(kube_client, "pods", "v1", namespace=namespace, label_selector="app=web")
    rec = Recorder()
    cache.on_event(rec)
    async with running(cache):
        await asyncio.wait_for(cache.synced.wait(), 15)
        assert names_in(cache, namespace) == {"web-1"}
        await call(rest.patch, f"{pods}/web-1", {"metadata": {"labels": {"app": "other"}}})  # leaves
        await call(rest.patch, f"{pods}/db-1", {"metadata": {"labels": {"app": "web"}}})  # enters
        await eventually(lambda: names_in(cache, namespace) == {"db-1"}, "db-1 in, web-1 out")
    # The apiserver tells a selector's watcher DELETED/ADDED when an object leaves/enters it.
    assert rec.kinds() == [("ADDED", "web-1"), ("DELETED", "web-1"), ("ADDED", "db-1")]


# -- restarts and 410 ---------------------------------------------------------------------------------


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[KubeCluster]:
    """A private cluster for a test that stops and restarts its apiserver."""
    cluster = start_cluster(tmp_path / "kube")
    yield cluster
    cluster.stop()


@pytest.mark.slow
async def test_apiserver_restart_while_objects_change_converges_without_missed_deletes(
    own_cluster: KubeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kubeobs.kube.cache")
    cluster = own_cluster
    rest = KubeRest.for_cluster(cluster)
    ns = "restart"
    pods = f"/api/v1/namespaces/{ns}/pods"
    await call(rest.create_namespace, ns)
    for name in ("keep", "change", "gone", "recreate"):
        await call(rest.create, pods, pod_body(name, "node-a"))
    registry = CollectorRegistry()
    client = KubeClient.from_kubeconfig(cluster.kubeconfig)
    cache = WatchCache(client, "pods", "v1", namespace=ns, backoff=FAST, registry=registry,
                       indexes={"uid": lambda o: [o["metadata"]["uid"]]})  # fmt: skip
    rec = Recorder()
    cache.on_event(rec)
    try:
        async with running(cache) as (task,):
            await asyncio.wait_for(cache.synced.wait(), 15)
            old_recreate_uid = cache.get(ns, "recreate")["metadata"]["uid"]  # type: ignore[index]
            before = len(rec.events)

            await call(cluster.stop_apiserver)
            # The apiserver is down: change everything through a second apiserver on the same etcd.
            peer_url, _ = await call(cluster.start_peer_apiserver)
            peer = KubeRest.for_cluster(cluster, peer_url)
            await call(peer.delete, f"{pods}/gone")
            await call(peer.delete, f"{pods}/recreate")
            await call(peer.create, pods, pod_body("recreate", "node-a", {"generation": "2"}))
            await call(peer.patch, f"{pods}/change", {"metadata": {"labels": {"changed": "yes"}}})
            await call(peer.create, pods, pod_body("new", "node-a"))
            truth = await call(peer.get, pods)
            await call(cluster.stop_peer_apiservers)
            assert cache.state == "unavailable" and not task.done()
            await call(cluster.start_apiserver)

            expected = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in truth["items"]}

            def current() -> dict[str, str]:
                return {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in cache.items()}

            await eventually(lambda: current() == expected, f"cache converges to {expected}", within=30)
            await asyncio.sleep(0.3)  # nothing else may trickle in afterwards
            assert current() == expected

        after = [(t, n.split("/")[1]) for t, n, _ in rec.events[before:]]
        assert sorted(after) == sorted(
            [
                ("DELETED", "gone"),
                ("DELETED", "recreate"),
                ("ADDED", "recreate"),
                ("MODIFIED", "change"),
                ("ADDED", "new"),
            ]
        )
        assert after.index(("DELETED", "recreate")) < after.index(("ADDED", "recreate"))
        assert cache.by_index("uid", old_recreate_uid) == []
        # 1.20 answers the pre-restart resourceVersion with 410 (its fresh watch cache starts later):
        # the differences came from one relist.
        assert cache.lists == 2
        assert registry.get_sample_value("kubeobs_kube_cache_relists_total", {"resource": "pods"}) == 1
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and 'cannot watch pods in namespace "restart"' in warnings[0]
        assert any("working again after unavailable" in r.getMessage() for r in caplog.records)
    finally:
        await client.close()


class CompactBeforeFirstWatch:
    """A client whose first watch first changes objects and compacts etcd, as if we had been away while
    the apiserver compacted: the real server then answers that watch with 410."""

    def __init__(self, client: KubeClient, away: Callable[[], None]) -> None:
        self.client = client
        self.away: Callable[[], None] | None = away
        self.watch_rvs: list[str] = []

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> KubeObject:
        return await self.client.get(path, params)

    async def watch(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        timeout_seconds: int = DEFAULT_WATCH_TIMEOUT,
        read_timeout: float | None = None,
    ) -> AsyncGenerator[KubeObject, None]:
        self.watch_rvs.append(dict(params or {})["resourceVersion"])
        if self.away is not None:
            away, self.away = self.away, None
            await asyncio.to_thread(away)
        async with contextlib.aclosing(
            self.client.watch(path, params, timeout_seconds=timeout_seconds)
        ) as it:
            async for event in it:
                yield event


async def test_a_real_410_relists_and_emits_the_differences(
    kube_cluster: KubeCluster, kube_client: KubeClient, rest: KubeRest, namespace: str
) -> None:
    """core/v1 Events have no watch cache in 1.20: their watches are served by etcd, which answers a
    compacted resourceVersion with 410 Expired."""
    events = f"/api/v1/namespaces/{namespace}/events"

    def event(name: str, message: str = "m") -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Event", "metadata": {"name": name}, "reason": "Test",
                "message": message, "type": "Normal",
                "involvedObject": {"kind": "Pod", "name": "x", "namespace": namespace}}  # fmt: skip

    for name in ("e1", "e2", "e3"):
        await call(rest.create, events, event(name))

    def away() -> None:
        rest.create(events, event("e4"))
        rest.patch(f"{events}/e2", {"message": "changed"})
        rest.delete(f"{events}/e3", grace_seconds=None)
        kube_cluster.compact_etcd()

    client = CompactBeforeFirstWatch(kube_client, away)
    registry = CollectorRegistry()
    cache = WatchCache(client, "events", "v1", namespace=namespace, backoff=FAST, registry=registry)
    rec = Recorder()
    cache.on_event(rec)
    async with running(cache):
        await eventually(lambda: cache.lists == 2 and len(client.watch_rvs) == 2, "relist after 410")
        await asyncio.sleep(0.2)
    assert rec.kinds() == [
        ("ADDED", "e1"),
        ("ADDED", "e2"),
        ("ADDED", "e3"),
        ("DELETED", "e3"),
        ("MODIFIED", "e2"),
        ("ADDED", "e4"),
    ]
    assert names_in(cache, namespace) == {"e1", "e2", "e4"}
    assert cache.get(namespace, "e2")["message"] == "changed"  # type: ignore[index]
    assert int(client.watch_rvs[1]) > int(client.watch_rvs[0])  # the second watch starts from the relist
    assert (
        registry.get_sample_value(
            "kubeobs_kube_cache_watch_restarts_total", {"resource": "events", "reason": "gone"}
        )
        == 1
    )


# -- RBAC, discovery, client errors -------------------------------------------------------------------


async def test_rbac_denial_is_logged_once_backs_off_and_recovers_when_granted(
    kube_cluster: KubeCluster, rest: KubeRest, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kubeobs.kube.cache")
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(delay)

    limited = KubeClient.from_kubeconfig(kube_cluster.limited_kubeconfig)
    registry = CollectorRegistry()
    cache = WatchCache(
        limited, "pods", "v1", namespace=namespace, backoff=FAST, sleep=sleep, registry=registry
    )
    try:
        async with running(cache) as (task,):
            await eventually(lambda: len(delays) >= 7, "seven denied attempts")
            assert not task.done() and not cache.synced.is_set()
            assert cache.state == "forbidden" and isinstance(cache.last_error, KubeForbidden)
            errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(errors) == 1, [r.getMessage() for r in errors]
            line = errors[0].getMessage()
            assert f'cannot list pods in namespace "{namespace}"' in line and "403 Forbidden" in line
            assert 'User "kubeobs-limited" cannot list resource "pods"' in line
            assert delays[:7] == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4, 0.4]  # up to the cap, then at the cap
            denied = registry.get_sample_value(
                "kubeobs_kube_cache_errors_total", {"resource": "pods", "reason": "forbidden"}
            )
            assert denied is not None and denied >= 7

            rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
            role = {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "read-pods"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}],
            }
            await call(rest.create, f"{rbac}/roles", role)
            await call(rest.create, f"{rbac}/rolebindings", {
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "read-pods"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-pods"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                              "name": kube_cluster.limited_group}],
            })  # fmt: skip
            await asyncio.wait_for(cache.synced.wait(), 15)
            assert cache.state == "watching" and cache.last_error is None
            assert any("working again after forbidden" in r.getMessage() for r in caplog.records)
    finally:
        await limited.close()


async def test_endpoint_source_picks_v1beta1_endpointslices_on_1_20(
    kube_client: KubeClient, rest: KubeRest, namespace: str
) -> None:
    group_version, resource = await endpoint_source(kube_client)
    assert (group_version, resource) == ("discovery.k8s.io/v1beta1", "endpointslices")
    assert await kube_client.preferred_version("", ["v1"]) == "v1"
    assert await kube_client.preferred_version("discovery.k8s.io", ["v1"]) is None

    # ... and a cache of them, indexed by service as the DNS server will use it.
    service_label = "kubernetes.io/service-name"

    def service(o: KubeObject) -> list[str]:
        return [o["metadata"].get("labels", {}).get(service_label, "")]

    cache = WatchCache(
        kube_client, resource, group_version, namespace=namespace, indexes={"service": service}
    )
    slice_ = {
        "apiVersion": group_version,
        "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "labels": {service_label: "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": True},
                       "topology": {"kubernetes.io/hostname": "node-a"}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }  # fmt: skip
    async with running(cache):
        await asyncio.wait_for(cache.synced.wait(), 15)
        await call(rest.create, f"/apis/{group_version}/namespaces/{namespace}/endpointslices", slice_)
        await eventually(lambda: len(cache.by_index("service", "web")) == 1, "the slice arrives")
    got = cache.by_index("service", "web")[0]
    assert got["endpoints"][0]["addresses"] == ["10.244.1.5"] and got["kind"] == "EndpointSlice"


async def test_client_errors_name_the_verb_and_resource(kube_cluster: KubeCluster, tmp_path: Path) -> None:
    bad = _write_kubeconfig(tmp_path / "bad.kubeconfig", kube_cluster.url, kube_cluster.ca_cert, "x", "wrong")
    async with KubeClient.from_kubeconfig(bad) as client:
        with pytest.raises(KubeAuthError, match=r"cannot list namespaces in all namespaces .*401"):
            await client.get("/api/v1/namespaces")
    async with KubeClient.from_kubeconfig(kube_cluster.limited_kubeconfig) as client:
        with pytest.raises(KubeForbidden, match=r'cannot get namespaces "default" .*403 Forbidden'):
            await client.get("/api/v1/namespaces/default")
        assert (await client.get("/version"))["gitVersion"] == "v1.20.2"
