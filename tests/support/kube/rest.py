"""Blocking JSON calls to the test apiserver, for tests that create, patch and delete objects.

Plain dicts in and out, any resource and API version (EndpointSlice ``discovery.k8s.io/v1beta1``
included, which the ``kubernetes`` package has no typed API for). From asyncio tests call them through
``asyncio.to_thread`` so the code under test keeps running::

    rest = KubeRest.for_cluster(kube_cluster)
    await asyncio.to_thread(rest.create, "/api/v1/namespaces/web/pods", pod_body("web-0", "node-a"))
    await asyncio.to_thread(rest.delete, "/api/v1/namespaces/web/pods/web-0")

``delete`` uses ``gracePeriodSeconds=0`` by default: without a kubelet, a gracefully deleted pod would
only get a ``deletionTimestamp`` and stay forever.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.kube.apiserver import KubeCluster


class RestError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: {status}: {body[:500]}")
        self.status = status


class KubeRest:
    def __init__(self, url: str, token: str, ca_cert: Path) -> None:
        self.url = url
        self.token = token
        self.context = ssl.create_default_context(cafile=str(ca_cert))

    @classmethod
    def for_cluster(cls, cluster: KubeCluster, url: str | None = None) -> KubeRest:
        """The admin user on ``cluster`` (or on another apiserver of it, e.g. a peer, with ``url``)."""
        return cls(url or cluster.url, cluster.admin_token, cluster.ca_cert)

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": content_type}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, context=self.context, timeout=30) as resp:
                text = resp.read()
        except urllib.error.HTTPError as e:
            raise RestError(method, path, e.code, e.read().decode(errors="replace")) from None
        result = json.loads(text) if text else {}
        assert isinstance(result, dict)
        return result

    def get(self, path: str) -> dict[str, Any]:
        return self.request("GET", path)

    def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        """POST ``obj`` to the collection ``path``; returns the created object."""
        return self.request("POST", path, obj)

    def patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch (``path`` may end in ``/status`` for the status subresource)."""
        return self.request("PATCH", path, patch, "application/merge-patch+json")

    def delete(self, path: str, grace_seconds: int | None = 0) -> dict[str, Any]:
        body = None if grace_seconds is None else {"kind": "DeleteOptions", "apiVersion": "v1",
                                                     "gracePeriodSeconds": grace_seconds}  # fmt: skip
        return self.request("DELETE", path, body)

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "labels": labels or {}}
        return self.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": meta})


def pod_body(
    name: str, node: str, labels: dict[str, str] | None = None, image: str = "nginx:1.25"
) -> dict[str, Any]:
    """A minimal pod bound to ``node`` (there is no scheduler)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": image}]},
    }
