"""Kubernetes API access shared by the collector and the DNS server.

- :mod:`kubeobs.kube.client`: :class:`KubeClient`, an async apiserver client on aiohttp (credentials from
  the ``kubernetes`` package's kubeconfig and in-cluster loaders) and its error classes;
- :mod:`kubeobs.kube.cache`: :class:`WatchCache`, a list/watch cache of one resource with indexes,
  handlers and a ``synced`` event; :func:`endpoint_source` picks EndpointSlice v1, v1beta1 or Endpoints;
- :mod:`kubeobs.kube.store`: the pure parts (indexed store, relist diff).
"""

from kubeobs.kube.cache import Backoff, Handler, WatchCache, endpoint_source
from kubeobs.kube.client import (
    KubeAuthError,
    KubeClient,
    KubeConfigError,
    KubeCredentials,
    KubeError,
    KubeForbidden,
    KubeGone,
    KubeNotFound,
    KubeUnavailable,
    resource_path,
)
from kubeobs.kube.store import KubeObject, Store, diff_snapshot, object_key

__all__ = [
    "Backoff",
    "Handler",
    "KubeAuthError",
    "KubeClient",
    "KubeConfigError",
    "KubeCredentials",
    "KubeError",
    "KubeForbidden",
    "KubeGone",
    "KubeNotFound",
    "KubeObject",
    "KubeUnavailable",
    "Store",
    "WatchCache",
    "diff_snapshot",
    "endpoint_source",
    "object_key",
    "resource_path",
]
