"""The watch cache without a server: relist diff, store and indexes, backoff, and the run loop against a
scripted fake apiserver (410 relist, 403 logged once with backoff to the cap, bookmarks, handlers)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kubeobs.kube.cache import Backoff, WatchCache
from kubeobs.kube.client import KubeForbidden, KubeGone, KubeUnavailable
from kubeobs.kube.store import KubeObject, Store, diff_snapshot, object_key


def pod(name: str, rv: int, uid: str | None = None, ns: str = "web", **labels: str) -> KubeObject:
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": uid or f"uid-{name}",
            "resourceVersion": str(rv),
            "labels": dict(labels),
        },
        "spec": {"nodeName": "node-a"},
    }


def by_key(*objs: KubeObject) -> dict[str, KubeObject]:
    return {object_key(o): o for o in objs}


def names(events: list[tuple[str, KubeObject, KubeObject | None]]) -> list[tuple[str, str, str]]:
    return [(t, o["metadata"]["name"], o["metadata"]["resourceVersion"]) for t, o, _ in events]


# -- diff ---------------------------------------------------------------------------------------------


def test_diff_first_list_is_all_added() -> None:
    new = by_key(pod("a", 1), pod("b", 2))
    assert names(diff_snapshot({}, new)) == [("ADDED", "a", "1"), ("ADDED", "b", "2")]


def test_diff_deletes_first_then_adds_and_modifies_in_list_order() -> None:
    old = by_key(pod("a", 1), pod("b", 2), pod("c", 3), pod("same", 4))
    new = by_key(pod("d", 9), pod("b", 7), pod("same", 4), pod("a", 1))
    events = diff_snapshot(old, new)
    assert names(events) == [("DELETED", "c", "3"), ("ADDED", "d", "9"), ("MODIFIED", "b", "7")]
    deleted = events[0]
    assert deleted[1] is old["web/c"] and deleted[2] is old["web/c"]  # the last state we knew
    modified = events[2]
    assert modified[1] is new["web/b"] and modified[2] is old["web/b"]


def test_diff_recreated_under_the_same_name_is_delete_then_add() -> None:
    old = by_key(pod("x", 5, uid="x-1"))
    new = by_key(pod("x", 8, uid="x-2"))
    events = diff_snapshot(old, new)
    assert [(t, o["metadata"]["uid"], None if p is None else p["metadata"]["uid"]) for t, o, p in events] == [
        ("DELETED", "x-1", "x-1"),
        ("ADDED", "x-2", None),
    ]


def test_diff_applied_to_a_store_reaches_exactly_the_new_state() -> None:
    rnd = random.Random(7)
    for _ in range(200):
        old = by_key(
            *(pod(f"p{i}", rnd.randint(1, 3), uid=f"u{rnd.randint(0, 1)}") for i in rnd.sample(range(12), 6))
        )
        new = by_key(
            *(pod(f"p{i}", rnd.randint(1, 3), uid=f"u{rnd.randint(0, 1)}") for i in rnd.sample(range(12), 6))
        )
        store = Store()
        for o in old.values():
            store.put(o)
        live = set(old)
        for type_, obj, before in diff_snapshot(old, new):
            key = object_key(obj)
            if type_ == "DELETED":
                assert key in live, "no delete of something never there"
                assert store.delete(key) is obj
                live.discard(key)
            else:
                assert (key in live) == (type_ == "MODIFIED"), "no ADDED twice, no MODIFIED of a ghost"
                assert store.put(obj) is before
                live.add(key)
        assert store.snapshot() == new


def test_object_key() -> None:
    assert object_key(pod("a", 1, ns="kube-system")) == "kube-system/a"
    assert object_key({"metadata": {"name": "default"}}) == "default"  # cluster-scoped
    with pytest.raises(ValueError, match=r"without metadata\.name"):
        object_key({"metadata": {}})


# -- store --------------------------------------------------------------------------------------------


def test_store_indexes_follow_updates_and_deletes() -> None:
    store = Store(
        indexes={"uid": lambda o: [o["metadata"]["uid"]], "app": lambda o: o["metadata"]["labels"].values()}
    )
    a = pod("a", 1, app="web")
    store.put(a)
    store.put(pod("b", 2, app="web"))
    assert [o["metadata"]["name"] for o in store.by_index("app", "web")] == ["a", "b"]
    assert store.by_index("uid", "uid-a") == [a]
    store.put(pod("a", 3, app="db"))
    assert [o["metadata"]["name"] for o in store.by_index("app", "web")] == ["b"]
    assert store.by_index("app", "db")[0]["metadata"]["resourceVersion"] == "3"
    store.delete("web/b")
    assert store.by_index("app", "web") == []
    assert sorted(store.index_values("app")) == ["db"]
    assert store.get("web", "a") is not None and store.get("web", "b") is None
    with pytest.raises(KeyError, match="no index named 'nope'"):
        store.by_index("nope", "x")


def test_store_unindexes_what_was_indexed_even_if_the_object_was_mutated() -> None:
    store = Store(indexes={"app": lambda o: o["metadata"]["labels"].values()})
    a = pod("a", 1, app="web")
    store.put(a)
    a["metadata"]["labels"]["app"] = "mutated-in-place"  # a careless handler
    store.delete("web/a")
    assert store.by_index("app", "web") == [] and store.index_values("app") == []


def test_store_survives_a_failing_index_function(caplog: pytest.LogCaptureFixture) -> None:
    store = Store(indexes={"owner": lambda o: [o["metadata"]["ownerReferences"][0]["uid"]]})
    store.put(pod("a", 1))
    assert len(store) == 1 and store.index_values("owner") == []
    assert "index 'owner' failed on web/a" in caplog.text


def test_cluster_scoped_get() -> None:
    store = Store()
    store.put({"metadata": {"name": "kube-system", "resourceVersion": "1"}})
    assert store.get("", "kube-system") is store.get(None, "kube-system") is not None


# -- backoff ------------------------------------------------------------------------------------------


def test_backoff_grows_exponentially_to_the_cap() -> None:
    b = Backoff(initial=0.5, cap=30.0, factor=2.0, jitter=0.0)
    assert [b.delay(n, 0.5) for n in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert b.delay(10_000, 0.0) == 30.0  # no overflow


def test_backoff_jitter_stays_within_its_fraction_and_below_the_cap() -> None:
    b = Backoff(initial=1.0, cap=10.0, jitter=0.25)
    rnd = random.Random(1)
    for n in range(12):
        base = min(10.0, 2.0**n)
        delays = [b.delay(n, rnd.random()) for _ in range(200)]
        assert all(0.75 * base <= d <= base for d in delays)
        assert max(delays) - min(delays) > 0.1 * base  # actually spread out
    assert b.delay(3, 0.0) == 8.0 and b.delay(3, 1.0) == 6.0


# -- the run loop against a scripted apiserver --------------------------------------------------------

Step = KubeObject | BaseException


class FakeApi:
    """Scripted list pages and watch streams. A watch whose script is used up waits until cancelled."""

    def __init__(self) -> None:
        self.pages: deque[Step] = deque()
        self.watches: deque[list[Step]] = deque()
        self.calls: list[tuple[str, dict[str, str]]] = []

    def add_list(self, *objs: KubeObject, rv: int, cont: str | None = None) -> None:
        meta: dict[str, str] = {"resourceVersion": str(rv)}
        if cont:
            meta["continue"] = cont
        items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in objs]
        self.pages.append({"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": items})

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> KubeObject:
        self.calls.append(("list", dict(params or {})))
        await asyncio.sleep(0)
        step = self.pages.popleft() if self.pages else KubeUnavailable("no more scripted lists")
        if isinstance(step, BaseException):
            raise step
        return step

    async def watch(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        timeout_seconds: int = 300,
        read_timeout: float | None = None,
    ) -> AsyncGenerator[KubeObject, None]:
        self.calls.append(("watch", dict(params or {})))
        script = self.watches.popleft() if self.watches else None
        if script is None:
            await asyncio.Event().wait()
            return
        for step in script:
            await asyncio.sleep(0)
            if isinstance(step, BaseException):
                raise step
            yield step


def ev(type_: str, obj: KubeObject) -> KubeObject:
    return {"type": type_, "object": obj}


def bookmark(rv: int) -> KubeObject:
    return ev("BOOKMARK", {"kind": "Pod", "metadata": {"resourceVersion": str(rv)}})


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, KubeObject, KubeObject | None]] = []

    def __call__(self, type_: str, obj: KubeObject, old: KubeObject | None) -> None:
        self.events.append((type_, obj, old))


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


def make_cache(api: FakeApi, t: FakeTime, **kwargs: Any) -> WatchCache:
    kwargs.setdefault("backoff", Backoff(initial=1.0, cap=8.0, jitter=0.0))
    kwargs.setdefault("sleep", t.sleep)
    return WatchCache(api, "pods", "v1", clock=t.clock, rng=random.Random(3), **kwargs)


async def run_until(cache: WatchCache, done: Callable[[], bool], max_steps: int = 10_000) -> None:
    task = asyncio.create_task(cache.run())
    try:
        for _ in range(max_steps):
            if done() or task.done():
                break
            await asyncio.sleep(0)
        assert done(), "condition not reached"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_410_relists_and_emits_the_differences_no_missed_delete_no_phantom() -> None:
    api, t = FakeApi(), FakeTime()
    api.add_list(pod("a", 1), pod("b", 2), pod("c", 3), pod("x", 4, uid="x-1"), rv=4)
    api.watches.append([ev("MODIFIED", pod("a", 5)), KubeGone("too old resource version: 5 (9)")])
    # While we were away: b modified, c deleted, x deleted and re-created, d created.
    api.add_list(pod("a", 5), pod("b", 7), pod("x", 8, uid="x-2"), pod("d", 9), rv=9)
    registry = CollectorRegistry()
    cache = make_cache(api, t, registry=registry, indexes={"uid": lambda o: [o["metadata"]["uid"]]})
    rec = Recorder()
    cache.on_event(rec)
    await run_until(cache, lambda: len(api.calls) >= 4)  # list, watch, list, watch

    assert names(rec.events) == [
        ("ADDED", "a", "1"),
        ("ADDED", "b", "2"),
        ("ADDED", "c", "3"),
        ("ADDED", "x", "4"),
        ("MODIFIED", "a", "5"),
        ("DELETED", "c", "3"),
        ("DELETED", "x", "4"),
        ("MODIFIED", "b", "7"),
        ("ADDED", "x", "8"),
        ("ADDED", "d", "9"),
    ]
    assert sorted(object_key(o) for o in cache.items()) == ["web/a", "web/b", "web/d", "web/x"]
    assert cache.by_index("uid", "x-1") == [] and cache.by_index("uid", "x-2") == [cache.get("web", "x")]
    assert [c for c in api.calls if c[0] == "watch"][-1][1] == {
        "resourceVersion": "9",
        "allowWatchBookmarks": "true",
    }
    assert t.sleeps == []  # a single 410 relists at once
    assert cache.synced.is_set() and cache.lists == 2

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"resource": "pods", **labels})

    assert sample("kubeobs_kube_cache_relists_total") == 1
    assert sample("kubeobs_kube_cache_synced") == 1
    assert sample("kubeobs_kube_cache_objects") == 4
    assert sample("kubeobs_kube_cache_watch_restarts_total", reason="gone") == 1
    assert sample("kubeobs_kube_cache_events_total", type="DELETED") == 2
    assert sample("kubeobs_kube_cache_events_total", type="ADDED") == 6


async def test_watch_events_keep_the_store_and_handlers_consistent() -> None:
    api, t = FakeApi(), FakeTime()
    api.add_list(pod("a", 1), rv=1)
    api.watches.append(
        [
            ev("ADDED", pod("b", 2)),
            ev("ADDED", pod("b", 3)),  # ADDED for a known object: told as MODIFIED
            ev("DELETED", pod("zz", 4)),  # never seen: nobody is told
            ev("DELETED", pod("a", 5)),
            ev("MODIFIED", pod("c", 6)),  # unknown object: told as ADDED (e.g. it now matches a selector)
        ]
    )
    cache = make_cache(api, t)
    rec = Recorder()
    cache.on_event(rec)
    await run_until(cache, lambda: len(api.calls) >= 3)
    assert names(rec.events) == [
        ("ADDED", "a", "1"),
        ("ADDED", "b", "2"),
        ("MODIFIED", "b", "3"),
        ("DELETED", "a", "5"),
        ("ADDED", "c", "6"),
    ]
    deleted = rec.events[3]
    assert deleted[2]["metadata"]["resourceVersion"] == "1"  # old: what the store held
    assert sorted(object_key(o) for o in cache.items()) == ["web/b", "web/c"]
    # The server ended the watch normally: resumed from the last event's resourceVersion, no relist.
    assert api.calls[2] == ("watch", {"resourceVersion": "6", "allowWatchBookmarks": "true"})


async def test_bookmarks_move_the_resource_version_and_the_watch_resumes_without_a_relist() -> None:
    api, t = FakeApi(), FakeTime()
    api.add_list(pod("a", 1), rv=5)
    api.watches.append([bookmark(9)])
    cache = make_cache(api, t, field_selector="spec.nodeName=node-a", label_selector="app=web")
    await run_until(cache, lambda: len(api.calls) >= 3)
    selectors = {"fieldSelector": "spec.nodeName=node-a", "labelSelector": "app=web"}
    assert api.calls == [
        ("list", {**selectors, "limit": "500"}),
        ("watch", {**selectors, "resourceVersion": "5", "allowWatchBookmarks": "true"}),
        ("watch", {**selectors, "resourceVersion": "9", "allowWatchBookmarks": "true"}),
    ]
    assert t.sleeps == [] and cache.lists == 1


async def test_a_watch_that_ends_at_once_and_empty_backs_off_instead_of_spinning() -> None:
    api, t = FakeApi(), FakeTime()
    api.add_list(pod("a", 1), rv=5)
    for _ in range(6):
        api.watches.append([])
    cache = make_cache(api, t)
    await run_until(cache, lambda: len(api.calls) >= 8)  # list, 6 empty watches, the one that stays
    assert t.sleeps == [1, 2, 4, 8, 8, 8]


async def test_forbidden_is_logged_once_backs_off_to_the_cap_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="kubeobs.kube.cache")
    api, t = FakeApi(), FakeTime()
    denied = 'pods is forbidden: User "kubeobs-limited" cannot list resource "pods"'
    for _ in range(7):
        api.pages.append(KubeForbidden(denied, status=403))
    api.add_list(pod("a", 1), rv=5)
    while_denied: list[tuple[str, bool, bool]] = []

    async def sleep(delay: float) -> None:
        err = cache.last_error
        while_denied.append((cache.state, cache.synced.is_set(), isinstance(err, KubeForbidden)))
        await t.sleep(delay)

    registry = CollectorRegistry()
    cache = make_cache(api, t, registry=registry, sleep=sleep)
    await run_until(cache, lambda: cache.synced.is_set())
    assert while_denied == [("forbidden", False, True)] * 7
    assert t.sleeps[:7] == [1, 2, 4, 8, 8, 8, 8]
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    assert denied in errors[0].getMessage() and "pods" in errors[0].getMessage()
    assert any("working again after forbidden" in r.getMessage() for r in caplog.records)
    assert (
        registry.get_sample_value(
            "kubeobs_kube_cache_errors_total", {"resource": "pods", "reason": "forbidden"}
        )
        == 7
    )
    assert cache.last_error is None and cache.state == "watching"


async def test_unavailable_watch_is_retried_from_the_last_resource_version() -> None:
    api, t = FakeApi(), FakeTime()
    api.add_list(pod("a", 1), rv=5)
    api.watches.append([ev("MODIFIED", pod("a", 6)), KubeUnavailable("connection reset")])
    api.watches.append([KubeUnavailable("connection refused")])
    api.watches.append([KubeUnavailable("connection refused")])
    cache = make_cache(api, t)
    await run_until(cache, lambda: len(api.calls) >= 5)
    assert [c[1].get("resourceVersion") for c in api.calls] == [None, "5", "6", "6", "6"]
    assert t.sleeps == [1, 2, 4]  # the first watch worked: its failure starts the backoff afresh
    assert cache.lists == 1


async def test_expired_continue_token_restarts_the_list_once() -> None:
    api, t = FakeApi(), FakeTime()
    api.add_list(pod("a", 1), rv=5, cont="page-2")
    api.pages.append(KubeGone("continue token expired", status=410))
    api.add_list(pod("a", 1), rv=7, cont="page-2b")
    api.add_list(pod("b", 2), rv=7)
    cache = make_cache(api, t, page_size=1)
    await run_until(cache, lambda: cache.synced.is_set())
    assert [c[1].get("continue") for c in api.calls if c[0] == "list"] == [None, "page-2", None, "page-2b"]
    assert sorted(object_key(o) for o in cache.items()) == ["web/a", "web/b"]
    assert cache.resource_version == "7"
    assert cache.get("web", "a") == {**pod("a", 1), "kind": "Pod", "apiVersion": "v1"}


async def test_a_failing_handler_is_logged_and_counted_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api, t = FakeApi(), FakeTime()
    api.add_list(pod("a", 1), rv=1)

    def broken(type_: str, obj: KubeObject, old: KubeObject | None) -> None:
        raise RuntimeError("handler bug")

    seen: list[str] = []

    async def async_handler(type_: str, obj: KubeObject, old: KubeObject | None) -> None:
        await asyncio.sleep(0)
        seen.append(type_)

    registry = CollectorRegistry()
    cache = make_cache(api, t, registry=registry)
    cache.on_event(broken)
    cache.on_event(async_handler)
    await run_until(cache, lambda: cache.synced.is_set())
    assert seen == ["ADDED"] and len(cache) == 1
    assert "handler bug" in caplog.text
    assert registry.get_sample_value("kubeobs_kube_cache_handler_errors_total", {"resource": "pods"}) == 1


async def test_two_caches_share_one_registry() -> None:
    registry = CollectorRegistry()
    api, t = FakeApi(), FakeTime()
    WatchCache(api, "pods", "v1", registry=registry, clock=t.clock, sleep=t.sleep)
    slices = WatchCache(api, "endpointslices", "discovery.k8s.io/v1beta1", registry=registry)
    assert slices.name == "endpointslices.discovery.k8s.io"
    assert slices.path == "/apis/discovery.k8s.io/v1beta1/endpointslices"
    assert registry.get_sample_value("kubeobs_kube_cache_synced", {"resource": "pods"}) == 0
    assert registry.get_sample_value("kubeobs_kube_cache_synced", {"resource": slices.name}) == 0


async def test_410_right_after_a_relist_backs_off_but_a_410_after_a_working_watch_does_not() -> None:
    api, t = FakeApi(), FakeTime()
    api.add_list(pod("a", 1), rv=1)
    api.watches.append([KubeGone("too old")])  # at once: relist now
    api.add_list(pod("a", 1), rv=2)
    api.watches.append([KubeGone("too old")])  # again at once: slow down
    api.add_list(pod("a", 1), rv=3)
    api.watches.append([ev("MODIFIED", pod("a", 4)), KubeGone("too old")])  # after working: relist now
    api.add_list(pod("a", 4), rv=5)
    cache = make_cache(api, t)
    await run_until(cache, lambda: cache.lists == 4)
    assert t.sleeps == [1]
