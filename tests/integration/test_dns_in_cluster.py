"""The DNS server with in-cluster credentials (no kubeconfig): the service account's token and CA, the
apiserver from KUBERNETES_SERVICE_HOST/PORT, as in a pod, against the real apiserver."""

from __future__ import annotations

import urllib.parse
import uuid
from pathlib import Path

import dns.rcode
import pytest

from tests.support.dns import query, start_dns_server
from tests.support.kube.apiserver import KubeCluster
from tests.support.kube.rest import KubeRest


def test_in_cluster_service_account_answers_services(
    tmp_path: Path, kube_cluster: KubeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(kube_cluster.admin_token + "\n")
    (account / "ca.crt").write_bytes(kube_cluster.ca_cert.read_bytes())
    url = urllib.parse.urlsplit(kube_cluster.url)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", str(url.hostname))
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(url.port))
    monkeypatch.setenv("KUBEOBS_SERVICE_ACCOUNT_DIR", str(account))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    rest = KubeRest.for_cluster(kube_cluster)
    namespace = f"incluster-{uuid.uuid4().hex[:8]}"
    rest.create_namespace(namespace)
    created = rest.create(
        f"/api/v1/namespaces/{namespace}/services",
        {"metadata": {"name": "web"}, "spec": {"ports": [{"name": "http", "port": 80}]}},
    )
    server = start_dns_server(tmp_path / "dns")  # no --kubeconfig, no --records: in-cluster
    try:
        server.wait_ready(30)
        r = query(server.port, f"web.{namespace}.svc.cluster.local", "A")
        assert r.rcode() == dns.rcode.NOERROR
        assert [str(x) for x in r.answer[0]] == [created["spec"]["clusterIP"]]
    finally:
        server.stop()
    assert "reading services" in server.stderr()
