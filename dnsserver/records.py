"""Objects from a static records file (one-machine mode) into the cluster zone.

:func:`load_records` reads a YAML file of Kubernetes objects (``kubectl get -o yaml`` output works:
documents, or ``kind: List``); :func:`apply_object` applies one object (also used by the apiserver
source, :mod:`dnsserver.kubesource`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dnsserver.objects import (
    ObjectError,
    endpoint_slice_from,
    endpoints_from,
    flatten,
    pod_from,
    service_from,
)
from dnsserver.zone import ClusterZone

log = logging.getLogger(__name__)


class RecordsError(Exception):
    """A records file that cannot be read; the message names the file and the object."""


def object_id(obj: Mapping[str, Any]) -> str:
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
    import yaml  # only in one-machine mode: the DNS server keeps its memory small

    try:
        with open(path, encoding="utf-8") as fh:
            documents = list(yaml.load_all(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
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
                f"{path}: {kind or 'an object without kind'} {object_id(obj)}: "
                f"expected one of {', '.join(sorted(kinds))}"
            )
        try:
            apply_object(zone, obj)
        except (ObjectError, ValueError, TypeError, AttributeError) as e:
            raise RecordsError(f"{path}: {kind} {object_id(obj)}: {e}") from e
    return len(objects)
