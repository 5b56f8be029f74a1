"""Where the cluster zone's objects come from: the apiserver (list/watch) or a static records file.

- :class:`KubeSource` watches Services, the endpoint resource the apiserver serves best
  (EndpointSlices ``discovery.k8s.io/v1``, else ``v1beta1``, else core ``Endpoints``) and, in pods mode
  ``verified``, Pods, through the shared watch cache (:mod:`kubeobs.kube.cache`), and applies every
  event to the :class:`~dnsserver.zone.ClusterZone`. ``ready`` is set once every watch has listed; the
  zone then keeps answering from its last state through apiserver outages (the caches retry).
- :func:`load_records` reads a YAML file of Kubernetes objects (``kubectl get -o yaml`` output works:
  documents, or ``kind: List``) for one-machine mode.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from dnsserver.objects import (
    ObjectError,
    endpoint_slice_from,
    endpoints_from,
    flatten,
    pod_from,
    service_from,
)
from dnsserver.zone import ClusterZone
from kubeobs.kube.cache import WatchCache, endpoint_source
from kubeobs.kube.client import KubeClient

log = logging.getLogger(__name__)


class RecordsError(Exception):
    """A records file that cannot be read; the message names the file and the object."""


def _object_id(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name')}"


def apply_object(zone: ClusterZone, obj: Mapping[str, Any], *, deleted: bool = False) -> None:
    """One object (Service, EndpointSlice, Endpoints or Pod) into the zone; other kinds are ignored."""
    kind = obj.get("kind")
    meta = obj.get("metadata") or {}
    ns, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
    if kind == "Service":
        if deleted:
            zone.delete_service(ns, name)
        else:
            zone.set_service(service_from(obj))
    elif kind == "EndpointSlice":
        zone.set_endpoints(f"slice/{ns}/{name}", None if deleted else endpoint_slice_from(obj))
    elif kind == "Endpoints":
        prefix = f"endpoints/{ns}/{name}/"
        for sid in [s for s in zone.endpoints.get((ns, name), {}) if s.startswith(prefix)]:
            zone.set_endpoints(sid, None)
        if not deleted:
            for i, subset in enumerate(endpoints_from(obj)):
                zone.set_endpoints(f"{prefix}{i}", subset)
    elif kind == "Pod":
        if deleted:
            zone.delete_pod(ns, name)
        else:
            zone.set_pod(pod_from(obj))


def load_records(path: str | Path, zone: ClusterZone) -> int:
    """Load a records file into ``zone``; returns the number of objects. Raises :class:`RecordsError`."""
    try:
        with open(path, encoding="utf-8") as fh:
            documents = list(yaml.safe_load_all(fh))
    except OSError as e:
        raise RecordsError(f"{path}: cannot read: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise RecordsError(f"{path}: not valid YAML: {e}") from e
    try:
        objects = flatten(documents)
    except ObjectError as e:
        raise RecordsError(f"{path}: {e}") from e
    kinds = {"Service", "EndpointSlice", "Endpoints", "Pod"}
    for obj in objects:
        kind = obj.get("kind")
        if kind not in kinds:
            raise RecordsError(
                f"{path}: {kind or 'an object without kind'} {_object_id(obj)}: "
                f"expected one of {', '.join(sorted(kinds))}"
            )
        try:
            apply_object(zone, obj)
        except (ObjectError, ValueError, TypeError, AttributeError) as e:
            raise RecordsError(f"{path}: {kind} {_object_id(obj)}: {e}") from e
    return len(objects)


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
                log.warning("ignoring %s %s: %s", kind, _object_id(obj), e)

        cache.on_event(on_event)
        return cache
