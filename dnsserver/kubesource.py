"""The cluster zone kept current from the apiserver.

:class:`KubeSource` watches Services, the endpoint resource the apiserver serves best (EndpointSlices
``discovery.k8s.io/v1``, else ``v1beta1``, else core ``Endpoints``) and, in pods mode ``verified``, Pods,
through the shared watch cache (:mod:`kubeobs.kube.cache`), and applies every event to the
:class:`~dnsserver.zone.ClusterZone`. ``ready`` is set once every watch has listed; the zone then keeps
answering from its last state through apiserver outages (the caches retry).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from prometheus_client import CollectorRegistry

from dnsserver.objects import ObjectError
from dnsserver.records import apply_object, object_id
from dnsserver.zone import ClusterZone
from kubeobs.kube.cache import WatchCache, endpoint_source
from kubeobs.kube.client import KubeClient

log = logging.getLogger(__name__)


class KubeSource:
    """Keeps ``zone`` current from the apiserver; see the module docstring."""

    def __init__(
        self, client: KubeClient, zone: ClusterZone, registry: CollectorRegistry | None = None
    ) -> None:
        self.client = client
        self.zone = zone
        self.registry = registry
        self.ready = asyncio.Event()
        self.caches: list[WatchCache] = []

    async def run(self) -> None:
        """Watch until cancelled. The endpoint resource is chosen once, at start."""
        group_version, resource = await self._endpoint_resource()
        log.info("reading services and %s (%s) from %s", resource, group_version, self.client.host)
        kind = "EndpointSlice" if resource == "endpointslices" else "Endpoints"
        self.caches = [
            self._cache("services", "v1", "Service"),
            self._cache(resource, group_version, kind),
        ]
        if self.zone.pods_mode == "verified":
            self.caches.append(self._cache("pods", "v1", "Pod"))
        async with asyncio.TaskGroup() as tg:
            for c in self.caches:
                tg.create_task(c.run(), name=f"watch-{c.name}")
            await asyncio.gather(*(c.synced.wait() for c in self.caches))
            log.info("synced: %s", ", ".join(f"{len(c)} {c.name}" for c in self.caches))
            self.ready.set()

    async def _endpoint_resource(self) -> tuple[str, str]:
        delay = 0.5
        while True:
            try:
                return await endpoint_source(self.client)
            except Exception as e:  # the apiserver is not reachable yet: keep trying, SERVFAIL meanwhile
                log.warning("cannot discover the endpoint API yet (%s); retrying in %.0fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _cache(self, resource: str, group_version: str, kind: str) -> WatchCache:
        cache = WatchCache(self.client, resource, group_version, registry=self.registry)

        def on_event(type_: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
            obj = obj if obj.get("kind") else {**obj, "kind": kind}
            try:
                apply_object(self.zone, obj, deleted=type_ == "DELETED")
            except (ObjectError, ValueError, TypeError, AttributeError) as e:
                log.warning("ignoring %s %s: %s", kind, object_id(obj), e)

        cache.on_event(on_event)
        return cache
