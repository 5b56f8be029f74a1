"""A list/watch cache of one Kubernetes resource, shared by the collector and the DNS server.

:class:`WatchCache` keeps an in-memory, indexed copy of a collection (raw JSON dicts, see
:mod:`kubeobs.kube.store`) current and tells handlers what changed::

    client = KubeClient.from_kubeconfig(path)
    pods = WatchCache(client, "pods", "v1", field_selector=f"spec.nodeName={node}",
                      indexes={"uid": lambda o: [o["metadata"]["uid"]]}, registry=registry)
    pods.on_event(lambda type_, obj, old: ...)      # "ADDED" | "MODIFIED" | "DELETED"
    async with asyncio.TaskGroup() as tg:
        tg.create_task(pods.run())                  # until cancelled
        await pods.synced.wait()                    # readiness: the first list is in
        pods.get("web", "web-0"); pods.by_index("uid", uid); pods.items()

Lifecycle (:meth:`WatchCache.run`, one task; it owns the store and calls the handlers):

1. **List** the collection (paginated, a consistent read from etcd) and apply the differences to the store
   as events; the first successful list sets :attr:`WatchCache.synced`.
2. **Watch** from the list's ``resourceVersion`` with bookmarks requested; each event updates the store
   and then calls the handlers in registration order (async handlers are awaited: a slow handler slows
   the watch, nothing queues without bound). When the server ends the watch (``timeoutSeconds``) it is
   resumed at once from the last resourceVersion seen (event or bookmark).
3. **410 Gone** (the watch's resourceVersion is older than the apiserver keeps, e.g. after an apiserver
   restart) goes back to 1: the relist's differences arrive as events, DELETED for objects removed while
   we were away, ADDED/MODIFIED for new and changed ones, so no delete is missed and no phantom stays.
4. **Errors** (unreachable apiserver, 5xx, 401/403 RBAC denials, ...) are retried with capped exponential
   backoff and jitter (:class:`Backoff`); the watch is resumed from the last resourceVersion, the list
   retried if it never succeeded. Each kind of error is logged once (at ERROR for 401/403/404, WARNING
   otherwise) until it changes or the cache recovers (one INFO line), and counted every time. The store
   keeps serving its last state meanwhile.

Handlers are called as ``handler(type, obj, old)``: ``obj`` is the new state (for DELETED the last one
known), ``old`` the state it replaces (None for ADDED). A handler that raises is logged and counted; the
cache carries on.

Metrics (with ``registry=``; one set per registry, labelled by ``resource`` = the cache's ``name``,
``pods`` or ``endpointslices.discovery.k8s.io`` by default — give distinct names to two caches of one
resource): ``kubeobs_kube_cache_synced``, ``kubeobs_kube_cache_objects``,
``kubeobs_kube_cache_relists_total``, ``kubeobs_kube_cache_watch_restarts_total{reason}`` (``expired``,
``gone``, ``error``), ``kubeobs_kube_cache_events_total{type}`` (handler events and received
``BOOKMARK``\\ s), ``kubeobs_kube_cache_errors_total{reason}`` (``unauthorized``, ``forbidden``,
``not_found``, ``unavailable``, ``error``, ``internal``), ``kubeobs_kube_cache_handler_errors_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from kubeobs.kube.client import (
    DEFAULT_WATCH_TIMEOUT,
    KubeAuthError,
    KubeClient,
    KubeError,
    KubeForbidden,
    KubeGone,
    KubeNotFound,
    KubeUnavailable,
    describe_path,
    resource_path,
)
from kubeobs.kube.store import EventType, IndexFunc, KubeObject, Store, diff_snapshot, object_key

__all__ = [
    "Backoff",
    "Handler",
    "ListWatchClient",
    "WatchCache",
    "endpoint_source",
]

log = logging.getLogger(__name__)

Handler = Callable[[EventType, KubeObject, KubeObject | None], Awaitable[None] | None]

DEFAULT_PAGE_SIZE = 500


class ListWatchClient(Protocol):
    """What the cache needs from :class:`~kubeobs.kube.client.KubeClient` (tests may pass a fake)."""

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> KubeObject: ...

    def watch(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        timeout_seconds: int = DEFAULT_WATCH_TIMEOUT,
        read_timeout: float | None = None,
    ) -> AsyncGenerator[KubeObject, None]: ...


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter: attempt ``n`` waits ``min(cap, initial * factor**n)``,
    minus up to ``jitter`` of it at random (so many clients restarted together spread out)."""

    initial: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 0.25

    def delay(self, attempt: int, rand: float) -> float:
        """The wait before retry ``attempt`` (0-based); ``rand`` is uniform in [0, 1)."""
        base = min(self.cap, self.initial * self.factor ** min(max(attempt, 0), 64))
        return base * (1.0 - self.jitter * min(max(rand, 0.0), 1.0))


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.synced = Gauge(
            "kubeobs_kube_cache_synced", "1 once the cache's first list completed", ["resource"], registry=r
        )
        self.objects = Gauge("kubeobs_kube_cache_objects", "Objects in the cache", ["resource"], registry=r)
        self.relists = Counter(
            "kubeobs_kube_cache_relists",
            "Lists after the first one (after 410 Gone)",
            ["resource"],
            registry=r,
        )
        self.watch_restarts = Counter(
            "kubeobs_kube_cache_watch_restarts",
            "Watches that ended, by reason (expired: the server's timeout; gone: 410; error)",
            ["resource", "reason"],
            registry=r,
        )
        self.events = Counter(
            "kubeobs_kube_cache_events",
            "Events by type: those given to handlers (relist differences included) and bookmarks received",
            ["resource", "type"],
            registry=r,
        )
        self.errors = Counter(
            "kubeobs_kube_cache_errors",
            "Failed list/watch requests by reason",
            ["resource", "reason"],
            registry=r,
        )
        self.handler_errors = Counter(
            "kubeobs_kube_cache_handler_errors", "Event handlers that raised", ["resource"], registry=r
        )


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()


def _metrics_for(registry: CollectorRegistry) -> _Metrics:
    metrics = _METRICS.get(registry)
    if metrics is None:
        metrics = _METRICS[registry] = _Metrics(registry)
    return metrics


def _error_reason(exc: BaseException) -> str:
    if isinstance(exc, KubeAuthError):
        return "unauthorized"
    if isinstance(exc, KubeForbidden):
        return "forbidden"
    if isinstance(exc, KubeNotFound):
        return "not_found"
    if isinstance(exc, KubeUnavailable):
        return "unavailable"
    return "error" if isinstance(exc, KubeError) else "internal"


_PERMANENT = frozenset({"unauthorized", "forbidden", "not_found"})


class WatchCache:
    """The list/watch cache of one collection; see the module docstring.

    ``resource`` is the plural name (``"pods"``), ``group_version`` ``"v1"`` for the core group or
    ``"group/version"`` (``"discovery.k8s.io/v1beta1"``). ``namespace`` None watches all namespaces.
    ``field_selector``/``label_selector`` are passed to the apiserver as they are. ``indexes`` maps index
    names to functions from an object to its index values. ``clock`` (monotonic seconds), ``sleep`` and
    ``rng`` are injectable for tests; ``watch_timeout`` is the shortest ``timeoutSeconds`` asked for (the
    actual one is up to 25 % longer, at random).
    """

    def __init__(
        self,
        client: ListWatchClient,
        resource: str,
        group_version: str = "v1",
        *,
        namespace: str | None = None,
        field_selector: str | None = None,
        label_selector: str | None = None,
        indexes: Mapping[str, IndexFunc] | None = None,
        name: str | None = None,
        registry: CollectorRegistry | None = None,
        backoff: Backoff | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        watch_timeout: int = DEFAULT_WATCH_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.resource = resource
        self.group_version = group_version
        self.namespace = namespace
        self.field_selector = field_selector
        self.label_selector = label_selector
        self.path = resource_path(group_version, resource, namespace)
        self.name = name or describe_path(self.path).resource_name
        self.backoff = backoff or Backoff()
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.synced = asyncio.Event()
        """Set once the first list has been applied (and stays set: the store then serves its last state
        through outages)."""
        self.state = "starting"
        """``starting``, ``listing`` (the first list), ``watching``, or after a failure the error's reason
        (``forbidden``, ``unavailable``, ...) until a list succeeds or a watch delivers again."""
        self.last_error: BaseException | None = None
        self.resource_version: str | None = None
        """The last resourceVersion seen (list, event or bookmark); None until listed or after 410."""
        self.lists = 0  # successful lists, the first included

        self._store = Store(indexes)
        self._handlers: list[Handler] = []
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._metrics = _metrics_for(registry) if registry is not None else None
        self._logged_error: str | None = None  # the error kind logged last: repeats go to DEBUG
        self._watch_events = 0
        if self._metrics is not None:  # every series exists from the start, at 0
            self._metrics.synced.labels(self.name).set(0)
            self._metrics.objects.labels(self.name).set(0)
            self._metrics.relists.labels(self.name)
            self._metrics.handler_errors.labels(self.name)

    def __repr__(self) -> str:
        return f"WatchCache({self.describe()})"

    def describe(self) -> str:
        what = self.name
        if self.namespace:
            what += f' in namespace "{self.namespace}"'
        selectors = [f"{k}={v}" for k, v in self._selector_params().items()]
        return what + (f" ({', '.join(selectors)})" if selectors else "")

    # -- reading --------------------------------------------------------------------------------------

    def on_event(self, handler: Handler) -> Handler:
        """Call ``handler(type, obj, old)`` for every ADDED/MODIFIED/DELETED; returns it (a decorator)."""
        self._handlers.append(handler)
        return handler

    def get(self, namespace: str | None, name: str) -> KubeObject | None:
        """The object, or None; ``namespace`` None or ``""`` for cluster-scoped resources."""
        return self._store.get(namespace, name)

    def by_index(self, index: str, value: str) -> list[KubeObject]:
        """Objects filed under ``value`` by the index named ``index`` (KeyError for an unknown index)."""
        return self._store.by_index(index, value)

    def items(self) -> list[KubeObject]:
        return self._store.items()

    def __len__(self) -> int:
        return len(self._store)

    # -- the loop -------------------------------------------------------------------------------------

    async def run(self) -> None:
        """List and watch until cancelled; never returns, and retries every error (see the module doc)."""
        attempt = 0  # consecutive failures: the backoff exponent
        gone_in_a_row = 0
        while True:
            delay = 0.0
            self._watch_events = 0
            try:
                if self.resource_version is None:
                    if self.last_error is None:
                        self.state = "listing"
                    await self._relist()
                    self._recovered()
                started = self._clock()
                timeout = int(self.watch_timeout * (1.0 + 0.25 * self._rng.random()))
                await self._watch(timeout)
                self._count_restart("expired")
                self._recovered()
                gone_in_a_row = 0
                if self._watch_events or self._clock() - started >= timeout / 2:
                    attempt = 0
                else:  # ended early and empty: do not spin on a server (or proxy) that hangs up at once
                    delay, attempt = self.backoff.delay(attempt, self._rng.random()), attempt + 1
            except KubeGone as exc:
                self._count_restart("gone")
                log.info("%s: %s; listing again", self.describe(), exc)
                self.resource_version = None
                if self._watch_events:  # the watch was working: this 410 is news, not a loop
                    attempt = gone_in_a_row = 0
                gone_in_a_row += 1
                if gone_in_a_row > 1:  # a 410 right after a fresh list: something is off, slow down
                    delay, attempt = self.backoff.delay(attempt, self._rng.random()), attempt + 1
            except Exception as exc:
                # KubeError: the apiserver's answer. Anything else is a bug here or in the data: logged
                # with its traceback, and the store rebuilt from a fresh list in case it is inconsistent.
                if self.resource_version is not None:
                    self._count_restart("error")
                if self._watch_events:
                    attempt = 0  # the watch was working: retry soon
                delay = self.backoff.delay(attempt, self._rng.random())
                if isinstance(exc, KubeError) and exc.retry_after:
                    delay = max(delay, min(exc.retry_after, self.backoff.cap))
                attempt += 1
                if not isinstance(exc, KubeError):
                    self.resource_version = None
                self._report(exc, delay)
            if delay > 0:
                await self._sleep(delay)

    # -- list -----------------------------------------------------------------------------------------

    def _selector_params(self) -> dict[str, str]:
        params = {}
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        return params

    async def _list(self) -> tuple[dict[str, KubeObject], str]:
        """All pages of one consistent list: objects by key, and the list's resourceVersion."""
        items: dict[str, KubeObject] = {}
        token: str | None = None
        started_over = False
        while True:
            params = {**self._selector_params(), "limit": str(self.page_size)}
            if token:
                params["continue"] = token
            try:
                page = await self.client.get(self.path, params)
            except KubeGone:
                if token is None or started_over:
                    raise
                # The continue token expired (etcd compacted between two pages): start over, once.
                log.info("%s: list continue token expired; listing from the start", self.describe())
                items, token, started_over = {}, None, True
                continue
            kind = page.get("kind")
            item_kind = kind[: -len("List")] if isinstance(kind, str) and kind.endswith("List") else None
            api_version = page.get("apiVersion")
            for item in page.get("items") or []:
                if not isinstance(item, dict):
                    continue
                # List items come without kind/apiVersion; watch events carry them: make both alike.
                if item_kind and "kind" not in item:
                    item["kind"] = item_kind
                if isinstance(api_version, str) and "apiVersion" not in item:
                    item["apiVersion"] = api_version
                _strip(item)
                try:
                    items[object_key(item)] = item
                except ValueError:
                    log.warning("%s: list item without a name ignored", self.describe())
            meta = page.get("metadata") or {}
            token = meta.get("continue") or None
            if not token:
                rv = meta.get("resourceVersion")
                if not isinstance(rv, str) or not rv:
                    raise KubeUnavailable(f"list {self.path}: the answer has no metadata.resourceVersion")
                return items, rv

    async def _relist(self) -> None:
        """List, then turn the store into the list through events (all ADDED on the first list)."""
        objects, rv = await self._list()
        changes = diff_snapshot(self._store.snapshot(), objects)
        for type_, obj, old in changes:
            if type_ == "DELETED":
                self._store.delete(object_key(obj))
            else:
                self._store.put(obj)
            await self._emit(type_, obj, old)
        self.resource_version = rv
        self.lists += 1
        if self._metrics is not None:
            if self.lists > 1:
                self._metrics.relists.labels(self.name).inc()
            self._metrics.objects.labels(self.name).set(len(self._store))
        if self.lists > 1:
            log.info("%s: relisted at resourceVersion %s: %d objects, %d changes", self.describe(), rv,
                     len(self._store), len(changes))  # fmt: skip
        if not self.synced.is_set():
            self.synced.set()
            if self._metrics is not None:
                self._metrics.synced.labels(self.name).set(1)
            log.info("%s: synced, %d objects at resourceVersion %s", self.describe(), len(self._store), rv)

    # -- watch ----------------------------------------------------------------------------------------

    async def _watch(self, timeout_seconds: int) -> None:
        """One watch request, from :attr:`resource_version`, until the server ends it; errors raise."""
        assert self.resource_version is not None
        params = {
            **self._selector_params(),
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": "true",
        }
        events = self.client.watch(self.path, params, timeout_seconds=timeout_seconds)
        async with contextlib.aclosing(events):
            async for event in events:
                if self._watch_events == 0:
                    self._recovered()
                self._watch_events += 1
                type_, obj = event.get("type"), event["object"]
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if type_ == "BOOKMARK":
                    if self._metrics is not None:
                        self._metrics.events.labels(self.name, "BOOKMARK").inc()
                elif type_ in ("ADDED", "MODIFIED", "DELETED"):
                    await self._apply(type_, obj)
                else:
                    log.warning("%s: ignored watch event of type %r", self.describe(), type_)
                    continue
                if isinstance(rv, str) and rv:
                    self.resource_version = rv

    async def _apply(self, type_: str, obj: KubeObject) -> None:
        _strip(obj)
        try:
            key = object_key(obj)
        except ValueError:
            log.warning("%s: watch event for an object without a name ignored", self.describe())
            return
        if type_ == "DELETED":
            old = self._store.delete(key)
            if old is None:
                return  # never seen (or already gone): nothing to tell anyone
            change: tuple[EventType, KubeObject, KubeObject | None] = ("DELETED", obj, old)
        else:
            # The store decides ADDED vs MODIFIED, so handlers always see a consistent sequence.
            old = self._store.put(obj)
            change = ("ADDED", obj, None) if old is None else ("MODIFIED", obj, old)
        if self._metrics is not None:
            self._metrics.objects.labels(self.name).set(len(self._store))
        await self._emit(*change)

    async def _emit(self, type_: EventType, obj: KubeObject, old: KubeObject | None) -> None:
        if self._metrics is not None:
            self._metrics.events.labels(self.name, type_).inc()
        for handler in self._handlers:
            try:
                result = handler(type_, obj, old)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("%s: event handler %r failed on %s %s", self.describe(), handler, type_,
                              object_key(obj))  # fmt: skip
                if self._metrics is not None:
                    self._metrics.handler_errors.labels(self.name).inc()

    # -- errors ---------------------------------------------------------------------------------------

    def _count_restart(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.watch_restarts.labels(self.name, reason).inc()

    def _report(self, exc: BaseException, delay: float) -> None:
        """Count every failure; log a kind of failure once until it changes or the cache recovers."""
        reason = _error_reason(exc)
        self.state, self.last_error = reason, exc
        if self._metrics is not None:
            self._metrics.errors.labels(self.name, reason).inc()
        if reason == self._logged_error:
            log.debug("%s: still failing (%s): %s; retry in %.1f s", self.describe(), reason, exc, delay)
            return
        self._logged_error = reason
        if reason == "internal":
            log.error("%s: unexpected error, relisting in %.1f s", self.describe(), delay, exc_info=exc)
        else:
            level = logging.ERROR if reason in _PERMANENT else logging.WARNING
            log.log(level, "%s: %s; retrying with backoff (up to %.0f s between attempts; logged once until "
                    "it changes)", self.describe(), exc, self.backoff.cap)  # fmt: skip

    def _recovered(self) -> None:
        """A list succeeded, or a watch delivered: leave the error state (logging it once)."""
        if self._logged_error is not None:
            log.info("%s: working again after %s errors", self.describe(), self._logged_error)
            self._logged_error = None
        self.last_error = None
        self.state = "watching"


def _strip(obj: KubeObject) -> None:
    """Drop ``metadata.managedFields`` (server-side apply bookkeeping, often most of an object's size, read
    by no one here) before the object is stored, as client-go's informers are usually configured to."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)


async def endpoint_source(client: KubeClient) -> tuple[str, str]:
    """Where a service's endpoints are read on this apiserver, as ``(group_version, resource)``:
    EndpointSlices ``discovery.k8s.io/v1`` (Kubernetes 1.21+), else ``discovery.k8s.io/v1beta1``
    (1.17-1.24; its endpoints carry ``topology`` instead of ``nodeName``/``zone``), else core ``v1``
    ``endpoints``."""
    group_version = await client.preferred_version("discovery.k8s.io", ["v1", "v1beta1"])
    if group_version is not None:
        return group_version, "endpointslices"
    return "v1", "endpoints"
